"""Blocks of a large image: independent squares of its output, each predicted from a region read.

The image keeps its own core grid (origin 0, 0, stride S). A block covers output pixels
[a, b) x [c, d) on a grid of ``side`` pixels; it computes every tile whose core meets it
(tiles straddling a block border are computed by both neighbours), blends their cores over
their joint extent and keeps its own square. Each output pixel is blended from exactly the
tiles covering it, in grid order, as the whole-image path blends it: the union of the
blocks is the whole-image result, bit for bit. A block reads only the source window its
tiles need: its extent plus the margin, mirrored at the true image border only.

Memory per block (bytes; E = extent side, side = block side, K classes, C channels of
``itemsize`` bytes, T tile, B batch): 3 (E + 2M)^2 C itemsize window pixels (as read, normalised,
and the next block's, read before this one's batch is predicted),
n_tiles core^2 K 4 tile predictions, E^2 (K + 1) 4 blending, side^2 (13 + 2K) outputs and
seam map, B T^2 (2 C itemsize + 3 K 4) one batch. With instances (a decoder), decoding the
block's window (side + 2 halo)^2 ``plan.instance_bytes`` runs in a later stage: the larger of
the two counts. ``block_side`` picks the largest multiple of the core that fits
``--memory-limit-mb``, whatever the image's size.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from pipelines.core import tiling
from pipelines.predict.plan import Geometry, instance_bytes
from pipelines.predict.stitch import disjoint

Box = tiling.Box


@dataclasses.dataclass(frozen=True)
class Block:
    index: int
    count: int
    rows: tuple[int, int]    # output rows [a, b)
    cols: tuple[int, int]    # output columns [c, d)


def plan_blocks(height: int, width: int, side: int) -> list[Block]:
    """Blocks of ``side`` pixels over an H x W output, row-major (the last ones smaller)."""
    cells = [((a, min(a + side, height)), (c, min(c + side, width)))
             for a in range(0, height, side) for c in range(0, width, side)]
    return [Block(i, len(cells), rows, cols) for i, (rows, cols) in enumerate(cells)]


DEFAULT_HALO = 128    # px of context around a block decoded for instances (--halo)


def block_cost(side: int, g: Geometry, halo: int = DEFAULT_HALO) -> int:
    """Bytes of predicting a block; with instances, or of decoding its window (block + halo),
    whichever is more (they run in different stages)."""
    decoding = (side + 2 * halo) ** 2 * instance_bytes(g) if g.instances else 0
    return max(decoding, _prediction_cost(side, g))


def _prediction_cost(side: int, g: Geometry) -> int:
    extent = side + 2 * g.core            # cores reaching in from both neighbours
    tiles = (-(-extent // g.stride)) ** 2
    k = g.classes
    return (3 * (extent + 2 * g.margin) ** 2 * g.channels * g.itemsize + tiles * g.core ** 2 * k * 4
            + extent ** 2 * (k + 1) * 4 + side ** 2 * (13 + 2 * k)
            + g.batch_size * g.tile ** 2 * (2 * g.channels * g.itemsize + 3 * k * 4))


def refusal(g: Geometry, limit_bytes: int, halo: int = DEFAULT_HALO) -> str | None:
    """Why no block fits the bound (even one core), with the remedy; None when one does."""
    need = block_cost(g.core, g, halo)
    if need <= limit_bytes:
        return None
    return (f"even a block of one core ({g.core} px) needs about {need / 2**20:.0f} MiB; raise --memory-limit-mb "
            f"above {limit_bytes / 2**20:.0f}" + (f" (or lower --halo, {halo} px)" if g.instances else ""))


def block_side(g: Geometry, limit_bytes: int, largest: int = 1 << 14, halo: int = DEFAULT_HALO) -> int:
    """The largest multiple of the core (at most ``largest``) whose block fits the bound."""
    side, refused = g.core, refusal(g, limit_bytes, halo)
    if refused:
        raise ValueError(refused)
    while side + g.core <= largest and block_cost(side + g.core, g, halo) <= limit_bytes:
        side += g.core
    return side


def block_boxes(block: Block, height: int, width: int, g: Geometry) -> list[Box]:
    """The image's core boxes (grid order) whose cores meet the block."""
    (a, b), (c, d) = block.rows, block.cols
    ys = [y for y in tiling.axis_starts(height, g.core, g.stride) if a - g.core < y < b]
    xs = [x for x in tiling.axis_starts(width, g.core, g.stride) if c - g.core < x < d]
    return [(y, x, min(g.core, height - y), min(g.core, width - x)) for y in ys for x in xs]


def stitch_block(block: Block, boxes: list[Box], scores: np.ndarray, blend: str,
                 seams: list | None = None) -> np.ndarray:
    """The block's own (b - a, d - c, K) float32 output from the scores of its tiles (and, in
    ``seams``, how much overlapping tiles disagree inside the block)."""
    top, left = min(b[0] for b in boxes), min(b[1] for b in boxes)
    bottom = max(y + h for y, _, h, _ in boxes)
    right = max(x + w for _, x, _, w in boxes)
    (a, b), (c, d) = block.rows, block.cols
    if disjoint(boxes):
        pieces = ((y - top, x - left, h, w, s) for (y, x, h, w), s in zip(boxes, scores))
        full = tiling.stitch(pieces, bottom - top, right - left)
    else:
        stitcher = tiling.Stitcher(bottom - top, right - left, scores.shape[-1], mode=blend,
                                   seams=(a - top, b - top, c - left, d - left))
        for (y, x, h, w), s in zip(boxes, scores):
            stitcher.add(y - top, x - left, s[:h, :w])
        full = stitcher.result()
        if seams is not None:
            seams[:] = [stitcher.seam_pixels, stitcher.seam_disagreement, stitcher.seam_flips, stitcher.seam_map]
    return full[a - top:b - top, c - left:d - left]
