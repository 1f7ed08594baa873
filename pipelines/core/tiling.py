"""Overlap-tile geometry (U-Net, Ronneberger et al. 2015) as pure numpy functions.

An image (H, W[, C]) is cut into *cores* of ``core`` x ``core`` pixels on a grid; each
tile adds ``margin`` pixels of context on every side, so a tile is (core + 2 margin)^2.
Context beyond the border is mirrored by reflection without edge repetition (like
``np.pad(mode="reflect")``), repeated as often as needed, so images smaller than a tile
and margins larger than the image work. Predictions keep only the core and are stitched
back with :func:`stitch` (disjoint cores) or :class:`Stitcher` (overlapping cores, blended).
"""
from __future__ import annotations

from typing import Iterable, Iterator

import numpy as np

Box = tuple[int, int, int, int]  # (y, x, h, w) of a core in source pixels


def mirror_index(index: np.ndarray, n: int) -> np.ndarray:
    """Map any integer coordinates into [0, n) by repeated reflection without edge repetition."""
    if n < 1:
        raise ValueError(f"axis length must be >= 1, got {n}")
    index = np.asarray(index)
    if n == 1:
        return np.zeros_like(index)
    period = 2 * (n - 1)
    folded = np.mod(index, period)
    return np.where(folded >= n, period - folded, folded)


def axis_starts(length: int, core: int, stride: int) -> list[int]:
    """Where the cores of one axis start (see :func:`core_grid`)."""
    if stride == core:
        return list(range(0, length, core))
    last = max(length - core, 0)
    starts = list(range(0, last, stride))
    return starts + [last]


def core_grid(height: int, width: int, core: int, stride: int | None = None) -> list[Box]:
    """The (y, x, h, w) of every core, row-major, covering the whole image.

    ``stride == core`` (default): disjoint cores, every pixel in exactly one core; cores at
    the bottom/right edge are partial (h or w < core).
    ``stride < core``: overlapping cores for blended prediction; the last row/column is
    shifted back so it ends exactly at the border (clamped at 0), so every core is full-size
    unless the image itself is smaller than ``core``.
    """
    if height < 1 or width < 1:
        raise ValueError(f"image must be at least 1x1, got {height}x{width}")
    if core < 1:
        raise ValueError(f"core must be >= 1, got {core}")
    stride = core if stride is None else stride
    if not 1 <= stride <= core:
        raise ValueError(f"stride must be in [1, core={core}] so the grid covers the image, got {stride}")
    ys = axis_starts(height, core, stride)
    xs = axis_starts(width, core, stride)
    return [(y, x, min(core, height - y), min(core, width - x)) for y in ys for x in xs]


def _window(start: int, core: int, margin: int) -> np.ndarray:
    """Source coordinates of a tile's rows (or columns), before mirroring."""
    return np.arange(start - margin, start + core + margin)


def cut_tile(image: np.ndarray, y: int, x: int, core: int, margin: int) -> np.ndarray:
    """The (core+2m, core+2m, ...) tile around the core at (y, x), mirrored outside the image."""
    if margin < 0:
        raise ValueError(f"margin must be >= 0, got {margin}")
    height, width = image.shape[:2]
    if y - margin >= 0 and x - margin >= 0 and y + core + margin <= height and x + core + margin <= width:
        return image[y - margin:y + core + margin, x - margin:x + core + margin].copy()
    rows = mirror_index(_window(y, core, margin), height)
    cols = mirror_index(_window(x, core, margin), width)
    return image[np.ix_(rows, cols)]


def valid_region(y: int, x: int, core: int, margin: int, height: int, width: int) -> tuple[slice, slice]:
    """Slices (in tile coordinates) of the part of a tile whose source pixels lie in the image."""
    size = core + 2 * margin
    row0, col0 = y - margin, x - margin
    rows = slice(min(max(0, -row0), size), max(0, min(size, height - row0)))
    cols = slice(min(max(0, -col0), size), max(0, min(size, width - col0)))
    return rows, cols


def cut_mask_tile(mask: np.ndarray, y: int, x: int, core: int, margin: int, ignore: int = 255) -> np.ndarray:
    """Like :func:`cut_tile`, but every pixel whose source lies outside the image is ``ignore``."""
    tile = cut_tile(mask, y, x, core, margin)
    rows, cols = valid_region(y, x, core, margin, mask.shape[0], mask.shape[1])
    out = np.full_like(tile, ignore)
    out[rows, cols] = tile[rows, cols]
    return out


def source_window(boxes: list[Box], core: int, margin: int, height: int, width: int) -> tuple[int, int, int, int]:
    """(y0, y1, x0, x1): the source rows and columns that the tiles of ``boxes`` read
    (mirroring at the true border folds indices back inside, so it stays within the image)."""
    top, left = min(b[0] for b in boxes), min(b[1] for b in boxes)
    ys = mirror_index(np.arange(top - margin, max(b[0] for b in boxes) + core + margin), height)
    xs = mirror_index(np.arange(left - margin, max(b[1] for b in boxes) + core + margin), width)
    return int(ys.min()), int(ys.max()) + 1, int(xs.min()), int(xs.max()) + 1


def cut_from_window(window: np.ndarray, origin: tuple[int, int], y: int, x: int, core: int, margin: int,
                    height: int, width: int) -> np.ndarray:
    """The tile of the core at (y, x) of an H x W image, cut from a ``window`` of it read at
    ``origin`` (which holds :func:`source_window`): equal to ``cut_tile`` on the whole image."""
    rows = mirror_index(_window(y, core, margin), height) - origin[0]
    cols = mirror_index(_window(x, core, margin), width) - origin[1]
    return window[np.ix_(rows, cols)]


def cut_tiles(image: np.ndarray, core: int, margin: int, stride: int | None = None) -> Iterator[tuple[Box, np.ndarray]]:
    """Yield ((y, x, h, w), tile) for every core of ``image``."""
    for box in core_grid(image.shape[0], image.shape[1], core, stride):
        yield box, cut_tile(image, box[0], box[1], core, margin)


def stitch(
    pieces: Iterable[tuple[int, int, int, int, np.ndarray]],
    height: int,
    width: int,
    channels: int | None = None,
    dtype=None,
) -> np.ndarray:
    """Reassemble disjoint cores (y, x, h, w, array with at least h x w) into an image.

    The output is (H, W) when ``channels`` is None and the pieces are 2-D, else (H, W, C);
    its dtype is ``dtype`` or that of the first piece. Raises if a pixel is left uncovered.
    """
    out = None
    covered = np.zeros((height, width), dtype=bool)
    for y, x, h, w, array in pieces:
        if out is None:
            trailing = array.shape[2:] if channels is None else (channels,)
            out = np.zeros((height, width, *trailing), dtype=dtype or array.dtype)
        if y < 0 or x < 0 or y + h > height or x + w > width:
            raise ValueError(f"core ({y}, {x}, {h}, {w}) lies outside the {height}x{width} image")
        out[y:y + h, x:x + w] = array[:h, :w].reshape((h, w) + out.shape[2:])
        covered[y:y + h, x:x + w] = True
    if out is None or not covered.all():
        raise ValueError(f"pieces leave {(~covered).sum()} of {height * width} pixels uncovered")
    return out


def blend_weights(size: int | tuple[int, int], mode: str = "gaussian") -> np.ndarray:
    """Strictly positive float32 (h, w) weights, 1 at the centre, falling towards the edges.

    ``gaussian``: sigma = size / 8 per axis (as nnU-Net); ``linear``: a tent;
    ``constant``: all ones.
    """
    h, w = (size, size) if isinstance(size, (int, np.integer)) else size

    def axis(n: int) -> np.ndarray:
        i = np.arange(n, dtype=np.float64)
        if mode == "gaussian":
            return np.exp(-0.5 * ((i - (n - 1) / 2) / (n / 8)) ** 2)
        if mode == "linear":
            tent = np.minimum(i + 1, n - i)
            return tent / tent.max()
        if mode == "constant":
            return np.ones(n)
        raise ValueError(f"blend mode must be gaussian, linear or constant, got {mode!r}")

    weights = np.outer(axis(h), axis(w))
    return (weights / weights.max()).astype(np.float32)


class Stitcher:
    """Weighted mean of (possibly overlapping) core predictions over a (H, W[, C]) image.

    Keeps a running weighted mean (float32) and the summed weights, so a pixel covered once
    is an exact copy of its prediction, and identical predictions stay exactly identical.
    """

    def __init__(self, height: int, width: int, channels: int | None = None, mode: str = "gaussian",
                 seams: tuple[int, int, int, int] | None = None):
        shape = (height, width) if channels is None else (height, width, channels)
        self.mean = np.zeros(shape, dtype=np.float32)
        self.weight = np.zeros((height, width), dtype=np.float32)
        self.mode = mode
        blend_weights(1, mode)  # validate the mode now, not at the first add
        # Seam QA inside the region [y0, y1) x [x0, x1): where a core lands on pixels already
        # predicted, how far its class scores are from theirs (total variation) and whether
        # the decided class flips; ``seam_map`` keeps each pixel's largest disagreement.
        self.seams = seams
        self.seam_pixels, self.seam_disagreement, self.seam_flips = 0, 0.0, 0
        self.seam_map = None if seams is None else np.zeros((seams[1] - seams[0], seams[3] - seams[2]), np.float32)

    def add(self, y: int, x: int, array: np.ndarray) -> None:
        h, w = array.shape[:2]
        if y < 0 or x < 0 or y + h > self.weight.shape[0] or x + w > self.weight.shape[1]:
            raise ValueError(f"core ({y}, {x}, {h}, {w}) lies outside the {self.weight.shape} image")
        if array.shape[2:] != self.mean.shape[2:]:
            raise ValueError(f"expected trailing shape {self.mean.shape[2:]}, got {array.shape[2:]}")
        new = blend_weights((h, w), self.mode)
        if self.seams is not None and self.mean.ndim == 3:
            self._measure_seams(y, x, array)
        total = self.weight[y:y + h, x:x + w] + new
        share = new / total
        if self.mean.ndim == 3:
            share = share[..., None]
        region = self.mean[y:y + h, x:x + w]
        region += share * (array.astype(np.float32) - region)
        self.weight[y:y + h, x:x + w] = total

    def _measure_seams(self, y: int, x: int, array: np.ndarray) -> None:
        y0, y1, x0, x1 = self.seams
        h, w = array.shape[:2]
        ry, rx = slice(max(y, y0), min(y + h, y1)), slice(max(x, x0), min(x + w, x1))
        if ry.start >= ry.stop or rx.start >= rx.stop:
            return
        seen = self.weight[ry, rx] > 0
        if not seen.any():
            return
        before = self.mean[ry, rx][seen]
        now = array[ry.start - y:ry.stop - y, rx.start - x:rx.stop - x].astype(np.float32)[seen]
        disagreement = 0.5 * np.abs(now - before).sum(-1)
        self.seam_pixels += int(seen.sum())
        self.seam_disagreement += float(disagreement.sum(dtype=np.float64))
        self.seam_flips += int((now.argmax(-1) != before.argmax(-1)).sum())
        here = self.seam_map[ry.start - y0:ry.stop - y0, rx.start - x0:rx.stop - x0]
        here[seen] = np.maximum(here[seen], disagreement)

    def result(self) -> np.ndarray:
        if not (self.weight > 0).all():
            raise ValueError(f"{(self.weight == 0).sum()} pixels received no prediction")
        return self.mean
