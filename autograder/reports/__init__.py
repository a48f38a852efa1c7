"""Stage 4, what people read: feedback pages, the gradebook table, exports for LMSs."""
