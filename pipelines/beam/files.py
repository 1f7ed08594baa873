"""Whole-file reads and writes through Beam's FileSystems (local paths and gs:// alike)."""
from __future__ import annotations

import json
from typing import Any

from apache_beam.io.filesystems import FileSystems


def read_bytes(path: str) -> bytes:
    with FileSystems.open(path) as handle:
        return handle.read()


def write_bytes(path: str, data: bytes) -> None:
    with FileSystems.create(path) as handle:
        handle.write(data)


def read_json(path: str) -> Any:
    return json.loads(read_bytes(path).decode("utf-8"))


def exists(path: str) -> bool:
    return FileSystems.exists(path)
