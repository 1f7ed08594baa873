"""Region-readable sources (``pipelines.core.regions``) opened through Beam's FileSystems, so
tiled TIFFs and zarr stores are read by region from local paths and gs:// alike."""
from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from apache_beam.io.filesystems import FileSystems

from pipelines.beam.zarr_store import store_for
from pipelines.core import regions


def open_source(path: str) -> tuple[regions.RegionSource | None, Any]:
    """(RegionSource, or None for a strip TIFF; the open file it reads from, or None)."""
    if path.rstrip("/").lower().endswith(".zarr"):
        return regions.open_zarr(store_for(path.rstrip("/"), read_only=True), path), None
    handle = FileSystems.open(path)
    try:
        source = regions.open_tiff(handle, path)
    except BaseException:
        handle.close()
        raise
    if source is None:
        handle.close()
    return source, handle


@contextlib.contextmanager
def opened(path: str) -> Iterator[regions.RegionSource | None]:
    """The source of ``path`` for as long as the block lasts (headers, a few regions)."""
    source, handle = open_source(path)
    try:
        yield source
    finally:
        if handle is not None:
            handle.close()


_OPEN: dict[str, tuple[Any, Any]] = {}   # path -> (source, file): this process's open sources


def cached(path: str) -> regions.RegionSource | None:
    """The open source of ``path``, kept open for the next call: consecutive blocks of one
    image share it. At most two sources (an image and its mask) stay open per process."""
    if path not in _OPEN:
        while len(_OPEN) >= 2:
            _, handle = _OPEN.pop(next(iter(_OPEN)))
            if handle is not None:
                handle.close()
        _OPEN[path] = open_source(path)
    return _OPEN[path][0]
