"""nbgrader's exchange, with the owner check enforced rather than only logged."""

from __future__ import annotations

import datetime
import os
import pwd
from typing import Any

from nbgrader.exchange.default.collect import ExchangeCollect

__all__ = ["OwnerCheckedCollect"]


class OwnerCheckedCollect(ExchangeCollect):
    """Collect that refuses a submission filed under one student's name by another account.

    nbgrader's ``check_owner`` only logs a warning and collects the forgery anyway. Here a
    forged record sorts before every genuine one and is dropped before copying, so the
    student's own latest submission is the one collected (select with
    ``c.ExchangeFactory.collect``; it needs one OS account per student).
    """

    def _path_to_record(self, path: str) -> dict[str, Any]:
        record: dict[str, Any] = super()._path_to_record(path)
        try:
            owner = pwd.getpwuid(os.stat(path).st_uid).pw_name
        except KeyError:
            owner = "an unknown account"
        if owner != record["username"]:
            self.log.error(
                "Refused %s: filed as %s by %s", record["filename"], record["username"], owner
            )
            stamp = record["timestamp"]
            record["timestamp"] = datetime.datetime.min.replace(tzinfo=stamp.tzinfo)
            record["forged"] = True
        return record

    def copy_files(self) -> None:
        records: list[dict[str, Any]] = getattr(self, "src_records", [])
        self.src_records = [r for r in records if not r.get("forged")]
        super().copy_files()
