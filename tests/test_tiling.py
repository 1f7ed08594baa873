import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipelines.core.tiling import (
    Stitcher,
    blend_weights,
    core_grid,
    cut_mask_tile,
    cut_tile,
    cut_tiles,
    mirror_index,
    stitch,
    valid_region,
)

PROPERTY = settings(max_examples=60, deadline=None)
sizes = st.integers(1, 70)
cores = st.integers(1, 40)
margins = st.integers(0, 50)


def numbered(h, w, channels=None):
    shape = (h, w) if channels is None else (h, w, channels)
    return np.arange(np.prod(shape), dtype=np.int32).reshape(shape)


@PROPERTY
@given(n=st.integers(2, 40), pad=st.integers(0, 80))
def test_mirror_index_matches_np_pad_reflect_where_it_works(n, pad):
    pad = min(pad, n - 1)  # np.pad(mode="reflect") only works up to n - 1
    expected = np.pad(np.arange(n), pad, mode="reflect")
    assert np.array_equal(mirror_index(np.arange(-pad, n + pad), n), expected)


@PROPERTY
@given(n=st.integers(1, 10), index=st.lists(st.integers(-1000, 1000), min_size=1, max_size=20))
def test_mirror_index_is_in_range_and_repeats_reflection(n, index):
    out = mirror_index(np.array(index), n)
    assert ((out >= 0) & (out < n)).all()
    if n > 1:  # reflection about 0 and about n - 1, repeated
        assert np.array_equal(mirror_index(-np.array(index), n), out)
        assert np.array_equal(mirror_index(2 * (n - 1) - np.array(index), n), out)
    else:
        assert (out == 0).all()


def test_mirror_index_beyond_one_period():
    # n = 3: 0 1 2 1 0 1 2 1 0 ...
    assert mirror_index(np.arange(-5, 9), 3).tolist() == [1, 0, 1, 2, 1, 0, 1, 2, 1, 0, 1, 2, 1, 0]


@PROPERTY
@given(h=sizes, w=sizes, core=cores, margin=margins, channels=st.sampled_from([None, 1, 3]))
def test_cut_then_stitch_cores_reproduces_image(h, w, core, margin, channels):
    image = numbered(h, w, channels)
    pieces = []
    for (y, x, ch, cw), tile in cut_tiles(image, core, margin):
        assert tile.shape == (core + 2 * margin, core + 2 * margin) + image.shape[2:]
        assert tile.dtype == image.dtype
        pieces.append((y, x, ch, cw, tile[margin:margin + ch, margin:margin + cw]))
    assert np.array_equal(stitch(pieces, h, w), image)


@PROPERTY
@given(h=sizes, w=sizes, core=cores)
def test_every_pixel_in_exactly_one_core(h, w, core):
    count = np.zeros((h, w), dtype=int)
    grid = core_grid(h, w, core)
    for y, x, ch, cw in grid:
        assert 1 <= ch <= core and 1 <= cw <= core
        count[y:y + ch, x:x + cw] += 1
    assert (count == 1).all()
    assert grid == sorted(grid)  # row-major


@PROPERTY
@given(h=sizes, w=sizes, core=cores, margin=margins)
def test_tile_holds_mirrored_source_pixels(h, w, core, margin):
    image = numbered(h, w)
    y, x, _, _ = core_grid(h, w, core)[-1]  # the bottom-right core: most mirroring
    tile = cut_tile(image, y, x, core, margin)
    rows = mirror_index(np.arange(y - margin, y + core + margin), h)
    cols = mirror_index(np.arange(x - margin, x + core + margin), w)
    assert np.array_equal(tile, image[rows][:, cols])


@PROPERTY
@given(h=sizes, w=sizes, core=cores, margin=margins)
def test_mask_tile_is_ignore_exactly_outside_image(h, w, core, margin):
    mask = (numbered(h, w) % 7).astype(np.uint8)[..., None]
    for y, x, _, _ in core_grid(h, w, core):
        tile = cut_mask_tile(mask, y, x, core, margin)
        src_y = np.arange(y - margin, y + core + margin)[:, None]
        src_x = np.arange(x - margin, x + core + margin)[None, :]
        outside = (src_y < 0) | (src_y >= h) | (src_x < 0) | (src_x >= w)
        assert tile.shape == (core + 2 * margin, core + 2 * margin, 1)
        assert (tile[outside] == 255).all()
        inside = ~outside
        assert np.array_equal(tile[inside][:, 0], mask[np.broadcast_to(src_y, outside.shape)[inside],
                                                       np.broadcast_to(src_x, outside.shape)[inside], 0])
        rows, cols = valid_region(y, x, core, margin, h, w)
        region = np.zeros_like(outside)
        region[rows, cols] = True
        assert np.array_equal(region, inside)


def test_tiny_image_with_huge_margin():
    image = np.array([[1, 2]], dtype=np.uint8)
    tile = cut_tile(image, 0, 0, core=1, margin=3)
    assert tile.shape == (7, 7)
    assert tile[:, 3].tolist() == [1] * 7  # a single row mirrors onto itself
    assert tile[3].tolist() == [2, 1, 2, 1, 2, 1, 2]


@PROPERTY
@given(h=sizes, w=sizes, core=cores, data=st.data())
def test_overlapping_grid_covers_image_with_cores_inside(h, w, core, data):
    stride = data.draw(st.integers(1, core))
    grid = core_grid(h, w, core, stride)
    covered = np.zeros((h, w), dtype=bool)
    for y, x, ch, cw in grid:
        assert y + ch <= h and x + cw <= w
        if stride < core:  # never partial: the last row/col is shifted back
            assert ch == min(core, h) and cw == min(core, w)
        covered[y:y + ch, x:x + cw] = True
    assert covered.all()


def test_overlapping_grid_positions():
    assert [b[1] for b in core_grid(1, 10, 4, stride=3)] == [0, 3, 6]
    assert [b[1] for b in core_grid(1, 11, 4, stride=3)] == [0, 3, 6, 7]
    assert core_grid(2, 3, 4, stride=2) == [(0, 0, 2, 3)]


@pytest.mark.parametrize("stride", [0, 5])
def test_stride_outside_range_is_rejected(stride):
    with pytest.raises(ValueError, match="stride"):
        core_grid(10, 10, 4, stride)


def test_stitch_rejects_uncovered_pixels():
    with pytest.raises(ValueError, match="uncovered"):
        stitch([(0, 0, 2, 2, np.ones((2, 2)))], 2, 3)


@pytest.mark.parametrize("mode", ["gaussian", "linear", "constant"])
@pytest.mark.parametrize("size", [1, 2, 7, (5, 12)])
def test_blend_weights_positive_and_peaked(mode, size):
    weights = blend_weights(size, mode)
    h, w = (size, size) if isinstance(size, int) else size
    assert weights.shape == (h, w) and weights.dtype == np.float32
    assert (weights > 0).all() and weights.max() == 1.0
    assert np.array_equal(weights, weights[::-1, ::-1])  # symmetric
    if mode != "constant" and h > 2:
        assert weights[h // 2, w // 2] > weights[0, 0]


def test_gaussian_sigma_is_size_over_eight():
    row = blend_weights((1, 64), "gaussian")[0]
    expected = np.exp(-0.5 * ((np.arange(64) - 31.5) / 8.0) ** 2)
    assert np.allclose(row, expected / expected.max(), rtol=1e-6)
    square = blend_weights(64, "gaussian")
    assert np.allclose(square, np.outer(row, row), rtol=1e-6)


@pytest.mark.parametrize("mode", ["gaussian", "linear"])
@pytest.mark.parametrize("h, w, core, stride", [(37, 50, 16, 16), (37, 50, 16, 5), (9, 7, 16, 4), (40, 23, 10, 7)])
def test_stitcher_reproduces_ramp_image(mode, h, w, core, stride):
    yy, xx = np.mgrid[:h, :w]
    image = np.stack([0.25 * yy + 0.5 * xx, np.full((h, w), 3.0)], axis=-1).astype(np.float32)
    stitcher = Stitcher(h, w, channels=2, mode=mode)
    for y, x, ch, cw in core_grid(h, w, core, stride):
        stitcher.add(y, x, image[y:y + ch, x:x + cw])
    assert np.array_equal(stitcher.result(), image)  # weighted mean of identical values


def test_stitcher_weighted_mean_of_different_predictions():
    stitcher = Stitcher(1, 3, mode="constant")
    stitcher.add(0, 0, np.array([[1.0, 2.0]]))
    stitcher.add(0, 1, np.array([[4.0, 6.0]]))
    assert np.allclose(stitcher.result(), [[1.0, 3.0, 6.0]])


def test_stitcher_blends_with_weights():
    stitcher = Stitcher(1, 2, mode="linear")
    stitcher.add(0, 0, np.array([[0.0, 0.0]]))  # tent over 2 = (1, 1)
    stitcher.add(0, 1, np.array([[3.0]]))
    assert np.allclose(stitcher.result(), [[0.0, 1.5]])
    tent = Stitcher(1, 3, mode="linear")  # tent over 3 = (0.5, 1, 0.5)
    tent.add(0, 0, np.array([[0.0, 0.0, 0.0]]))
    tent.add(0, 2, np.array([[9.0]]))
    assert np.allclose(tent.result(), [[0.0, 0.0, 9.0 / 1.5]])


def test_stitcher_rejects_gaps_and_bad_modes():
    stitcher = Stitcher(4, 4)
    stitcher.add(0, 0, np.ones((2, 4)))
    with pytest.raises(ValueError, match="no prediction"):
        stitcher.result()
    with pytest.raises(ValueError, match="outside"):
        stitcher.add(3, 0, np.ones((2, 4)))
    with pytest.raises(ValueError, match="blend mode"):
        Stitcher(4, 4, mode="cosine")
