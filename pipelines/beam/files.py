"""Reads and writes through Beam's FileSystems (local paths and gs:// alike): whole files,
atomic files (a temporary name, then a rename: the one-object commit every job relies on),
the children of a folder, and the version a versioned directory points to."""
from __future__ import annotations

import contextlib
import json
import os
import re
import uuid
from typing import Any, Iterator

from apache_beam.io.filesystems import FileSystems

from schemas import versions


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


_TEMPORARY = re.compile(r"^(?P<final>.+)\.tmp-[0-9a-f]{12}$")


def temporary_name(path: str) -> str:
    return f"{path}.tmp-{uuid.uuid4().hex[:12]}"


def final_of(path: str) -> str | None:
    """The path a temporary file of :func:`atomic_create` was going to become, or None when
    ``path`` is not one (a file whose own name merely contains ``.tmp-`` is not)."""
    match = _TEMPORARY.match(path)
    return match.group("final") if match else None


@contextlib.contextmanager
def atomic_create(path: str) -> Iterator:
    """A writable handle whose content appears at ``path`` only once complete."""
    temporary = temporary_name(path)
    handle = FileSystems.create(temporary)
    try:
        yield handle
    except BaseException:
        handle.close()
        FileSystems.delete([temporary])
        raise
    handle.close()
    FileSystems.rename([temporary], [path])


def write_atomically(path: str, data: bytes) -> None:
    with atomic_create(path) as handle:
        handle.write(data)


def delete_if_present(paths: list[str]) -> None:
    present = [p for p in paths if FileSystems.exists(p)]
    if present:
        FileSystems.delete(present)


def read_if_exists(path: str) -> bytes | None:
    return read_bytes(path) if FileSystems.exists(path) else None


def resolve_version(root: str) -> str:
    """The directory to read for ``root`` (its current version, see ``schemas.versions``)."""
    return versions.resolve(root, read_if_exists)


def children(root: str) -> dict[str, float]:
    """{name: newest modification time (s)} of the files and folders right under ``root``."""
    prefix = root.rstrip("/") + "/"
    found: dict[str, float] = {}
    for m in FileSystems.match([f"{prefix}**"])[0].metadata_list:
        name = m.path[len(prefix):].split("/", 1)[0]
        found[name] = max(found.get(name, 0.0), m.last_updated_in_seconds or 0.0)
    return found


def siblings(path: str, mark: str) -> dict[str, float]:
    """{path: newest modification time} of the folders beside ``path`` named ``<path><mark>*``."""
    path = path.rstrip("/")
    found: dict[str, float] = {}
    for m in FileSystems.match([f"{path}{mark}*/**"])[0].metadata_list:
        top = path + m.path[len(path):].split("/", 1)[0]
        found[top] = max(found.get(top, 0.0), m.last_updated_in_seconds or 0.0)
    return found


def _comparable(path: str) -> str:
    if FileSystems.get_scheme(path) in (None, "file"):
        return os.path.realpath(path.removeprefix("file://"))
    return path.rstrip("/")


def check_apart(reads: str, writes: str, read_flag: str = "--input", write_flag: str = "--output") -> None:
    """Refuse a job whose output lies inside what it reads, or the reverse: a rerun would read
    its own outputs, or publishing would replace its inputs. ValueError naming both."""
    a, b = _comparable(reads), _comparable(writes)
    if a == b or b.startswith(a + "/") or a.startswith(b + "/"):
        raise ValueError(f"{write_flag} {writes} and {read_flag} {reads} overlap (one is inside the other); "
                         "choose an output outside the input")
