"""Reads and writes through Beam's FileSystems (local paths and gs:// alike): whole files,
atomic files (a temporary name, then a rename: the one-object commit every job relies on),
the children of a folder, and the version a versioned directory points to."""
from __future__ import annotations

import contextlib
import json
import os
import re
import stat
import uuid
from typing import Any, Callable, Iterator

from apache_beam.io.filesystems import FileSystems

from schemas import versions
from schemas.rejected import RejectedInput


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


def file_bytes_limit(max_pixels: int) -> int:
    """The largest file that can hold one image of ``max_pixels``: uncompressed 16-bit RGB plus
    headers. A bigger file is refused before it is read (its header is not needed to know)."""
    return max_pixels * 6 + 2**20


def read_input(path: str, max_bytes: int, root: str | None = None, follow_symlinks: bool = False,
               header: Callable[[bytes], bool] | None = None, header_bytes: int = 16) -> bytes:
    """The bytes of the input file ``path``, read only once it is known to be a regular file
    of at most ``max_bytes`` (FIFOs, devices and directories are refused without blocking);
    a local symlink is followed only to a file inside ``root`` unless ``follow_symlinks``; and
    when ``header`` rejects the first ``header_bytes``, nothing more is read. Refusals are
    RejectedInput with a reason."""
    if FileSystems.get_scheme(path) not in (None, "file"):
        found = FileSystems.match([path])[0].metadata_list
        if not found:
            raise RejectedInput("missing_file", f"{path}: no such file")
        _check_size(path, found[0].size_in_bytes, max_bytes)
        with FileSystems.open(path) as handle:
            return _read_checked(handle, path, header, header_bytes)
    local = path.removeprefix("file://")
    if root and not follow_symlinks and _via_link(local):
        target = os.path.realpath(local)
        if not target.startswith(os.path.realpath(root.removeprefix("file://")) + os.sep):
            raise RejectedInput("symlink_outside_input", f"{path}: a symlink to {target}, outside the input "
                                f"{root}; pass --follow-symlinks to read it")
    try:
        fd = os.open(local, os.O_RDONLY | os.O_NONBLOCK)
    except FileNotFoundError:
        raise RejectedInput("missing_file", f"{path}: no such file") from None
    except IsADirectoryError:
        raise RejectedInput("not_a_file", f"{path}: a directory, not a file") from None
    except OSError as e:
        raise RejectedInput("unreadable", f"{path}: {e.strerror}") from None
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(handle.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise RejectedInput("not_a_file", f"{path}: not a regular file (a FIFO, socket, device or directory)")
        _check_size(path, info.st_size, max_bytes)
        return _read_checked(handle, path, header, header_bytes)


def _read_checked(handle, path: str, header: Callable[[bytes], bool] | None, header_bytes: int) -> bytes:
    prefix = handle.read(header_bytes)
    if header is not None and prefix and not header(prefix):
        raise RejectedInput("not_an_image", f"{path}: not an image (no known header); not read further")
    return prefix + handle.read()


def _via_link(local: str) -> bool:
    return os.path.realpath(local) != os.path.abspath(local)


def _check_size(path: str, size: int, max_bytes: int) -> None:
    if size > max_bytes:
        raise RejectedInput("too_large", f"{path}: {size} bytes, more than any image within the pixel limit can "
                            f"take ({max_bytes} bytes); refused before reading (raise the pixel limit to read it)")
