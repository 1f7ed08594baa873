"""The prediction directory: its layout, atomic writers, per-image outputs and the Parquet row.

::

    pred/
      masks/<image_id>.png            class ids (uint8 grayscale); 0/255 with --binary-255
      probabilities/<image_id>.npy    float16 (H, W, K), with --save-probabilities
      overlays/<image_id>.png         preview (long side <= 1024 px): classes coloured over the image
      rows/<settings>/<image_id>.json the image's Parquet row; written last = the image is done
      rejected/<sha1(source)>.json    one rejected input (source, reason, detail)
      _tmp/<settings>/<image_id>/     strip parts of images predicted in several strips
      predictions.parquet, rejected.jsonl, config.json, _SUCCESS
      (sharded runs: predictions-SSSSS-of-NNNNN.parquet, _SUCCESS-SSSSS-of-NNNNN, merged when all are done)

``<settings>`` is a fingerprint of everything that changes outputs (models, TTA, ensemble,
overlap, blending, mask encoding, probabilities), so a rerun with other settings
recomputes instead of mixing. Every file is written to a temporary name and renamed.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import json
import struct
import uuid
import zlib
from typing import Callable, Iterable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems

from pipelines.predict.stitch import ComponentCounter, StripResult
from pipelines.beam.files import read_bytes, read_json  # noqa: F401 (part of this module's reading API)
from pipelines.core.pixels import PNG_SIGNATURE, png_chunk
from schemas.layout import PREDICTIONS_SCHEMA

PALETTE = np.array([[0, 0, 0], [230, 25, 75], [60, 180, 75], [0, 130, 200], [255, 225, 25], [245, 130, 48],
                    [145, 30, 180], [70, 240, 240], [240, 50, 230], [210, 245, 60]], np.uint8)


@dataclasses.dataclass(frozen=True)
class OutputSettings:
    """What changes the per-image outputs (and therefore the settings fingerprint)."""

    task: str
    class_names: tuple[str, ...]
    model_ids: tuple[str, ...]
    ensemble: str = "mean"
    tta: str = "none"
    overlap: float = 0.0
    blend: str = "gaussian"
    binary_255: bool = False
    save_probabilities: bool = False

    def fingerprint(self) -> str:
        text = json.dumps(dataclasses.asdict(self), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclasses.dataclass(frozen=True)
class OutputLayout:
    root: str
    settings: OutputSettings

    def path(self, relative: str) -> str:
        return f"{self.root.rstrip('/')}/{relative}"

    def mask(self, image_id: str) -> str:
        return f"masks/{image_id}.png"

    def overlay(self, image_id: str) -> str:
        return f"overlays/{image_id}.png"

    def probabilities(self, image_id: str) -> str:
        return f"probabilities/{image_id}.npy"

    def row(self, image_id: str) -> str:
        return f"rows/{self.settings.fingerprint()}/{image_id}.json"

    def part(self, image_id: str, strip: int, strips: int) -> str:
        return f"_tmp/{self.settings.fingerprint()}/{image_id}/strip-{strip:05d}-of-{strips:05d}.npz"

    @staticmethod
    def rejected(source: str) -> str:
        return f"rejected/{hashlib.sha1(source.encode()).hexdigest()[:20]}.json"

    def outputs(self, image_id: str) -> list[str]:
        """Relative paths an image must have, besides its row, to count as done."""
        if self.settings.task != "segmentation":
            return []
        paths = [self.mask(image_id), self.overlay(image_id)]
        return paths + ([self.probabilities(image_id)] if self.settings.save_probabilities else [])


@contextlib.contextmanager
def atomic_create(path: str) -> Iterator:
    """A writable handle whose content appears at ``path`` only once complete."""
    temporary = f"{path}.tmp-{uuid.uuid4().hex[:12]}"
    handle = FileSystems.create(temporary)
    try:
        yield handle
    except BaseException:
        handle.close()
        FileSystems.delete([temporary])
        raise
    handle.close()
    FileSystems.rename([temporary], [path])


def write_bytes(path: str, data: bytes) -> None:
    with atomic_create(path) as handle:
        handle.write(data)


def delete_if_present(paths: list[str]) -> None:
    present = [p for p in paths if FileSystems.exists(p)]
    if present:
        FileSystems.delete(present)


def write_json(path: str, value) -> None:
    write_bytes(path, (json.dumps(value, indent=1, sort_keys=True) + "\n").encode("utf-8"))


def write_png_rows(handle, width: int, height: int, row_blocks: Iterable[np.ndarray], level: int = 6) -> None:
    """An 8-bit PNG streamed block by block: (rows, width) grayscale or (rows, width, 3) RGB, filter 0."""
    header, written, packer = None, 0, zlib.compressobj(level)
    for block in row_blocks:
        if header is None:
            colour = 2 if block.ndim == 3 else 0
            header = (block.shape[1:], colour)
            handle.write(PNG_SIGNATURE + png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, colour, 0, 0, 0)))
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


def npy_header(shape: tuple[int, ...], dtype) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)),
                                               "fortran_order": False, "shape": shape})
    return buf.getvalue()


def overlay(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Classes > 0 tinted over the (h, w, 3) uint8 preview (half image, half class colour)."""
    out = image.copy()
    tinted = mask > 0
    colours = PALETTE[np.minimum(mask[tinted], len(PALETTE) - 1)]
    out[tinted] = image[tinted] // 2 + colours // 2
    return out


def write_image_outputs(layout: OutputLayout, strips: Callable[[], Iterator[StripResult]]) -> dict:
    """Write mask, overlay (and probabilities) of one image from its strips; return its row.

    ``strips()`` yields the image's strips in order and may be called twice (mask pass,
    probabilities pass); multi-strip images load one part at a time, so a large image is
    never whole in memory.
    """
    s, first = layout.settings, None
    counts, confidence, tiles, previews, masks = np.zeros(len(s.class_names), np.int64), 0.0, 0, [], []
    components = ComponentCounter(len(s.class_names))

    def mask_rows() -> Iterator[np.ndarray]:
        nonlocal counts, confidence, tiles
        for r in strips():
            counts += r.class_counts
            confidence += r.confidence_sum
            tiles += r.tiles
            previews.append(r.preview_image)
            masks.append(r.preview_mask)
            components.add(r.mask)
            yield r.mask * np.uint8(255 if s.binary_255 else 1)

    first = next(strips())
    image_id, height, width = first.image_id, first.height, first.width
    with atomic_create(layout.path(layout.mask(image_id))) as handle:
        write_png_rows(handle, width, height, mask_rows())
    if s.save_probabilities:
        with atomic_create(layout.path(layout.probabilities(image_id))) as handle:
            handle.write(npy_header((height, width, len(s.class_names)), np.float16))
            for r in strips():
                handle.write(np.ascontiguousarray(r.probabilities, "<f2").tobytes())
    tinted = overlay(np.concatenate(previews), np.concatenate(masks))
    with atomic_create(layout.path(layout.overlay(image_id))) as handle:
        write_png_rows(handle, tinted.shape[1], tinted.shape[0], [tinted], level=1)
    pixels, per_class = height * width, components.result()
    return {
        "image_id": image_id, "source": first.source, "task": s.task, "height": height, "width": width,
        "class_names": list(s.class_names), "class_fractions": [float(c) / pixels for c in counts],
        "class_components": per_class, "components": int(sum(per_class[1:])),
        "mean_confidence": confidence / pixels, "label": None, "probabilities": None,
        "mask_path": layout.mask(image_id), "overlay_path": layout.overlay(image_id),
        "probabilities_path": layout.probabilities(image_id) if s.save_probabilities else None,
        "tiles": tiles, "strips": first.strips, **_common(s),
    }


def classification_row(settings: OutputSettings, image_id: str, source: str, height: int, width: int,
                       scores: np.ndarray, decision: int, tiles: int = 1) -> dict:
    return {
        "image_id": image_id, "source": source, "task": settings.task, "height": height, "width": width,
        "class_names": list(settings.class_names), "class_fractions": None, "class_components": None,
        "components": None, "mean_confidence": float(scores[decision]),
        "label": settings.class_names[decision], "probabilities": [float(p) for p in scores],
        "mask_path": None, "overlay_path": None, "probabilities_path": None,
        "tiles": tiles, "strips": 1, **_common(settings),
    }


def _common(s: OutputSettings) -> dict:
    return {"model_ids": list(s.model_ids), "ensemble": s.ensemble if len(s.model_ids) > 1 else "none",
            "tta": s.tta, "overlap": s.overlap, "blend": s.blend}


def write_parquet(path: str, rows: list[dict]) -> None:
    rows = sorted(rows, key=lambda r: r["image_id"])
    table = pa.Table.from_pylist([{name: row.get(name) for name in PREDICTIONS_SCHEMA.names} for row in rows],
                                 schema=PREDICTIONS_SCHEMA)
    buf = io.BytesIO()
    pq.write_table(table, buf)
    write_bytes(path, buf.getvalue())


def read_parquet(path: str) -> pa.Table:
    return pq.read_table(io.BytesIO(read_bytes(path)), use_threads=False)
