"""Object outlines: along pixel edges (area = pixel count), valid polygons (shapely), in
full-image pixel-corner coordinates, holes, parts, saddles, simplification and its bound."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import ndimage
from shapely.geometry import Polygon

from pipelines.core.outlines import polygons


def shape(rings) -> Polygon:
    return Polygon(rings[0], rings[1:])


def saddles(region: np.ndarray) -> int:
    """2 x 2 windows of the padded region whose pixels touch only diagonally."""
    p = np.pad(region, 1)
    a, b, c, d = p[:-1, :-1], p[:-1, 1:], p[1:, :-1], p[1:, 1:]
    return int(np.sum((a == d) & (b == c) & (a != b)))


def test_a_rectangle_by_hand_in_pixel_corner_coordinates():
    labels = np.zeros((6, 8), np.uint32)
    labels[1:3, 2:5] = 7                       # rows 1-2, columns 2-4
    [rings] = polygons(labels)
    assert len(rings) == 1
    ring = rings[0]
    assert np.array_equal(ring[0], ring[-1]) and len(ring) == 5          # closed, 4 corners, no midpoints
    assert {tuple(v) for v in ring} == {(2.0, 1.0), (5.0, 1.0), (5.0, 3.0), (2.0, 3.0)}
    poly = shape(rings)
    assert poly.is_valid and poly.area == 6 and poly.exterior.is_ccw      # RFC 7946: exterior counter-clockwise
    assert poly.bounds == (2.0, 1.0, 5.0, 3.0)                            # x = column, y = row, pixel corners


def test_origin_and_scale_place_a_window_in_the_full_image():
    labels = np.zeros((4, 4), np.int64)
    labels[1, 2] = 3
    [rings] = polygons(labels, origin=(100, 1000))
    assert shape(rings).bounds == (1002.0, 101.0, 1003.0, 102.0)
    [rings] = polygons(labels, origin=(100, 1000), scale=4.0)            # a level with downsample 4
    assert shape(rings).bounds == (4008.0, 404.0, 4012.0, 408.0) and shape(rings).area == 16


def test_ids_order_missing_ids_and_huge_ids():
    labels = np.zeros((5, 9), np.uint64)
    labels[1:4, 1:3] = 2**40 + 5              # block-style ids, far beyond the window's pixel count
    labels[2, 6] = 9
    found = polygons(labels, ids=[9, 4, 2**40 + 5, 0])
    assert found[1] is None and found[3] is None
    assert shape(found[0]).area == 1 and shape(found[2]).area == 6
    assert [shape(r).area for r in polygons(labels)] == [1, 6]            # default: ids ascending
    assert polygons(np.zeros((3, 3), np.uint8)) == []
    with pytest.raises(ValueError, match="negative"):
        polygons(np.full((2, 2), -1))


def test_a_hole_is_an_inner_ring_clockwise():
    labels = np.zeros((9, 9), np.uint16)
    labels[1:8, 1:8] = 1
    labels[3:5, 3:6] = 0
    [rings] = polygons(labels)
    assert len(rings) == 2
    poly = shape(rings)
    assert poly.is_valid and poly.area == 49 - 6 and not Polygon(rings[1]).exterior.is_ccw
    [outer] = polygons(labels, holes=False)
    assert len(outer) == 1 and shape(outer).area == 49


def test_diagonal_contacts_cut_corners_so_the_ring_never_touches_itself():
    region = np.array([[1, 1, 1, 0],
                       [1, 0, 1, 0],
                       [1, 1, 0, 0],
                       [0, 0, 0, 0]], bool)    # (1, 1) reaches the outside only diagonally, at (2, 2)
    [rings] = polygons(region.astype(np.uint8))
    poly = shape(rings)
    assert poly.is_valid and len(rings) == 1   # not a hole: the background is 8-connected
    assert poly.area == pytest.approx(7 - 2 / 8)   # the two corners meeting at the saddle, 1/8 px^2 each


def test_an_object_of_several_parts_is_outlined_by_its_largest_part():
    labels = np.zeros((6, 10), np.uint8)
    labels[1:3, 1:3] = 4                       # 4 px
    labels[1:4, 5:9] = 4                       # 12 px: the one outlined
    labels[4, 0] = 4
    [rings] = polygons(labels)
    assert shape(rings).area == 12 and shape(rings).bounds == (5.0, 1.0, 9.0, 4.0)


def test_tolerance_simplifies_within_it_and_max_vertices_bounds_an_outline():
    yy, xx = np.mgrid[:200, :200]
    disc = ((yy - 100) ** 2 + (xx - 100) ** 2 < 90 ** 2).astype(np.uint8)
    [exact] = polygons(disc)
    [simple] = polygons(disc, tolerance=1.0)
    assert len(simple[0]) < len(exact[0]) / 2
    assert shape(simple).is_valid and shape(exact).symmetric_difference(shape(simple)).area < 0.02 * disc.sum()
    assert shape(exact).hausdorff_distance(shape(simple)) <= 1.0 + 1e-9
    [bounded] = polygons(disc, max_vertices=40)
    assert len(bounded[0]) - 1 <= 40 and shape(bounded).is_valid
    assert abs(shape(bounded).area - disc.sum()) < 0.05 * disc.sum()


blobs = st.lists(st.lists(st.integers(0, 3), min_size=9, max_size=9), min_size=9, max_size=9)


@settings(max_examples=60, deadline=None)
@given(blobs)
def test_random_label_images_give_valid_polygons_of_their_pixel_count(grid):
    """Every 4-connected object of a random label image: a valid polygon whose area is its
    pixel count less 1/8 px^2 per corner cut at a saddle."""
    labels = np.repeat(np.repeat(np.array(grid), 2, 0), 2, 1)[:-1, 1:]    # blocks, with odd-sized edges
    labels[::5, ::3] = np.array(grid)[: len(labels[::5]), : len(labels[0, ::3])]  # single pixels: diagonal contacts
    objects = np.zeros(labels.shape, np.int64)
    count = 0
    for cls in range(1, 4):
        parts, n = ndimage.label(labels == cls)
        objects[parts > 0] = parts[parts > 0] + count
        count += n
    found = polygons(objects, origin=(10, 20))
    assert len(found) == count
    for index, rings in enumerate(found, start=1):
        region = objects == index
        poly = shape(rings)
        assert poly.is_valid and poly.exterior.is_ccw
        assert poly.area == pytest.approx(region.sum() - saddles(region) / 4)
        ys, xs = np.nonzero(region)
        assert poly.bounds == (xs.min() + 20, ys.min() + 10, xs.max() + 21, ys.max() + 11)
        inside = poly.contains(Polygon.from_bounds(xs[0] + 20.25, ys[0] + 10.25, xs[0] + 20.75, ys[0] + 10.75))
        assert inside                           # the object's first pixel lies inside its outline
