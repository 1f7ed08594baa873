"""Publishing a finished dataset: the work directory beside the output, and the commit.
"""
from __future__ import annotations

import os
import shutil
import uuid

from apache_beam.io.filesystems import FileSystems

from schemas import layout


def temporary_output(output: str) -> str:
    return f"{output.rstrip('/')}.tmp-{uuid.uuid4().hex[:12]}"


def output_exists(output: str) -> bool:
    return bool(FileSystems.match([f"{output.rstrip('/')}/**"])[0].metadata_list) or (
        not output.startswith("gs://") and os.path.exists(output))


def delete_tree(path: str) -> None:
    if path.startswith("gs://"):
        files = [m.path for m in FileSystems.match([f"{path.rstrip('/')}/**"])[0].metadata_list]
        if files:
            FileSystems.delete(files)
    elif os.path.exists(path):
        shutil.rmtree(path)


def keep_only_reports(work: str) -> str:
    """After a refused run: deletes shards and parts, keeps what explains the refusal."""
    keep = {layout.REJECTED_FILE, layout.STATS_FILE, layout.CONFIG_FILE}
    files = [m.path for m in FileSystems.match([f"{work}/**"])[0].metadata_list]
    doomed = [f for f in files if f[len(work) + 1:] not in keep]
    if doomed:
        FileSystems.delete(doomed)
    if not work.startswith("gs://"):  # empty local folders left by the parts
        for root, dirs, _ in os.walk(work, topdown=False):
            for d in dirs:
                if not os.listdir(os.path.join(root, d)):
                    os.rmdir(os.path.join(root, d))
    return work


def commit(temporary: str, output: str, overwrite: bool) -> None:
    """Moves a complete dataset from ``temporary`` to ``output``; ``_SUCCESS`` lands last.

    Local paths: one directory rename (atomic); an old output is renamed away first and
    deleted after. gs://: objects are copied then deleted (GCS has no rename); readers
    must wait for ``_SUCCESS``, which is copied last.
    """
    output = output.rstrip("/")
    if output_exists(output):
        if not overwrite:
            raise FileExistsError(f"{output} already exists; pass --overwrite to replace it")
    delete_tree(f"{temporary}/{layout.WORK_PARTS}")
    if not output.startswith("gs://"):
        old = f"{output}.old-{uuid.uuid4().hex[:12]}" if os.path.exists(output) else None
        if old:
            os.rename(output, old)
        os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
        os.rename(temporary, output)
        if old:
            shutil.rmtree(old)
        return
    delete_tree(output)
    files = sorted(m.path for m in FileSystems.match([f"{temporary}/**"])[0].metadata_list)
    last = [f for f in files if f.endswith("/" + layout.SUCCESS_FILE)]
    for batch in ([f for f in files if f not in last], last):
        if batch:
            FileSystems.rename(batch, [output + f[len(temporary):] for f in batch])
