"""What a large image leaves besides its blocks' chunks: the rest of its label pyramid, an
optional OME-TIFF copy of it, and its objects table; each written without holding the image.
"""
from __future__ import annotations

import io
import tempfile
from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import tifffile

from pipelines.beam import files
from schemas import layout as names


def objects_table(image_id: str, found: dict, class_names, pixel_size_um: float | None) -> pa.Table:
    """Rows of schemas.layout.OBJECTS_SCHEMA from a table of objects.block_objects fields."""
    area = found["area"].astype(np.float64)
    safe = np.maximum(area, 1)
    cy, cx = found["sum_y"] / safe, found["sum_x"] / safe
    um = pixel_size_um if pixel_size_um else np.nan
    return pa.table({
        "image_id": [image_id] * len(area), "object_id": np.asarray(found["object_id"], np.int64),
        "class_name": [class_names[int(c)] for c in found["cls"]], "area": found["area"].astype(np.int64),
        **{k: found[k].astype(np.int64) for k in ("ymin", "xmin", "ymax", "xmax")},
        "centroid_y": cy, "centroid_x": cx, "centroid_y_um": cy * um, "centroid_x_um": cx * um,
        "mean_confidence": found["confidence"] / safe,
    }, schema=names.OBJECTS_SCHEMA)


def parquet_bytes(table: pa.Table) -> bytes:
    sink = io.BytesIO()
    pq.write_table(table, sink)
    return sink.getvalue()


def write_objects(layout, image_id: str, merged: dict, parts: list[str], pixel_size_um: float | None) -> np.ndarray:
    """objects/<image_id>.parquet: the blocks' complete objects (streamed part by part) and
    the merged open ones; returns the number of objects per class."""
    class_names = layout.settings.class_names
    per_class = np.zeros(len(class_names), np.int64)
    with files.atomic_create(layout.path(names.objects_path(image_id))) as handle:
        writer = pq.ParquetWriter(handle, names.OBJECTS_SCHEMA)
        for table in [*(pq.read_table(io.BytesIO(files.read_bytes(p)), use_threads=False) for p in parts),
                      objects_table(image_id, merged, class_names, pixel_size_um)]:
            for name in table.column("class_name").to_pylist():
                per_class[class_names.index(name)] += 1
            writer.write_table(table)
        writer.close()
    return per_class


def _tiles(level, side: int) -> Iterator[np.ndarray]:
    """``side``-square tiles of a zarr level in row-major order, read one band of rows at a time."""
    height, width = level.shape
    for y in range(0, height, side):
        band = np.asarray(level[y:min(y + side, height), :])
        for x in range(0, width, side):
            tile = np.zeros((side, side), np.uint8)
            piece = band[:, x:x + side]
            tile[:piece.shape[0], :piece.shape[1]] = piece
            yield tile


def write_ome_tiff(levels: list, path: str, pixel_size_um: float | None, side: int = 256) -> None:
    """The label pyramid as a tiled, zlib-compressed OME-TIFF (level 0 + SubIFDs), streamed
    from the zarr one band of tiles at a time through a local temporary file."""
    metadata = {"axes": "YX"}
    if pixel_size_um:
        metadata.update(PhysicalSizeX=pixel_size_um, PhysicalSizeY=pixel_size_um,
                        PhysicalSizeXUnit="µm", PhysicalSizeYUnit="µm")
    with tempfile.NamedTemporaryFile(suffix=".ome.tif") as local:
        with tifffile.TiffWriter(local.name, bigtiff=True, ome=True) as tiff:
            for i, level in enumerate(levels):
                tiff.write(_tiles(level, side), shape=level.shape, dtype=np.uint8, tile=(side, side),
                           compression="zlib", photometric="minisblack",
                           **({"subifds": len(levels) - 1, "metadata": metadata} if i == 0 else
                              {"subfiletype": 1, "metadata": None}))
        local.seek(0)
        with files.atomic_create(path) as handle:
            while chunk := local.read(1 << 24):
                handle.write(chunk)


def downsample(source, target) -> None:
    """Level n+1 of a label pyramid from level n, chunk by chunk (every second pixel)."""
    side = target.chunks[0]
    for a in range(0, target.shape[0], side):
        for c in range(0, target.shape[1], side):
            b, d = min(a + side, target.shape[0]), min(c + side, target.shape[1])
            target[a:b, c:d] = source[2 * a:2 * b:2, 2 * c:2 * d:2]
