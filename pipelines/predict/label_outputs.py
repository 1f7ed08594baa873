"""What a large image leaves: its OME-Zarr label pyramid (and, on request, a probability
pyramid and an OME-TIFF copy of the labels) and its objects table; blocks write the chunks
of the full-resolution levels, the rest is written from them without holding the image.
"""
from __future__ import annotations

import io
import itertools
import tempfile
from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import tifffile
import zarr

from pipelines.beam import files
from pipelines.beam.zarr_store import store_for
from pipelines.core.pixels import PALETTE
from schemas import layout as names

ZARR_FORMAT = 2          # zarr v2 + NGFF 0.4: what napari-ome-zarr and QuPath open today


def block_array(path: str, shape: tuple[int, ...], side: int, dtype: str, settings: str, create: bool):
    """Level 0 of the pyramid at ``path``, chunked ``side`` square over its last two axes (one
    chunk per block). ``create``: keep it when its shape, chunks and settings fingerprint
    match (a resumed run), else make it anew."""
    chunks = (*shape[:-2], side, side)
    if not create:
        return zarr.open_array(store_for(f"{path}/0"), mode="r+", zarr_format=ZARR_FORMAT)
    group = zarr.open_group(store_for(path), mode="a", zarr_format=ZARR_FORMAT)
    existing = group.get("0")
    if existing is not None and existing.shape == shape and existing.chunks == chunks \
            and group.attrs.get("tessera_settings") == settings:
        return existing
    group = zarr.open_group(store_for(path), mode="w", zarr_format=ZARR_FORMAT)   # other settings or size: anew
    group.attrs["tessera_settings"] = settings
    return group.create_array("0", shape=shape, chunks=chunks, dtype=dtype, fill_value=0)


def finish_pyramid(path: str, name: str, pixel_size_um: float | None, labels: bool, colors: bool = True) -> list:
    """Levels 1.. (halving until one chunk covers a level) and the NGFF 0.4 metadata of the
    pyramid at ``path``; labels are subsampled (level n's pixel i is level 0's pixel i * 2^n: no
    translation) and get the image-label colours (``colors``: of the classes, label 0 transparent;
    instance ids get none: viewers pick their own, 0 transparent), (c, y, x) probabilities are
    averaged over 2^n x 2^n pixels, so level n's pixel centres move by (2^n - 1) / 2 pixels of
    level 0 (a translation). Returns the levels, full resolution first."""
    group = zarr.open_group(store_for(path), mode="a", zarr_format=ZARR_FORMAT)
    level0 = group["0"]
    side = level0.chunks[-1]
    levels = [level0]
    while max(levels[-1].shape[-2:]) > side:
        previous = levels[-1]
        shape = (*previous.shape[:-2], -(-previous.shape[-2] // 2), -(-previous.shape[-1] // 2))
        levels.append(group.create_array(str(len(levels)), shape=shape, chunks=level0.chunks, dtype=level0.dtype,
                                         fill_value=0, overwrite=True))
        (downsample if labels else average_down)(previous, levels[-1])
    attrs = {"multiscales": [multiscales(name, len(levels), pixel_size_um, channels=not labels,
                                         averaged=not labels)]}
    if labels:
        attrs["image-label"] = {"version": "0.4", "source": {"image": "../../"}, **(
            {"colors": class_colors(len(PALETTE))} if colors else {})}
    group.attrs.update(attrs)
    return levels


def multiscales(name: str, count: int, pixel_size_um: float | None, channels: bool, averaged: bool) -> dict:
    """NGFF 0.4 ``multiscales`` of ``count`` levels halving (y, x), after a ``c`` axis when
    ``channels``; ``averaged`` levels carry the half-pixel translation of their pixel centres."""
    size = pixel_size_um or 1.0
    unit = {"unit": "micrometer"} if pixel_size_um else {}
    axes = ([{"name": "c", "type": "channel"}] if channels else []) + [
        {"name": n, "type": "space", **unit} for n in ("y", "x")]
    lead = [1.0] if channels else []
    datasets = []
    for i in range(count):
        transforms = [{"type": "scale", "scale": [*lead, size * 2 ** i, size * 2 ** i]}]
        if averaged and i:
            shift = size * (2 ** i - 1) / 2
            transforms.append({"type": "translation", "translation": [*([0.0] * len(lead)), shift, shift]})
        datasets.append({"path": str(i), "coordinateTransformations": transforms})
    return {"version": "0.4", "name": name, "axes": axes, "datasets": datasets}


def class_colors(count: int) -> list[dict]:
    """image-label colours of class ids 0..count-1: the overlay palette, class 0 (background)
    fully transparent so that viewers show the image beneath it."""
    return [{"label-value": i, "rgba": [*map(int, PALETTE[i % len(PALETTE)]), 0 if i == 0 else 255]}
            for i in range(count)]


def channel_colour(index: int) -> str:
    return "".join(f"{int(v):02X}" for v in PALETTE[index % len(PALETTE)]) if index else "FFFFFF"


def name_channels(path: str, channel_names) -> None:
    """The omero ``channels`` of a (c, y, x) probability pyramid: each channel named by its
    class, shown in its class colour over a 0..1 window (napari and QuPath read the names)."""
    group = zarr.open_group(store_for(path), mode="a", zarr_format=ZARR_FORMAT)
    group.attrs["omero"] = {"version": "0.4", "rdefs": {"model": "color"}, "channels": [
        {"label": str(n), "color": channel_colour(i), "active": True,
         "window": {"start": 0.0, "end": 1.0, "min": 0.0, "max": 1.0}} for i, n in enumerate(channel_names)]}


INSTANCE_PROPERTIES_LIMIT = 10_000   # objects whose features go into the instance labels' metadata
PROPERTY_COLUMNS = ("object_id", "class_name", "area", "centroid_y", "centroid_x", "mean_confidence")


def instance_properties(objects_path: str, objects: int, limit: int = INSTANCE_PROPERTIES_LIMIT) -> list[dict]:
    """image-label ``properties`` of an instance pyramid: per object id its class and features,
    from objects.parquet, for at most ``limit`` objects (a slide's millions would make the
    metadata JSON larger than any viewer reads: above it, none; objects.parquet has them all)."""
    if not objects or objects > limit:
        return []
    table = pq.read_table(io.BytesIO(files.read_bytes(objects_path)), columns=list(PROPERTY_COLUMNS),
                          use_threads=False)
    rows = table.to_pylist()
    return [{"label-value": int(r["object_id"]), "class": r["class_name"], "area": int(r["area"]),
             "centroid_y": float(r["centroid_y"]), "centroid_x": float(r["centroid_x"]),
             "mean_confidence": float(r["mean_confidence"])} for r in rows]


def finish_container(path: str, image_id: str, class_names, instances: bool,
                     properties: list[dict] | None = None) -> None:
    """The OME-Zarr holding a large image's label pyramids (``schemas.layout.label_container_path``):
    the NGFF ``labels`` group listing ``classes`` (and ``instances``), the classes' ``properties``
    (class names) and the instances' ``properties`` (``instance_properties``); a stale
    ``instances`` group an earlier run left is removed. The root is an NGFF image whose levels
    are the class pyramid's own arrays (paths ``labels/classes/<n>``: no copy; a copy of the
    input would be as large as the slide), so opening the container shows an image and its label
    layers, and the labels' ``source`` (``../../``) is this root. Its attributes are written
    last: they mark the container complete (``schemas.layout.label_image_marker``)."""
    root = zarr.open_group(store_for(path), mode="a", zarr_format=ZARR_FORMAT)
    holder = root.require_group("labels")
    names_ = ["classes", *(["instances"] if instances else [])]
    for stale in set(holder.group_keys()) - set(names_):
        del holder[stale]
    classes = holder["classes"]
    classes.attrs["image-label"] = {**classes.attrs["image-label"], "properties": [
        {"label-value": i, "class": str(n)} for i, n in enumerate(class_names)],
        "colors": class_colors(len(class_names))}
    if instances and properties:
        group = holder["instances"]
        group.attrs["image-label"] = {**group.attrs["image-label"], "properties": properties}
    for name in names_:            # viewers name a layer by its multiscales name: the image id and what it is
        group = holder[name]
        group.attrs["multiscales"] = [{**m, "name": f"{image_id} {name}"} for m in group.attrs["multiscales"]]
    holder.attrs["labels"] = names_
    image = holder["classes"].attrs["multiscales"][0]      # the root's image: the class ids, not a copy
    root.attrs.update({
        "multiscales": [{**image, "name": image_id, "datasets": [
            {**d, "path": f"labels/classes/{d['path']}"} for d in image["datasets"]]}],
        "omero": {"version": "0.4", "rdefs": {"model": "greyscale"}, "channels": [
            {"label": "classes", "color": "FFFFFF", "active": True,
             "window": {"start": 0, "end": max(len(class_names) - 1, 1), "min": 0, "max": 255}}]},
        "tessera": {"image_id": image_id, "labels": [f"labels/{n}" for n in names_],
                    "image": "the class ids (labels/classes), referenced: the input is the real image"}})


def objects_table(image_id: str, found: dict, class_names, pixel_size_um: float | None,
                  outlines: list | None = None) -> pa.Table:
    """Rows of schemas.layout.OBJECTS_SCHEMA from a table of objects.block_objects fields;
    ``outlines``: per row its rings (``pipelines.core.outlines.polygons``, in the row order)
    or None, filling the ``outline`` column (null without them)."""
    area = found["area"].astype(np.float64)
    safe = np.maximum(area, 1)
    cy, cx = found["sum_y"] / safe, found["sum_x"] / safe
    um = pixel_size_um if pixel_size_um else np.nan
    if outlines is not None and len(outlines) != len(area):
        raise ValueError(f"{image_id}: {len(outlines)} outlines for {len(area)} objects")
    return pa.table({
        "image_id": [image_id] * len(area), "object_id": np.asarray(found["object_id"], np.int64),
        "class_name": [class_names[int(c)] for c in found["cls"]], "area": found["area"].astype(np.int64),
        **{k: found[k].astype(np.int64) for k in ("ymin", "xmin", "ymax", "xmax")},
        "centroid_y": cy, "centroid_x": cx, "centroid_y_um": cy * um, "centroid_x_um": cx * um,
        "mean_confidence": found["confidence"] / safe,
        "outline": [None if rings is None else [np.asarray(r, np.float64).tolist() for r in rings]
                    for rings in (outlines if outlines is not None else [None] * len(area))],
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
        tables = itertools.chain((pq.read_table(io.BytesIO(files.read_bytes(p)), use_threads=False) for p in parts),
                                 [objects_table(image_id, merged, class_names, pixel_size_um)])
        for table in tables:          # one part at a time: an image may have millions of objects
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


def write_ome_tiff(levels: list, path: str, pixel_size_um: float | None, side: int = 256,
                   channel: str = "classes") -> None:
    """The label pyramid as a tiled, zlib-compressed OME-TIFF (level 0 + SubIFDs, the OME-TIFF
    pyramid that Bio-Formats, QuPath, tifffile and tiffslide read as levels; OpenSlide 4 reads
    level 0 only), streamed from the zarr one band of tiles at a time through a local temporary
    file. Every level carries its pixel size as TIFF resolution tags (pixels per centimetre:
    OpenSlide's and tiffslide's mpp) besides the OME-XML's PhysicalSize; the channel is named."""
    metadata = {"axes": "YX", "Channel": {"Name": [channel]}}
    if pixel_size_um:
        metadata.update(PhysicalSizeX=pixel_size_um, PhysicalSizeY=pixel_size_um,
                        PhysicalSizeXUnit="µm", PhysicalSizeYUnit="µm")
    with tempfile.NamedTemporaryFile(suffix=".ome.tif") as local:
        with tifffile.TiffWriter(local.name, bigtiff=True, ome=True) as tiff:
            for i, level in enumerate(levels):
                resolution = {"resolution": (1e4 / (pixel_size_um * 2 ** i),) * 2, "resolutionunit": "CENTIMETER"} \
                    if pixel_size_um else {}
                tiff.write(_tiles(level, side), shape=level.shape, dtype=np.uint8, tile=(side, side),
                           compression="zlib", photometric="minisblack", **resolution,
                           **({"subifds": len(levels) - 1, "metadata": metadata} if i == 0 else
                              {"subfiletype": 1, "metadata": None}))
        local.seek(0)
        with files.atomic_create(path) as handle:
            while chunk := local.read(1 << 24):
                handle.write(chunk)


def _chunks(target) -> Iterator[tuple[int, int, int, int]]:
    side = target.chunks[-1]
    height, width = target.shape[-2:]
    for a in range(0, height, side):
        for c in range(0, width, side):
            yield a, min(a + side, height), c, min(c + side, width)


def downsample(source, target) -> None:
    """Level n+1 of a label pyramid from level n, chunk by chunk (every second pixel)."""
    for a, b, c, d in _chunks(target):
        target[a:b, c:d] = source[2 * a:2 * b:2, 2 * c:2 * d:2]


def average_down(source, target) -> None:
    """Level n+1 of a (c, y, x) float pyramid from level n, chunk by chunk: the mean of each
    2 x 2 (an odd last row or column is averaged with itself)."""
    height, width = source.shape[-2:]
    for a, b, c, d in _chunks(target):
        rows = np.minimum(np.arange(2 * a, 2 * b), height - 1)
        cols = np.minimum(np.arange(2 * c, 2 * d), width - 1)
        piece = np.asarray(source[:, 2 * a:min(2 * b, height), 2 * c:min(2 * d, width)], np.float32)
        piece = piece[:, rows - 2 * a][:, :, cols - 2 * c]
        target[:, a:b, c:d] = piece.reshape(piece.shape[0], b - a, 2, d - c, 2).mean(axis=(2, 4))
