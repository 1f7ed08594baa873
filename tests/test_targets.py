"""The boundary target and distance map (pipelines.core.targets): by hand, against a brute-force
definition, and round trips target -> schemas.decoder (seeded) -> instances on random objects,
with the documented limit (objects that are all boundary) shown to be what happens."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from scipy import ndimage

from pipelines.core import targets
from schemas.decoder import DecoderParams, decode, renumbered

SEEDED = DecoderParams(mode="seeded")


def convex_cells(seed: int, count: int, size: int, radius: tuple[float, float]) -> np.ndarray:
    """Touching convex objects: the Voronoi cell of each random centre within its own disk."""
    rng = np.random.default_rng(seed)
    cy, cx = rng.uniform(0, size, count), rng.uniform(0, size, count)
    r = rng.uniform(*radius, count)
    yy, xx = np.mgrid[0:size, 0:size]
    d = np.sqrt((yy[None] - cy[:, None, None]) ** 2 + (xx[None] - cx[:, None, None]) ** 2)
    nearest = d.argmin(0)
    own = np.take_along_axis(d, nearest[None], 0)[0] <= r[nearest]
    return renumbered(np.where(own, nearest + 1, 0))


def brute_force_target(labels: np.ndarray, thickness: int, ignored: np.ndarray) -> np.ndarray:
    """The definition read literally: an object pixel is boundary when a pixel of another label,
    not ignored and inside the array, lies within Euclidean distance ``thickness``."""
    out = np.zeros(labels.shape, np.uint8)
    height, width = labels.shape
    for y, x in zip(*np.nonzero(labels)):
        near = [(v, u) for v in range(max(0, y - thickness), min(height, y + thickness + 1))
                for u in range(max(0, x - thickness), min(width, x + thickness + 1))
                if (v - y) ** 2 + (u - x) ** 2 <= thickness ** 2 and not ignored[v, u]]
        out[y, x] = 1 if any(labels[v, u] != labels[y, x] for v, u in near) else 2
    out[ignored] = 255
    return out


def test_two_touching_squares_by_hand():
    labels = np.zeros((12, 20), np.uint16)
    labels[2:10, 2:10] = 5
    labels[2:10, 10:18] = 9                       # touches 5 along a column
    target = targets.boundary_target(labels, 2)
    assert target.dtype == np.uint8 and set(np.unique(target)) == {0, 1, 2}
    assert (target[labels == 0] == 0).all()
    # rows 4..7 are 2 px from the top and bottom edges: the interior of 5 is columns 4..7
    # (column 8 is 2 px from 9's column 10), of 9 columns 12..15
    assert (target[4:8, 4:8] == 2).all() and (target[4:8, 12:16] == 2).all()
    assert (target[4:8, 8:12] == 1).all()         # 2 px of boundary on each side of the contact
    assert (target[2:4, 2:18] == 1).all() and (target[8:10, 2:18] == 1).all()
    assert (target == 2).sum() == 2 * 4 * 4


def test_the_band_is_a_disk_and_ignore_makes_no_boundary():
    labels = np.zeros((11, 11), np.uint8)
    labels[:, :] = 1
    labels[5, 5] = 0                              # one background pixel in an object
    target = targets.boundary_target(labels, 3)
    yy, xx = np.mgrid[0:11, 0:11]
    within = (yy - 5) ** 2 + (xx - 5) ** 2 <= 9
    assert ((target == 1) == (within & (labels > 0))).all()   # the edge of the array makes none
    ignored = labels == 0                         # the same pixel ignored instead: unknown, no boundary
    target = targets.boundary_target(labels, 3, ignored)
    assert target[5, 5] == 255 and (target[~ignored] == 2).all()


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2 ** 31), st.integers(1, 3), st.booleans())
def test_the_target_equals_its_definition(seed, thickness, with_ignore):
    rng = np.random.default_rng(seed)
    labels = ndimage.zoom(rng.integers(0, 4, (4, 5)), 4, order=0).astype(np.uint32)[:14, :17]
    ignored = (rng.random(labels.shape) < 0.1) if with_ignore else np.zeros(labels.shape, bool)
    expected = brute_force_target(labels, thickness, ignored)
    assert np.array_equal(targets.boundary_target(labels, thickness, ignored if with_ignore else None), expected)


def test_objects_of_a_mask_are_its_components_per_class_without_ignore():
    classes = np.array([[1, 1, 0, 1],
                        [0, 0, 0, 1],
                        [2, 2, 255, 1],
                        [2, 0, 1, 0]], np.uint8)
    objects = targets.objects_of_mask(classes)
    assert objects.dtype == np.uint32
    assert objects.tolist() == [[1, 1, 0, 2],
                                [0, 0, 0, 2],
                                [4, 4, 0, 2],
                                [4, 0, 3, 0]]        # class 1 first (raster order), then class 2


@pytest.mark.parametrize("bad, message", [
    (np.zeros((4, 4), np.float32), "integers"),
    (np.zeros((4, 4), bool), "integers"),
    (np.full((4, 4), 2 ** 32, np.uint64), "uint32"),
    (np.full((4, 4), -1, np.int32), ">= 0"),
    (np.zeros((4, 4, 1), np.uint8), "2-D"),
])
def test_bad_instance_masks_are_refused_clearly(bad, message):
    with pytest.raises(ValueError, match=message):
        targets.boundary_target(bad, 2)
    with pytest.raises(ValueError, match=message):
        targets.distance_to_boundary(bad)


def test_the_thickness_must_be_a_positive_integer():
    with pytest.raises(ValueError, match="thickness"):
        targets.boundary_target(np.zeros((4, 4), np.uint8), 0)


def matched(truth: np.ndarray, decoded: np.ndarray) -> dict[int, int]:
    """{true id: decoded id} pairing each true object with the decoded one its interior lies in,
    when that is a bijection between true objects and decoded objects; else fails."""
    interior = targets.boundary_target(truth, 2) == targets.INTERIOR
    pairs = {}
    for k in np.unique(truth[truth > 0]):
        found = np.unique(decoded[interior & (truth == k)])
        assert len(found) == 1 and found[0] > 0, f"object {k}'s interior decodes to {found}"
        pairs[int(k)] = int(found[0])
    assert len(set(pairs.values())) == len(pairs) == len(np.unique(decoded[decoded > 0]))
    return pairs


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 2 ** 31), st.integers(3, 12))
def test_touching_convex_objects_come_back_one_for_one(seed, count):
    """Touching convex objects wider than 2 * thickness + 1 come back one for one, with their
    interiors exact and the same foreground; the only pixels that can change hands are boundary
    pixels where two objects meet (the one-hot boundary is flat, so the watershed splits the
    band by 4-connected steps, not Euclidean distance)."""
    truth = convex_cells(seed, count, 80, (7.0, 16.0))
    target = targets.boundary_target(truth, 2)
    interiors = [ndimage.label((truth == k) & (target == 2))[1] for k in range(1, int(truth.max()) + 1)]
    pieces = [ndimage.label(truth == k)[1] for k in range(1, int(truth.max()) + 1)]
    assume(all(n == 1 for n in interiors + pieces))   # the precondition: objects of one piece, one interior
    decoded = decode(SEEDED, targets.one_hot(target))
    pairs = matched(truth, decoded)
    assert np.array_equal(decoded > 0, truth > 0)
    moved = np.zeros(truth.shape, bool)
    for k, d in pairs.items():
        moved |= (truth == k) & (decoded != d)
    assert (target[moved] == targets.BOUNDARY).all()
    for y, x in zip(*np.nonzero(moved)):          # ...and they went to an object near them (measured:
        given_to = [k for k, d in pairs.items() if d == decoded[y, x]][0]    # up to ~2.1 * thickness)
        other = ndimage.distance_transform_edt(truth != given_to)
        assert other[y, x] <= 3 * 2
    assert moved.sum() <= 0.05 * (truth > 0).sum()


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 2 ** 31), st.integers(1, 3), st.integers(0, 1))
def test_separate_objects_and_straight_contacts_come_back_exactly(seed, thickness, gap):
    """A grid of rectangles at least 2 * thickness + 2 px wide, all touching along straight lines
    (gap 0) or all 1 px apart, comes back exactly. (Where an object's corner meets another's
    side, a corner pixel can be as many 4-connected steps from both interiors and go either way:
    the convex-objects test above bounds that.)"""
    rng = np.random.default_rng(seed)
    edges_y = np.cumsum(rng.integers(2 * thickness + 2 + gap, 14, 5))
    edges_x = np.cumsum(rng.integers(2 * thickness + 2 + gap, 14, 5))
    truth = np.zeros((int(edges_y[-1]) + 3, int(edges_x[-1]) + 3), np.uint32)
    ids = rng.permutation(100)[:16] + 1
    for i in range(4):
        for j in range(4):
            truth[edges_y[i]:edges_y[i + 1] - gap, edges_x[j]:edges_x[j + 1] - gap] = ids[4 * i + j]
    decoded = decode(SEEDED, targets.one_hot(targets.boundary_target(truth, thickness)))
    assert np.array_equal(decoded, renumbered(truth))


def test_objects_that_are_all_boundary_are_lost_when_they_touch_another():
    truth = np.zeros((30, 40), np.uint8)
    truth[5:25, 5:25] = 1
    truth[10:14, 25:30] = 2                       # 4 px wide: all boundary at thickness 2, touching 1
    truth[10:14, 33:38] = 3                       # the same, alone
    target = targets.boundary_target(truth, 2)
    assert not (target[truth == 2] == 2).any() and not (target[truth == 3] == 2).any()
    decoded = decode(SEEDED, targets.one_hot(target))
    assert len(np.unique(decoded[truth == 2])) == 1 and decoded[11, 27] == decoded[15, 15]   # absorbed by 1
    assert np.array_equal(decoded == decoded[11, 35], truth == 3)      # alone: one object, kept
    assert decoded.max() == 2
    dumbbell = np.zeros((20, 40), np.uint8)
    dumbbell[2:18, 2:16] = 1
    dumbbell[2:18, 24:38] = 1
    dumbbell[8:12, 16:24] = 1                     # a neck 4 px thick: no interior there
    decoded = decode(SEEDED, targets.one_hot(targets.boundary_target(dumbbell, 2)))
    assert decoded.max() == 2                     # one object, two interiors: two objects


def test_distance_to_boundary_by_hand():
    labels = np.zeros((9, 12), np.uint16)
    labels[1:8, 1:6] = 3
    labels[1:8, 6:11] = 4
    distance = targets.distance_to_boundary(labels)
    assert distance.dtype == np.float32 and (distance[labels == 0] == 0).all()
    assert distance[4, 3] == 3.0                  # 3 px from the background column 0 and from object 4
    assert distance[4, 5] == 1.0 and distance[4, 6] == 1.0     # the contact: 1 px from the other object
    assert distance[1, 1] == 1.0
    ignored = np.zeros(labels.shape, bool)
    ignored[:, 0] = True                          # the left column unknown: 3 is measured from elsewhere
    assert targets.distance_to_boundary(labels, ignored)[4, 1] == 4.0     # rows 0 and 8
    whole = np.ones((5, 5), np.uint8)
    assert np.isinf(targets.distance_to_boundary(whole)).all()           # nothing outside it here


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 2 ** 31))
def test_distance_equals_a_brute_force_nearest_other_pixel(seed):
    rng = np.random.default_rng(seed)
    labels = ndimage.zoom(rng.integers(0, 4, (3, 4)), 5, order=0).astype(np.uint8)[:13, :17]
    ignored = rng.random(labels.shape) < 0.1
    distance = targets.distance_to_boundary(labels, ignored)
    yy, xx = np.mgrid[0:labels.shape[0], 0:labels.shape[1]]
    for y, x in zip(*np.nonzero((labels > 0) & ~ignored)):
        other = (labels != labels[y, x]) & ~ignored
        expected = np.sqrt(((yy - y) ** 2 + (xx - x) ** 2)[other].min()) if other.any() else np.inf
        assert distance[y, x] == pytest.approx(expected)
    assert (distance[ignored | (labels == 0)] == 0).all()


def test_the_stored_distance_is_clipped_and_scaled():
    stored = targets.encode_distance(np.array([[0.0, 1.0, 16.0, 40.0, np.inf]]), 32.0)
    assert stored.shape == (1, 5, 1) and stored[0, :, 0].tolist() == [0, 8, 128, 255, 255]
    assert targets.decode_distance(stored, 32.0)[0, 2, 0] == pytest.approx(128 * 32 / 255)


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 2 ** 31), st.integers(1, 4))
def test_the_boundary_band_is_where_the_distance_is_at_most_the_thickness(seed, thickness):
    rng = np.random.default_rng(seed)
    labels = ndimage.zoom(rng.integers(0, 5, (4, 4)), 6, order=0).astype(np.uint16)[:21, :23]
    ignored = rng.random(labels.shape) < 0.05
    target = targets.boundary_target(labels, thickness, ignored)
    distance = targets.distance_to_boundary(labels, ignored)
    objects = (labels > 0) & ~ignored
    assert np.array_equal(target == targets.BOUNDARY, objects & (distance <= thickness))
    assert np.array_equal(target == targets.INTERIOR, objects & (distance > thickness))


def test_huge_and_small_ids_give_the_same_distances():
    labels = convex_cells(5, 8, 40, (6.0, 12.0))
    huge = np.where(labels > 0, labels.astype(np.uint64) * 500_000_000, 0).astype(np.uint32)
    assert np.array_equal(targets.distance_to_boundary(labels), targets.distance_to_boundary(huge))
    full = labels + 1                              # no background at all
    assert np.array_equal(targets.distance_to_boundary(full)[labels > 0] > 0, np.ones((labels > 0).sum(), bool))
