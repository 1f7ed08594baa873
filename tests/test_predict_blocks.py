"""Blocks of a large image give exactly the whole-image result: the same tiles, the same
blend, bit for bit, whatever the block side, overlap or image size."""
from __future__ import annotations

import numpy as np
import pytest

from pipelines.core import tiling
from pipelines.predict import blocks
from pipelines.predict.plan import Geometry, stride_for


def geometry(core, margin, overlap, classes=3):
    return Geometry("segmentation", core, margin, 1, 1, classes, stride_for(core, overlap), batch_size=4)


def scores_of(boxes, g, seed=0):
    """A fixed random score map per tile, as a model would give (depends on the tile only)."""
    return np.stack([np.random.default_rng((seed, y, x)).random((g.core, g.core, g.classes), np.float32)
                     for y, x, _, _ in boxes])


def whole_image(height, width, g, blend):
    boxes = tiling.core_grid(height, width, g.core, g.stride)
    block = blocks.Block(0, 1, (0, height), (0, width))
    return blocks.stitch_block(block, boxes, scores_of(boxes, g), blend)


@pytest.mark.parametrize("height,width,core,margin,overlap,side", [
    (101, 77, 16, 4, 0.0, 32), (101, 77, 16, 4, 0.25, 32), (64, 64, 16, 3, 0.5, 16),
    (37, 150, 12, 20, 0.25, 36), (9, 7, 16, 4, 0.25, 16), (130, 90, 20, 6, 0.4, 60)])
@pytest.mark.parametrize("blend", ["gaussian", "linear"])
def test_blocks_reassemble_the_whole_image_result_bit_for_bit(height, width, core, margin, overlap, side, blend):
    g = geometry(core, margin, overlap)
    expected = whole_image(height, width, g, blend)
    assembled = np.full((height, width, g.classes), np.nan, np.float32)
    plan = blocks.plan_blocks(height, width, side)
    for block in plan:
        boxes = blocks.block_boxes(block, height, width, g)
        out = blocks.stitch_block(block, boxes, scores_of(boxes, g), blend)
        (a, b), (c, d) = block.rows, block.cols
        assert out.shape == (b - a, d - c, g.classes)
        assert np.isnan(assembled[a:b, c:d]).all()            # blocks never write the same pixel
        assembled[a:b, c:d] = out
    np.testing.assert_array_equal(assembled, expected)
    assert [b.index for b in plan] == list(range(len(plan))) and all(b.count == len(plan) for b in plan)


@pytest.mark.parametrize("height,width,core,margin", [(50, 70, 16, 5), (9, 7, 16, 20), (40, 40, 8, 0)])
def test_tiles_cut_from_a_block_window_equal_tiles_cut_from_the_image(height, width, core, margin):
    g = geometry(core, margin, 0.25)
    image = np.random.default_rng(1).integers(0, 256, (height, width, 1), dtype=np.uint8)
    for block in blocks.plan_blocks(height, width, 2 * core):
        boxes = blocks.block_boxes(block, height, width, g)
        y0, y1, x0, x1 = tiling.source_window(boxes, core, margin, height, width)
        assert 0 <= y0 < y1 <= height and 0 <= x0 < x1 <= width
        window = image[y0:y1, x0:x1]                          # all a worker reads of the image
        for box in boxes:
            np.testing.assert_array_equal(tiling.cut_from_window(window, (y0, x0), *box[:2], core, margin, height, width),
                                          tiling.cut_tile(image, box[0], box[1], core, margin))


def test_the_block_side_follows_the_memory_bound_not_the_image():
    g = geometry(64, 16, 0.25, classes=2)
    small, large = blocks.block_side(g, 64 * 2**20), blocks.block_side(g, 512 * 2**20)
    assert small % 64 == 0 and large % 64 == 0 and 64 <= small < large
    assert blocks.block_cost(small, g) <= 64 * 2**20 < blocks.block_cost(small + 64, g)
    with pytest.raises(ValueError, match="memory-limit-mb"):
        blocks.block_side(g, 2**20)


def test_with_instances_the_block_window_with_its_halo_bounds_the_block_side():
    import dataclasses

    from pipelines.predict.plan import instance_bytes

    plain = geometry(16, 3, 0.25)
    decoded = dataclasses.replace(plain, instances=True, decoder_mode="seeded", boundary=True)
    limit = 64 * 2**20
    side = blocks.block_side(decoded, limit, halo=100)
    assert side % 16 == 0 and (side + 200) ** 2 * instance_bytes(decoded) <= limit      # the window fits ...
    assert (side + 16 + 200) ** 2 * instance_bytes(decoded) > limit                     # ... the next does not
    assert side < blocks.block_side(plain, limit) and blocks.block_side(decoded, limit, halo=20) > side
    with pytest.raises(ValueError, match="lower --halo"):
        blocks.block_side(decoded, 2**20, halo=400)
