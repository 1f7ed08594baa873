"""``--color-mode auto``: one decision per dataset, from the sources' headers (no pixel decoded).

Grayscale when every readable source is gray (L, I;16, 1-bit, a gray palette, a 1- or
2-sample TIFF or zarr), else rgb. Region-readable sources (tiled TIFF, SVS, OME-Zarr) are
judged by the sample count their region reader sees, the others by their Pillow header —
the same readers that later decode them — and both paths then conform to the one decided
mode, so large and small sources of a dataset agree. Headers that cannot be read are left
out (the pipeline rejects those files with their reason), and so are files the job would
not read: FIFOs and devices (opening one would block), symlinks out of the input without
--follow-symlinks. The launcher reads the headers in parallel and stops at the first
colour source.
"""
from __future__ import annotations

import concurrent.futures
import os
import stat
from collections import Counter

from apache_beam.io.filesystems import FileSystems

from pipelines.beam import region_files
from pipelines.core import images, regions
from schemas.rejected import RejectedInput

HEADER_READERS = 16


def readable_here(path: str, root: str | None, follow_symlinks: bool) -> bool:
    """Whether the job would read ``path`` at all: locally a regular file (a FIFO would block
    the launcher), reached through no symlink out of ``root`` unless ``follow_symlinks``
    (as ``files.read_input``); zarr stores are folders."""
    if FileSystems.get_scheme(path) not in (None, "file") or path.rstrip("/").lower().endswith(".zarr"):
        return True
    local = path.removeprefix("file://")
    target = os.path.realpath(local)
    if root and not follow_symlinks and target != os.path.abspath(local) and not target.startswith(
            os.path.realpath(root.removeprefix("file://")) + os.sep):
        return False
    try:
        return stat.S_ISREG(os.stat(local).st_mode)
    except OSError:
        return False


def source_channels(path: str, root: str | None = None, follow_symlinks: bool = False) -> tuple[int, str] | None:
    """(1 gray | 3 colour, what the header says) of one source, or None when it is not read."""
    if not readable_here(path, root, follow_symlinks):
        return None   # the pipeline rejects it with its reason
    try:
        if regions.is_region_readable(path):
            with region_files.opened(path) as source:
                if source is not None:
                    return (3 if source.channels >= 3 else 1), f"{source.channels}-sample {source.dtype}"
        with FileSystems.open(path) as handle:
            return images.header_channels(handle, path)
    except (RejectedInput, OSError, ValueError, KeyError, IndexError, TypeError, EOFError):
        return None   # the pipeline rejects the file with its reason


def decide(paths: list[str], root: str | None = None, follow_symlinks: bool = False,
           readers: int = HEADER_READERS) -> tuple[str, dict]:
    """(``"grayscale"`` | ``"rgb"``, the record of how it was decided, for config.json)."""
    def channels(path: str) -> tuple[int, str] | None:
        return source_channels(path, root, follow_symlinks)

    modes: Counter = Counter()
    colour_source = None
    read = 0
    with concurrent.futures.ThreadPoolExecutor(max(1, readers)) as pool:
        for start in range(0, len(paths), readers * 4):
            batch = paths[start:start + readers * 4]
            for path, found in zip(batch, pool.map(channels, batch)):
                if found is None:
                    continue
                read += 1
                modes[found[1]] += 1
                if found[0] == 3 and colour_source is None:
                    colour_source = path
            if colour_source is not None:
                break
    mode = "rgb" if colour_source is not None or not read else "grayscale"
    why = (f"{colour_source} is in colour" if colour_source else
           f"all {read} source headers are gray" if read else "no source header could be read")
    return mode, {"requested": "auto", "decided": mode, "reason": why, "headers_read": read,
                  "header_modes": dict(sorted(modes.items()))}
