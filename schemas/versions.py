"""Versioned directories: how a dataset or a model directory is published as one unit.

``tessera preprocess --output DS`` and ``tessera train --model-dir M`` never change files a
reader may be reading. Each run publishes a complete new *version* beside the old ones and
then switches a one-object pointer::

    DS/
      CURRENT                            {"version": "v-...", ...}: written last, one object
      v-20261201T095500123456Z-ab12cd34/ a complete dataset (or model export)
      v-20261130T...                     older versions, kept ``keep`` deep, then pruned
      current -> v-...                   local disks only: a symlink swapped atomically, for
                                         tools that take a plain path (tfds.builder_from_directory)

The pointer also lists the versions that were current before (``previous``): those are
kept for readers that resolved them; any other version directory is an unfinished publish.
A reader resolves the directory once (:func:`resolve`) and then reads only inside that
version, so a training job that started on version A keeps reading A while B is
published. A directory without ``CURRENT`` is read as it is (a single version: a dataset
written by hand or by an older Tessera, or a version directory passed directly).

Work in progress lives under names with ``STAGING_MARK`` (``DS.tmp-<id>`` beside a
dataset, ``M/.tmp-<id>`` inside a model directory); the next run reports them and removes
those older than ``LEFTOVER_AGE_S``. Nothing here does I/O: the jobs pass their own reader.
"""
from __future__ import annotations

import datetime
import json
import re
from typing import Callable, Iterable, Sequence

POINTER_FILE = "CURRENT"
CURRENT_LINK = "current"
VERSION_PREFIX = "v-"
STAGING_MARK = ".tmp-"
DEFAULT_KEEP = 3
LEGACY = "."  # in a pointer's "previous": the dataset written at the top of the directory
LEFTOVER_AGE_S = 6 * 3600  # staging older than this belongs to no live job: the next run removes it

_VERSION = re.compile(r"^v-\d{8}T\d{12}Z-[0-9a-z]+$")


def version_name(digest: str, now: datetime.datetime | None = None) -> str:
    """``v-<UTC time to the microsecond>-<first 8 of digest>``: sorts by publication time."""
    now = (now or datetime.datetime.now(datetime.timezone.utc)).astimezone(datetime.timezone.utc)
    return f"{VERSION_PREFIX}{now.strftime('%Y%m%dT%H%M%S%f')}Z-{digest[:8].lower()}"


def is_version(name: str) -> bool:
    return bool(_VERSION.match(name))


def pointer(version: str, previous: Sequence[str] = (), **info) -> bytes:
    """The bytes of a ``CURRENT`` pointer to ``version``; ``previous`` lists the versions that
    were current before it, newest first (``LEGACY`` for a dataset at the top of the
    directory), and extra ``info`` is recorded beside them."""
    if not is_version(version):
        raise ValueError(f"not a version name: {version!r}")
    return (json.dumps({"version": version, "previous": list(previous), **info}, indent=1, sort_keys=True)
            + "\n").encode("utf-8")


def read_pointer(data: bytes, where: str) -> dict:
    """A ``CURRENT`` pointer's content; ValueError naming ``where`` when it is damaged."""
    try:
        content = json.loads(data.decode("utf-8"))
        version, previous = content["version"], content.get("previous", [])
    except (UnicodeDecodeError, ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{where}: not a version pointer ({type(e).__name__}: {e})") from e
    if not isinstance(version, str) or not is_version(version) or not isinstance(previous, list):
        raise ValueError(f"{where}: names {version!r}, which is not a version")
    return content


def resolve(root: str, read: Callable[[str], bytes | None]) -> str:
    """The directory a reader of ``root`` uses: ``root/<version>`` when ``root`` has a pointer
    (``read(path)`` returns its bytes, or None when there is none), else ``root`` itself."""
    root = root.rstrip("/")
    data = read(f"{root}/{POINTER_FILE}")
    return root if data is None else f"{root}/{read_pointer(data, f'{root}/{POINTER_FILE}')['version']}"


def next_previous(old_pointer: dict | None, legacy: bool, keep: int = DEFAULT_KEEP) -> list[str]:
    """The ``previous`` list of the pointer that replaces ``old_pointer``: the versions a reader
    may still be using, newest first, the ``keep - 1`` that stay beside the new current one."""
    if old_pointer is None:
        history = [LEGACY] if legacy else []
    else:
        history = [old_pointer["version"], *old_pointer.get("previous", [])]
    return history[:max(1, keep) - 1]


def to_prune(names: Iterable[str], current: str, previous: Sequence[str]) -> list[str]:
    """Versions among ``names`` that are neither ``current`` nor kept in ``previous``: older
    ones, and any a crashed publish left without ever pointing to it."""
    kept = {current, *previous}
    return sorted(n for n in names if is_version(n) and n not in kept)
