"""The rejected record: what every job writes for an input it refused, and the refusal itself.

A record is a JSON object with ``FIELDS``: the input (``source``), a short stable reason
code (``reason``, e.g. ``truncated``, ``size_mismatch``), a sentence for a person
(``detail``) and the files it covers (``files``). Jobs may add context after these (predict
adds the ``image_id`` that decides the record's shard). Records never quote file contents.
"""
from __future__ import annotations

from typing import Sequence

FIELDS = ("source", "reason", "detail", "files")


class RejectedInput(Exception):
    """An input refused with a stable ``reason`` code and a human ``detail``."""

    def __init__(self, reason: str, detail: str):
        super().__init__(reason, detail)
        self.reason = reason
        self.detail = detail

    def __str__(self) -> str:
        return f"{self.reason}: {self.detail}"


def rejected_record(source: str, reason: str, detail: str, files: Sequence[str] | None = None,
                    **context) -> dict:
    """A dead-letter record: what was refused, why, and the files it covers (default: the source)."""
    return {"source": source, "reason": reason, "detail": detail, "files": list(files or [source]),
            **context}
