"""From per-tile scores to per-strip results: blended stitching, decisions, statistics, previews.

Pure numpy. A strip's result covers its output rows [a, b) at full width; a whole image is
its strips in order. Connected components are counted per class with
``scipy.ndimage.label`` (4-connectivity) strip by strip, merging labels that touch across
strip boundaries, so the count equals labelling the whole mask at once.
"""
from __future__ import annotations

import dataclasses
import io
from typing import Callable

import numpy as np
from scipy import ndimage

from pipelines.core import tiling
from pipelines.core.objects import UnionFind
from pipelines.core.pixels import to_rgb8
from pipelines.predict.decide import chosen
from pipelines.predict.plan import StripTask

PREVIEW_SIDE = 1024  # the overlay preview's longest side is at most this many pixels


@dataclasses.dataclass(frozen=True, eq=False)
class StripResult:
    image_id: str
    source: str
    height: int
    width: int
    strip: int
    strips: int
    rows: tuple[int, int]
    mask: np.ndarray                   # (o, W) uint8 class ids
    class_counts: tuple[int, ...]
    confidence_sum: float
    probabilities: np.ndarray | None   # (o, W, K) float16 when kept (float32 when a boundary model is decoded)
    preview_image: np.ndarray          # (po, pw, 3) uint8, every ``preview_step``-th row/column
    preview_mask: np.ndarray           # (po, pw) uint8
    tiles: int
    started: float
    seams: tuple[int, float, int] = (0, 0.0, 0)   # overlapped pixels, summed disagreement, class flips
    preview_seams: np.ndarray | None = None        # (cells, pw) uint8 seam heat from preview cell row ``a // step``
    confidence: np.ndarray | None = None           # (o, W) float16 of the chosen class, kept for --instances

    def to_bytes(self) -> bytes:
        arrays = {"mask": self.mask, "preview_image": self.preview_image, "preview_mask": self.preview_mask}
        for name in ("probabilities", "preview_seams", "confidence"):
            if getattr(self, name) is not None:
                arrays[name] = getattr(self, name)
        buf = io.BytesIO()
        np.savez(buf, **arrays)
        return buf.getvalue()

    def summary(self) -> dict:
        """Everything but the arrays (what travels through the shuffle beside a part file)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                if not isinstance(getattr(self, f.name), np.ndarray)
                and f.name not in ("probabilities", "preview_seams", "confidence")}

    @classmethod
    def from_parts(cls, summary: dict, data: bytes) -> "StripResult":
        with np.load(io.BytesIO(data)) as arrays:
            loaded = {k: arrays[k] for k in arrays.files}
        return cls(**summary, mask=loaded["mask"], probabilities=loaded.get("probabilities"),
                   preview_image=loaded["preview_image"], preview_mask=loaded["preview_mask"],
                   preview_seams=loaded.get("preview_seams"), confidence=loaded.get("confidence"))


def stitch_strip(task: StripTask, scores: np.ndarray, blend: str, seams: list | None = None) -> np.ndarray:
    """Blend the cores of ``task`` into its output rows: (b - a, W, K) float32.

    Disjoint cores (no overlap) are placed as they are; overlapping ones are blended, and
    (into ``seams``) how much they disagree where they overlap, in the strip's own rows:
    [pixels, summed disagreement, flips, per-pixel map].
    """
    top = min(y for y, _, _, _ in task.boxes)
    bottom = max(y + h for y, _, h, _ in task.boxes)
    a, b = task.rows
    if disjoint(task.boxes):
        pieces = ((y - top, x, h, w, score) for (y, x, h, w), score in zip(task.boxes, scores))
        return tiling.stitch(pieces, bottom - top, task.width)[a - top:b - top]
    stitcher = tiling.Stitcher(bottom - top, task.width, scores.shape[-1], mode=blend,
                               seams=(a - top, b - top, 0, task.width))
    for (y, x, h, w), score in zip(task.boxes, scores):
        stitcher.add(y - top, x, score[:h, :w])
    if seams is not None:
        seams[:] = [stitcher.seam_pixels, stitcher.seam_disagreement, stitcher.seam_flips, stitcher.seam_map]
    return stitcher.result()[a - top:b - top]


def seam_columns(pixels: int, disagreement: float, flips: int) -> dict:
    """The row's seam QA: mean disagreement (total variation of the class scores) and the
    fraction of class flips where neighbouring tiles overlap (None without overlap)."""
    if not pixels:
        return {"seam_disagreement": None, "seam_flip_fraction": None}
    return {"seam_disagreement": disagreement / pixels, "seam_flip_fraction": flips / pixels}


def seam_heat(seam_map: np.ndarray | None, a: int, c: int, step: int) -> np.ndarray | None:
    """A seam map at image pixel (a, c) pooled to the preview grid: each cell of ``step`` x
    ``step`` image pixels (cells start at multiples of ``step``) holds its largest
    disagreement, as uint8 of sqrt(disagreement) * 255 (small disagreements stay visible).
    Pieces of one image combine with ``np.maximum``."""
    if seam_map is None:
        return None
    h, w = seam_map.shape
    top, left = a % step, c % step
    rows, cols = -(-(top + h) // step), -(-(left + w) // step)
    padded = np.zeros((rows * step, cols * step), np.float32)
    padded[top:top + h, left:left + w] = seam_map
    pooled = padded.reshape(rows, step, cols, step).max(axis=(1, 3))
    return np.round(np.sqrt(np.clip(pooled, 0, 1)) * 255).astype(np.uint8)


def disjoint(boxes) -> bool:
    """Whether no two cores overlap (the grid's stride equals the core)."""
    ys, xs = sorted({b[0] for b in boxes}), sorted({b[1] for b in boxes})
    first = boxes[0]
    return all(b - a >= first[2] for a, b in zip(ys, ys[1:])) and all(b - a >= first[3] for a, b in zip(xs, xs[1:]))


def preview_step(height: int, width: int, side: int = PREVIEW_SIDE) -> int:
    return max(1, -(-max(height, width) // side))


def preview_rows(a: int, b: int, step: int) -> slice:
    """Local rows of [a, b) that fall on the preview grid (image rows divisible by ``step``)."""
    return slice((-a) % step, b - a, step)


def strip_result(task: StripTask, scores: np.ndarray, decide: Callable[[np.ndarray], np.ndarray],
                 blend: str, keep_probabilities: bool, keep_confidence: bool = False,
                 exact_probabilities: bool = False) -> StripResult:
    """``exact_probabilities``: keep them as float32 (what the decoder of a boundary model reads)."""
    seams = [0, 0.0, 0, None]
    stitched = stitch_strip(task, scores, blend, seams)
    mask = decide(stitched)
    classes = stitched.shape[-1]
    confidence = chosen(stitched, mask)
    step = preview_step(task.height, task.width)
    rows = preview_rows(*task.rows, step)
    return StripResult(
        task.image_id, task.source, task.height, task.width, task.strip, task.strips, task.rows,
        mask=mask,
        class_counts=tuple(int(c) for c in np.bincount(mask.ravel(), minlength=classes)[:classes]),
        confidence_sum=float(confidence.sum(dtype=np.float64)),
        probabilities=(stitched.astype(np.float32) if exact_probabilities
                       else stitched.astype(np.float16) if keep_probabilities else None),
        preview_image=to_rgb8(task.image_rows()[rows, ::step]),
        preview_mask=mask[rows, ::step],
        tiles=task.num_tiles, started=task.started, seams=tuple(seams[:3]),
        preview_seams=seam_heat(seams[3], task.rows[0], 0, step),
        confidence=confidence.astype(np.float16) if keep_confidence else None)


class ComponentCounter:
    """Connected components (4-connectivity) of every class over strips added top to bottom."""

    def __init__(self, classes: int):
        self.counts, self.merges = [0] * classes, [0] * classes
        self.unions = [UnionFind() for _ in range(classes)]
        self.previous: list[np.ndarray | None] = [None] * classes

    def add(self, mask: np.ndarray) -> None:
        if not len(mask):
            return
        for c in range(len(self.counts)):
            labels, n = ndimage.label(mask == c)
            labels = np.where(labels > 0, labels + self.counts[c], 0)
            if self.previous[c] is not None:
                touching = (self.previous[c] > 0) & (labels[0] > 0)
                pairs = set(zip(self.previous[c][touching].tolist(), labels[0][touching].tolist()))
                self.merges[c] += sum(self.unions[c].union(a, b) for a, b in sorted(pairs))
            self.counts[c] += n
            self.previous[c] = labels[-1]

    def result(self) -> list[int]:
        return [n - m for n, m in zip(self.counts, self.merges)]

