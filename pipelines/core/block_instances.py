"""Instances of a large image, block by block: each block decodes its window (the block plus
a context *halo*, clipped at the image border) with ``schemas.decoder.decode`` and keeps
the objects it *owns*: those whose anchor (first pixel in raster order) lies in the block.
Every object of the whole image has one anchor, so it is owned by exactly one block, and
the union equals the whole-image decoding up to renumbering (StarDist's
``predict_instances_big``).

Why a window decodes an object as the whole image does (``schemas.decoder``): decoding is
local to a *region* (a connected component of the foreground for the seeded / partition
modes, of one class for components / watershed), plus ``reach`` px of expansion. A region that touches
a window edge other than the image border may continue outside: it is *cut*, and its
objects may differ (touching objects form one region: the halo must hold the group). With ``e = reach`` and ``d`` the distance of a pixel to the nearest cut
region or outside pixel, a block is decoded exactly when

- every pixel of the block has ``d > e`` (its label is decided by exact regions only), and
- every object meeting the block has its pre-expansion pixels at ``d > 2e`` (so all of its
  pixels are decided inside the window); without a size filter (``min_size`` <= 1) every
  foreground pixel is labelled whichever object it joins, so there only the distance to the
  window's edge counts, and the object must not lie in a cut region.

Otherwise the halo is too small and ``HaloTooSmall`` says so: never a silent wrong result.
A halo of at least E + 3e, E the largest region's extent (its bounding box's longer side),
always passes (2E + 3e with a size filter and e > 0).

Ids (deterministic, uint32, 1..N): blocks own ``counts[b]`` objects; ``offsets`` is their
prefix sum in block order; an object's id is ``offsets[owner] + rank + 1``, ``rank`` the
position of its anchor among its owner's anchors (raster order). A block's chunk also holds
pixels of objects owned by neighbours: it maps them through their owners' anchors
(``final_ids``). Pure numpy / scipy.
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np
from scipy import ndimage

from schemas.decoder import (
    CLASS_MODES,
    MAX_OBJECTS,
    DecoderParams,
    anchors,
    class_components,
    decode,
    finished,
    grown,
)

Reader = Callable[[int, int, int, int], np.ndarray]   # (y0, y1, x0, x1) -> the decoder's input there


class HaloTooSmall(ValueError):
    """An object (with the region it is decoded from) does not fit in a block's halo."""


@dataclasses.dataclass(frozen=True)
class BlockDecoding:
    """A block's window decoded: labels 1..n in the window (raster order of their anchors)."""

    labels: np.ndarray            # (h, w) uint32, the window
    origin: tuple[int, int]       # the window's top-left pixel in the image
    rows: tuple[int, int]         # the block, image coordinates [a, b)
    cols: tuple[int, int]
    anchors: np.ndarray           # (n, 2) int64 image (y, x) of labels 1..n

    @property
    def inner(self) -> tuple[slice, slice]:
        """The block inside the window."""
        (a, b), (c, d), (y0, x0) = self.rows, self.cols, self.origin
        return slice(a - y0, b - y0), slice(c - x0, d - x0)

    def owned(self) -> np.ndarray:
        """Window ids (ascending = raster order of anchors) of the objects whose anchor is in the block."""
        (a, b), (c, d) = self.rows, self.cols
        y, x = self.anchors[:, 0], self.anchors[:, 1]
        return (np.flatnonzero((y >= a) & (y < b) & (x >= c) & (x < d)) + 1).astype(np.int64)


def window(rows: tuple[int, int], cols: tuple[int, int], halo: int, height: int, width: int) -> tuple[int, ...]:
    """(y0, y1, x0, x1): the block grown by ``halo`` px, clipped at the image border."""
    (a, b), (c, d) = rows, cols
    return max(0, a - halo), min(height, b + halo), max(0, c - halo), min(width, d + halo)


def check_halo(params: DecoderParams, halo: int) -> None:
    """The halo must exceed three times the decoder's reach: an object's own expansion, and its
    neighbours' pixels within the expansion of its pixels (see the module docstring)."""
    if halo <= 3 * params.reach:
        raise ValueError(f"--halo {halo} px must exceed 3 x the decoder's expansion ({params.reach} px): "
                         f"raise --halo above the largest object's extent + {3 * params.reach}")


def decode_block(params: DecoderParams, read: Reader, rows: tuple[int, int], cols: tuple[int, int], halo: int,
                 height: int, width: int, name: str = "a block") -> BlockDecoding:
    """Decode the block's window and check that the halo holds every object meeting the block."""
    y0, y1, x0, x1 = window(rows, cols, halo, height, width)
    data = read(y0, y1, x0, x1)
    unfinished = None if params.mode in CLASS_MODES else grown(params, data)
    labels = decode(params, classes=data) if unfinished is None else finished(params, unfinished)
    found = BlockDecoding(labels, (y0, x0), rows, cols, anchors(labels) + np.array([y0, x0], np.int64))
    cut = (y0 > 0, y1 < height, x0 > 0, x1 < width)           # window edges that are not the image border
    if any(cut):
        own = None        # the objects' own pixels before a partition's expansion
        if params.reach:
            own = finished(dataclasses.replace(params, mode="seeded"), unfinished) > 0
        _check(params, data, found, cut, halo, name, own)
    return found


def _regions(params: DecoderParams, data: np.ndarray) -> np.ndarray:
    """What decoding is local to: class components, or foreground components (as ``decode`` thresholds)."""
    structure = ndimage.generate_binary_structure(2, 1 if params.connectivity == 4 else 2)
    if params.mode in CLASS_MODES:
        return class_components(data, structure)
    foreground = (np.asarray(data[..., 1], np.float32) + np.asarray(data[..., 2], np.float32)) >= params.foreground
    return ndimage.label(foreground, structure)[0]


def _check(params: DecoderParams, data: np.ndarray, found: BlockDecoding, cut: tuple[bool, ...], halo: int,
           name: str, own: np.ndarray | None) -> None:
    regions = _regions(params, data)
    top, bottom, left, right = cut
    edges = [e for e, is_cut in zip((regions[0], regions[-1], regions[:, 0], regions[:, -1]), cut) if is_cut]
    cut_ids = np.unique(np.concatenate(edges))
    cut_ids = cut_ids[cut_ids > 0]
    reach = params.reach
    if not len(cut_ids) and not reach:
        return
    cut_pixels = np.isin(regions, cut_ids)
    inner = found.inner
    meeting = np.unique(found.labels[inner])
    meeting = meeting[meeting > 0]
    if not reach:      # d > 0: no pixel of the block, nor of an object meeting it, in a cut region
        ok = not cut_pixels[inner].any() and not np.isin(meeting, found.labels[cut_pixels]).any()
    else:
        pads = ((int(top), int(bottom)), (int(left), int(right)))
        inside = (slice(int(top), regions.shape[0] + int(top)), slice(int(left), regions.shape[1] + int(left)))
        to_any = ndimage.distance_transform_edt(~np.pad(cut_pixels, pads, constant_values=True))[inside]
        ok = to_any[inner].min() > reach
        if ok and len(meeting):
            own_labels = np.where(own, found.labels, 0)
            # without a size filter every foreground pixel is labelled, whichever object it joins, so
            # cut neighbours cannot move an exact object's expansion; only the window's edge can
            to_edge = to_any if params.min_size > 1 else ndimage.distance_transform_edt(
                np.pad(np.ones_like(cut_pixels), pads, constant_values=False))[inside]
            ok = bool(np.all(np.asarray(ndimage.minimum(to_any, own_labels, meeting)) > 0)
                      and np.all(np.asarray(ndimage.minimum(to_edge, own_labels, meeting)) > 2 * reach))
    if not ok:
        sizes = ndimage.find_objects(np.where(np.isin(regions, cut_ids), regions, 0))
        extent = max(((s[0].stop - s[0].start) * (s[1].stop - s[1].start), s[0].stop - s[0].start,
                      s[1].stop - s[1].start) for s in sizes if s is not None) if len(cut_ids) else (0, 0, 0)
        (a, b), (c, d) = found.rows, found.cols
        raise HaloTooSmall(
            f"{name} (rows {a}:{b}, cols {c}:{d}): an object near it, with the region it is decoded from "
            f"(at least {extent[1]} x {extent[2]} px), is cut by its halo of {halo} px"
            + (f" (the decoder also expands objects by {reach} px)" if reach else "")
            + f": raise --halo above the extent of the largest object with the objects touching it"
            + (f", + {3 * reach}" if reach else ""))


def offsets_of(counts: np.ndarray) -> np.ndarray:
    """The first id - 1 of each block's owned objects (a prefix sum in block order)."""
    counts = np.asarray(counts, np.int64)
    total = int(counts.sum())
    if total > MAX_OBJECTS:
        raise ValueError(f"{total} objects do not fit uint32 instance ids")
    return np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)


def owner_of(points: np.ndarray, side: int, width: int) -> np.ndarray:
    """The block (row-major on a grid of ``side`` px) holding each (y, x) of ``points``."""
    columns = -(-width // side)
    return (points[:, 0] // side) * columns + points[:, 1] // side


def anchor_keys(points: np.ndarray, width: int) -> np.ndarray:
    """Raster-order keys of (y, x) points (ascending keys = raster order)."""
    return points[:, 0].astype(np.int64) * width + points[:, 1]


def final_ids(found: BlockDecoding, side: int, width: int, offsets: dict[int, int],
              owner_keys: dict[int, np.ndarray]) -> np.ndarray:
    """A lookup from the window's ids to final ids for every object meeting the block (0 elsewhere).
    ``owner_keys[b]``: the sorted ``anchor_keys`` of block b's owned objects; ``offsets[b]`` its offset."""
    inner = found.labels[found.inner]
    meeting = np.unique(inner)
    meeting = meeting[meeting > 0]
    lookup = np.zeros(len(found.anchors) + 1, np.uint32)
    points = found.anchors[meeting - 1]
    owners, keys = owner_of(points, side, width), anchor_keys(points, width)
    for owner in np.unique(owners):
        mine = owners == owner
        listed = owner_keys[int(owner)]
        rank = np.searchsorted(listed, keys[mine])
        if np.any(rank >= len(listed)) or np.any(listed[np.minimum(rank, len(listed) - 1)] != keys[mine]):
            raise RuntimeError(f"block {int(owner)} does not list an object this block sees anchored in it: "
                               "the decoder inputs changed between the two passes; rerun from scratch")
        lookup[meeting[mine]] = offsets[int(owner)] + rank + 1
    return lookup


def block_labels(found: BlockDecoding, lookup: np.ndarray) -> np.ndarray:
    """The block's chunk of the instance image: final uint32 ids."""
    return lookup[found.labels[found.inner]]


def blockwise_labels(params: DecoderParams, read: Reader, height: int, width: int, side: int,
                     halo: int) -> np.ndarray:
    """The whole instance image decoded block by block in two passes (what the pipeline does
    over many workers; here in memory, for tests and small images)."""
    check_halo(params, halo)
    cells = [((a, min(a + side, height)), (c, min(c + side, width)))
             for a in range(0, height, side) for c in range(0, width, side)]
    decoded = [decode_block(params, read, rows, cols, halo, height, width, f"block {i}")
               for i, (rows, cols) in enumerate(cells)]
    keys = {i: anchor_keys(f.anchors[f.owned() - 1], width) for i, f in enumerate(decoded)}
    offsets = dict(enumerate(offsets_of([len(keys[i]) for i in range(len(cells))]).tolist()))
    out = np.zeros((height, width), np.uint32)
    for found, (rows, cols) in zip(decoded, cells):
        out[rows[0]:rows[1], cols[0]:cols[1]] = block_labels(found, final_ids(found, side, width, offsets, keys))
    return out
