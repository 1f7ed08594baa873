"""The prediction directory's writers: atomic files, per-image outputs and the Parquet row.

Its layout (names and folders) is defined in ``schemas.layout``; ``OutputLayout`` binds it to
one directory and one run's settings. Every file is written to a temporary name and renamed.
"""
from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import struct
import time
import zlib
from typing import Callable, Iterable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import tifffile
from apache_beam.metrics import Metrics

from pipelines.beam.files import atomic_create, read_bytes, write_atomically
from pipelines.core.pixels import PALETTE, PNG_SIGNATURE, encode_png, heat, overlay, png_chunk
from pipelines.core.outlines import polygons
from pipelines.predict import geojson_out, label_outputs
from pipelines.predict import instances as predict_instances
from pipelines.predict.instances import DecodedImage, instance_table
from pipelines.predict.stitch import ComponentCounter, StripResult, preview_step, seam_columns
from schemas import layout as names
from schemas.decoder import DecoderParams
from schemas.layout import PREDICTIONS_SCHEMA


@dataclasses.dataclass(frozen=True)
class OutputSettings:
    """What changes the per-image outputs (and therefore the settings fingerprint)."""

    task: str
    class_names: tuple[str, ...]      # of masks, rows and objects (a decoded boundary model: its output classes)
    model_ids: tuple[str, ...]
    ensemble: str = "mean"
    tta: str = "none"
    overlap: float = 0.0
    blend: str = "gaussian"
    binary_255: bool = False
    save_probabilities: bool = False
    connectivity: int = 4          # objects of large images
    mask_format: str = "ome-zarr"  # large images: "ome-zarr", or "ome-tiff" (the zarr and an OME-TIFF)
    instances: str = "none"        # the decoder's mode (schemas.decoder.MODES) when instances are written
    decoder: str = ""              # with instances: the DecoderParams (JSON) that decode them
    threshold: float = -1.0        # --threshold (binary): instead of the model card's (-1)
    precision: str = "float32"     # --precision: which of the models' SavedModels ran
    head_classes: tuple[str, ...] = ()   # a decoded boundary model: its classes (the probabilities' channels)

    @property
    def probability_classes(self) -> tuple[str, ...]:
        """The channels of the probabilities (--save-probabilities): the model's classes."""
        return self.head_classes or self.class_names

    @property
    def decodes_boundary(self) -> bool:
        """Instances decoded from a boundary model's probabilities (strips keep them in float32)."""
        return self.instances != "none" and bool(self.head_classes)

    def decoder_params(self) -> DecoderParams | None:
        return DecoderParams.from_dict(json.loads(self.decoder)) if self.instances != "none" else None

    def fingerprint(self) -> str:
        values = dataclasses.asdict(self)
        for name, default in (("connectivity", 4), ("mask_format", "ome-zarr"), ("instances", "none"),
                              ("decoder", ""), ("threshold", -1.0), ("head_classes", ()),
                              ("precision", "float32")):
            if values[name] == default:   # defaults leave the fingerprints of earlier runs as they were
                del values[name]
        text = json.dumps(values, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclasses.dataclass(frozen=True)
class OutputLayout:
    root: str
    settings: OutputSettings

    def path(self, relative: str) -> str:
        return f"{self.root.rstrip('/')}/{relative}"

    def mask(self, image_id: str) -> str:
        return names.mask_path(image_id)

    def overlay(self, image_id: str) -> str:
        return names.overlay_path(image_id)

    def probabilities(self, image_id: str) -> str:
        return names.probabilities_path(image_id)

    def rows_dir(self) -> str:
        return names.rows_dir(self.settings.fingerprint())

    def row(self, image_id: str) -> str:
        return names.row_path(self.settings.fingerprint(), image_id)

    def parts_dir(self, image_id: str | None = None) -> str:
        return names.strip_parts_dir(self.settings.fingerprint(), image_id)

    def part(self, image_id: str, strip: int, strips: int) -> str:
        return names.strip_part_path(self.settings.fingerprint(), image_id, strip, strips)

    @staticmethod
    def rejected(source: str) -> str:
        return names.rejected_path(source)

    def outputs(self, image_id: str) -> list[str]:
        """Relative paths an image must have, besides its row, to count as done."""
        if self.settings.task != "segmentation":
            return []
        paths = [self.mask(image_id), self.overlay(image_id)]
        paths += [names.seam_map_path(image_id)] if self.settings.overlap > 0 else []
        paths += [names.instances_path(image_id), names.objects_path(image_id), names.geojson_path(image_id)] \
            if self.settings.instances != "none" else []
        return paths + ([self.probabilities(image_id)] if self.settings.save_probabilities else [])


def write_json(path: str, value) -> None:
    write_atomically(path, (json.dumps(value, indent=1, sort_keys=True) + "\n").encode("utf-8"))


def write_png_rows(handle, width: int, height: int, row_blocks: Iterable[np.ndarray], level: int = 6,
                   palette: np.ndarray | None = None) -> None:
    """An 8-bit PNG streamed block by block: (rows, width) grayscale or (rows, width, 3) RGB, filter 0.
    ``palette`` ((n, 3) uint8): (rows, width) values are indices into it (a palette PNG)."""
    header, written, packer = None, 0, zlib.compressobj(level)
    for block in row_blocks:
        if header is None:
            colour = 2 if block.ndim == 3 else 3 if palette is not None else 0
            header = (block.shape[1:], colour)
            handle.write(PNG_SIGNATURE + png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, colour, 0, 0, 0)))
            if colour == 3:
                handle.write(png_chunk(b"PLTE", np.ascontiguousarray(palette, np.uint8).tobytes()))
        if block.shape[1:] != header[0] or block.shape[1] != width or block.dtype != np.uint8 \
                or block.shape[2:] not in ((), (3,)):
            raise ValueError(f"expected (rows, {width}[, 3]) uint8 blocks, got {block.shape} {block.dtype}")
        rows = np.zeros((block.shape[0], 1 + block[0].size), np.uint8)
        rows[:, 1:] = block.reshape(block.shape[0], -1)
        written += block.shape[0]
        data = packer.compress(rows.tobytes())
        if data:
            handle.write(png_chunk(b"IDAT", data))
    if written != height:
        raise ValueError(f"PNG of height {height} received {written} rows")
    handle.write(png_chunk(b"IDAT", packer.flush()) + png_chunk(b"IEND", b""))


def mask_palette(class_names) -> np.ndarray:
    """The colours of a class-id mask PNG (a palette PNG, as PASCAL VOC's masks): its pixel values
    stay the class ids (what Pillow's ``np.asarray(Image.open(path))`` and Tessera read; OpenCV and
    imageio expand the palette to RGB unless asked not to), while viewers show class 0 black and
    each other class in its overlay colour (a 0/1 grayscale PNG looks black)."""
    return PALETTE[np.arange(len(class_names)) % len(PALETTE)]


def npy_header(shape: tuple[int, ...], dtype) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)),
                                               "fortran_order": False, "shape": shape})
    return buf.getvalue()


def write_image_outputs(layout: OutputLayout, strips: Callable[[], Iterator[StripResult]]) -> dict:
    """Write mask, overlay (and probabilities) of one image from its strips; return its row.

    ``strips()`` yields the image's strips in order and may be called twice (mask pass,
    probabilities pass); multi-strip images load one part at a time, so a large image is
    never whole in memory.
    """
    s, first = layout.settings, None
    counts, confidence, tiles, previews, masks, heats = np.zeros(len(s.class_names), np.int64), 0.0, 0, [], [], []
    decoded = None
    if s.instances != "none":     # decoded whole first: the masks written are the decoded objects' classes
        decoded = predict_instances.decode_image(s.decoder_params(), s.decodes_boundary, strips)
        strips = predict_instances.with_decoded_masks(strips, decoded, len(s.class_names))
    seams = np.zeros(3, np.float64)
    components = ComponentCounter(len(s.class_names))

    def mask_rows() -> Iterator[np.ndarray]:
        nonlocal counts, confidence, tiles, seams
        for r in strips():
            counts += r.class_counts
            confidence += r.confidence_sum
            tiles += r.tiles
            seams += r.seams
            previews.append(r.preview_image)
            masks.append(r.preview_mask)
            heats.append((r.rows[0], r.preview_seams))
            components.add(r.mask)
            yield r.mask * np.uint8(255 if s.binary_255 else 1)

    first = next(strips())
    image_id, height, width = first.image_id, first.height, first.width
    with atomic_create(layout.path(layout.mask(image_id))) as handle:
        write_png_rows(handle, width, height, mask_rows(),
                       palette=None if s.binary_255 else mask_palette(s.class_names))
    if s.save_probabilities:
        with atomic_create(layout.path(layout.probabilities(image_id))) as handle:
            handle.write(npy_header((height, width, len(s.probability_classes)), np.float16))
            for r in strips():
                handle.write(np.ascontiguousarray(r.probabilities, "<f2").tobytes())
    tinted = overlay(np.concatenate(previews), np.concatenate(masks), alpha=0.5)
    with atomic_create(layout.path(layout.overlay(image_id))) as handle:
        write_png_rows(handle, tinted.shape[1], tinted.shape[0], [tinted], level=1)
    instances = write_instances(layout, image_id, decoded) if decoded is not None else None
    seam_map = None
    if s.overlap > 0:
        seam_map = names.seam_map_path(image_id)
        step = preview_step(height, width)
        write_seam_map(layout.path(seam_map), tinted.shape[:2], [(a // step, 0, piece) for a, piece in heats])
    pixels, per_class = height * width, components.result()
    return {
        "image_id": image_id, "source": first.source, "task": s.task, "height": height, "width": width,
        "class_names": list(s.class_names), "class_fractions": [float(c) / pixels for c in counts],
        "class_components": per_class, "components": int(sum(per_class[1:])),
        "mean_confidence": confidence / pixels, "label": None, "probabilities": None,
        "mask_path": layout.mask(image_id), "overlay_path": layout.overlay(image_id),
        "probabilities_path": layout.probabilities(image_id) if s.save_probabilities else None,
        "tiles": tiles, "strips": first.strips, **common_row(s),
        **seam_columns(int(seams[0]), float(seams[1]), int(seams[2])), "seam_map_path": seam_map,
        "instances_path": instances,
    }


def write_instances(layout: OutputLayout, image_id: str, decoded: DecodedImage) -> str:
    """instances/<id>.tif (uint32 ids, zlib), objects/<id>.parquet, one row per instance
    (object_id = its id in the tif, class_name = its class in the mask, outline = its polygon),
    and geojson/<id>.geojson (the objects as QuPath detections)."""
    s = layout.settings
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, decoded.labels, compression="zlib", photometric="minisblack")
    write_atomically(layout.path(names.instances_path(image_id)), buffer.getvalue())
    found = instance_table(decoded.labels, *decoded.for_table())
    outlines = polygons(decoded.labels, ids=found["object_id"])
    table = label_outputs.objects_table(image_id, found, s.class_names, None, outlines)
    write_atomically(layout.path(names.objects_path(image_id)), label_outputs.parquet_bytes(table))
    geojson_out.write_features(layout.path(names.geojson_path(image_id)),
                               geojson_out.table_features(table, s.class_names))
    return names.instances_path(image_id)


def write_seam_map(path: str, shape: tuple[int, int], pieces: Iterable[tuple[int, int, np.ndarray | None]]) -> None:
    """The seam heat-map PNG (``shape``: the overlay's) from pieces (cell row, cell column,
    stitch.seam_heat values) of one image; cells no tiles overlap stay black."""
    values = np.zeros(shape, np.uint8)
    for y, x, piece in pieces:
        if piece is not None:
            h, w = min(piece.shape[0], shape[0] - y), min(piece.shape[1], shape[1] - x)
            np.maximum(values[y:y + h, x:x + w], piece[:h, :w], out=values[y:y + h, x:x + w])
    write_atomically(path, encode_png(heat(values)))


def classification_row(settings: OutputSettings, image_id: str, source: str, height: int, width: int,
                       scores: np.ndarray, decision: int, tiles: int = 1) -> dict:
    return {
        "image_id": image_id, "source": source, "task": settings.task, "height": height, "width": width,
        "class_names": list(settings.class_names), "class_fractions": None, "class_components": None,
        "components": None, "mean_confidence": float(scores[decision]),
        "label": settings.class_names[decision], "probabilities": [float(p) for p in scores],
        "mask_path": None, "overlay_path": None, "probabilities_path": None,
        "tiles": tiles, "strips": 1, **common_row(settings),
    }


def common_row(s: OutputSettings) -> dict:
    return {"model_ids": list(s.model_ids), "ensemble": s.ensemble if len(s.model_ids) > 1 else "none",
            "tta": s.tta, "overlap": s.overlap, "blend": s.blend, "precision": s.precision}


def write_parquet(path: str, rows: list[dict]) -> None:
    rows = sorted(rows, key=lambda r: r["image_id"])
    table = pa.Table.from_pylist([{name: row.get(name) for name in PREDICTIONS_SCHEMA.names} for row in rows],
                                 schema=PREDICTIONS_SCHEMA)
    buf = io.BytesIO()
    pq.write_table(table, buf)
    write_atomically(path, buf.getvalue())


def read_parquet(path: str) -> pa.Table:
    return pq.read_table(io.BytesIO(read_bytes(path)), use_threads=False)


def finish_row(layout: OutputLayout, row: dict, started: float, source_signature: str) -> dict:
    """Time the image and write its row: the last file of an image, which marks it done."""
    row = {**row, "seconds": time.time() - started, "source_signature": source_signature}
    write_json(layout.path(layout.row(row["image_id"])), row)
    Metrics.counter("tessera.predict", "images_predicted").inc()
    Metrics.counter("tessera.predict", "tiles_predicted").inc(row["tiles"])
    return row
