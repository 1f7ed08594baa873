"""Publishing a finished dataset as a new version of ``--output`` (see ``schemas.versions``).

The job works in ``<output>.tmp-<id>`` beside the output. When it is complete, it moves
into ``<output>/v-<time>-<fingerprint>/``, and only then does the one-object pointer
``<output>/CURRENT`` switch to it (locally the ``current`` symlink follows). At no moment
is there no complete dataset at ``--output``: before the pointer, readers find the
previous version; after it, the new one. Older versions are kept ``--keep-versions`` deep
and then pruned. Leftovers of crashed runs beside the output are reported by the next run
and removed once they are older than ``versions.LEFTOVER_AGE_S``. A run that publishes
nothing (too many rejections, no example) deletes its work dir and keeps only its rejected
records, as ``<output>.rejected-<UTC time>.jsonl`` beside the output.
"""
from __future__ import annotations

import datetime
import os
import shutil
import sys
import time
import uuid

from apache_beam.io.filesystems import FileSystems

from pipelines.beam.files import (
    children,
    exists,
    read_if_exists,
    siblings,
    write_atomically,
)
from schemas import layout, versions
from schemas.crashpoints import crashpoint

LEFTOVER_MARKS = (versions.STAGING_MARK, ".old-")  # ".old-": what Tessera before versions left
REJECTED_MARK = ".rejected-"   # <output>.rejected-<time>.jsonl: the records of a refused run, kept


def is_local(path: str) -> bool:
    return FileSystems.get_scheme(path) in (None, "file")


def temporary_output(output: str) -> str:
    return f"{output.rstrip('/')}{versions.STAGING_MARK}{uuid.uuid4().hex[:12]}"


def output_exists(output: str) -> bool:
    return bool(FileSystems.match([f"{output.rstrip('/')}/**"])[0].metadata_list) or (
        is_local(output) and os.path.exists(output))


def delete_tree(path: str) -> None:
    if not is_local(path):
        files = [m.path for m in FileSystems.match([f"{path.rstrip('/')}/**"])[0].metadata_list]
        if files:
            FileSystems.delete(files)
    elif os.path.islink(path) or os.path.isfile(path):
        os.remove(path)
    elif os.path.exists(path):
        shutil.rmtree(path)


def clean_leftovers(output: str, now: float | None = None, stream=None) -> list[str]:
    """Report the work dirs crashed runs left beside ``output``; remove those older than
    ``LEFTOVER_AGE_S`` (younger ones may belong to a run still going). Returns the removed."""
    now, stream, removed = now or time.time(), stream or sys.stderr, []
    for mark in LEFTOVER_MARKS:
        for path, modified in sorted(siblings(output, mark).items()):
            age = now - modified
            if age > versions.LEFTOVER_AGE_S:
                delete_tree(path)
                removed.append(path)
                print(f"tessera preprocess: removed {path}, left by a run that stopped {age / 3600:.1f} h ago",
                      file=stream)
            else:
                print(f"tessera preprocess: {path} was written {age / 60:.0f} min ago by another run (running, "
                      f"or crashed: it is removed once older than {versions.LEFTOVER_AGE_S // 3600} h)", file=stream)
    return removed


def keep_rejected(work: str, output: str) -> str:
    """After a refused run: moves its rejected records beside the output, as
    ``<output>.rejected-<UTC time>.jsonl`` (the caller then deletes ``work``); returns that path."""
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    kept = f"{output.rstrip('/')}{REJECTED_MARK}{stamp}.jsonl"
    FileSystems.rename([f"{work}/{layout.REJECTED_FILE}"], [kept])
    return kept


def _move_tree(source: str, target: str) -> None:
    """Locally one rename; elsewhere object by object, ``_SUCCESS`` last (the version is not
    pointed to yet, so nobody reads it half-copied)."""
    if is_local(source):
        os.makedirs(os.path.dirname(os.path.abspath(target)), exist_ok=True)
        os.rename(source, target)
        return
    files = sorted(m.path for m in FileSystems.match([f"{source}/**"])[0].metadata_list)
    last = [f for f in files if f.endswith("/" + layout.SUCCESS_FILE)]
    for batch in ([f for f in files if f not in last], last):
        if batch:
            FileSystems.rename(batch, [target + f[len(source):] for f in batch])


def _point_local_link(output: str, version: str) -> None:
    link = os.path.join(output, versions.CURRENT_LINK)
    temporary = f"{link}{versions.STAGING_MARK}{uuid.uuid4().hex[:12]}"
    os.symlink(version, temporary)
    os.replace(temporary, link)  # atomic: the link always names a complete version


def prune(output: str, current: str, previous: list[str]) -> list[str]:
    """Deletes the versions that are neither ``current`` nor in ``previous`` (older ones, and
    unpointed ones of crashed publishes), and a dataset written at the top of ``output``
    before versions once it is no longer among ``previous``."""
    names = children(output)
    doomed = [f"{output}/{v}" for v in versions.to_prune(names, current, previous)]
    if layout.SUCCESS_FILE in names and versions.LEGACY not in previous:
        doomed += [f"{output}/{n}" for n in names if not versions.is_version(n) and n not in (
            versions.POINTER_FILE, versions.CURRENT_LINK) and versions.STAGING_MARK not in n]
    for path in doomed:
        delete_tree(path)
    return doomed


def commit(work: str, output: str, overwrite: bool, fingerprint: str, keep: int = versions.DEFAULT_KEEP) -> str:
    """Publishes the complete dataset in ``work`` as a new version of ``output``; returns it."""
    output = output.rstrip("/")
    if output_exists(output) and not overwrite:
        raise FileExistsError(f"{output} already exists; pass --overwrite to publish a new version")
    pointer_path = f"{output}/{versions.POINTER_FILE}"
    old = read_if_exists(pointer_path)
    old_pointer = None if old is None else versions.read_pointer(old, pointer_path)
    previous = versions.next_previous(old_pointer, exists(f"{output}/{layout.SUCCESS_FILE}"), keep)
    delete_tree(f"{work}/{layout.WORK_PARTS}")
    version = versions.version_name(fingerprint)
    _move_tree(work, f"{output}/{version}")
    crashpoint("preprocess:before-pointer")
    published = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    write_atomically(pointer_path, versions.pointer(version, previous, fingerprint=fingerprint, published_at=published))
    if is_local(output):
        _point_local_link(output, version)
    prune(output, version, previous)
    return version
