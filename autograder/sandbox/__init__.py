"""What a student's kernel may use and reach: limits, accounts, namespaces, files, the
kernel manager and its watchdog. Nothing here knows about grades.
"""
