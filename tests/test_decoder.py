"""schemas.decoder against hand-made cases: seeded splits touching objects, partition assigns the
boundary, min_size drops, the class modes are what ``--instances`` always did, bad input is refused."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import ndimage
from skimage.measure import label as skimage_label

from schemas.decoder import (
    DecoderParams,
    anchors,
    boundary_foreground,
    decode,
    foreground_classes,
    renumbered,
)


def two_touching_disks(height: int = 40, width: int = 60):
    """(probabilities (H, W, 3), truth ids): disks of radius 12 overlapping at x = 29, cut there,
    so they touch along a line; a one-hot boundary on every object's rim, interior inside."""
    yy, xx = np.mgrid[0:height, 0:width]
    truth = np.zeros((height, width), np.int32)
    truth[((yy - 20) ** 2 + (xx - 18) ** 2) < 12 ** 2] = 1
    truth[(((yy - 20) ** 2 + (xx - 40) ** 2) < 12 ** 2) & (xx >= 29)] = 2
    rim = (truth > 0) & ((ndimage.maximum_filter(truth, 3) != truth) | (ndimage.minimum_filter(truth, 3) != truth))
    p = np.zeros((height, width, 3), np.float32)
    p[..., 0] = truth == 0
    p[..., 1] = rim
    p[..., 2] = (truth > 0) & ~rim
    return p, truth


def test_seeded_splits_two_touching_disks_that_components_merge():
    p, truth = two_touching_disks()
    labels = decode(DecoderParams("seeded"), probabilities=p)
    assert labels.dtype == np.uint32 and labels.max() == 2
    np.testing.assert_array_equal(labels > 0, truth > 0)                  # every foreground pixel in an object
    for i in (1, 2):                                                      # ...of its own disk
        inside = labels[truth == i]
        assert np.count_nonzero(inside == np.bincount(inside).argmax()) >= 0.97 * inside.size
    merged = decode(DecoderParams("components"), classes=boundary_foreground(p))
    assert merged.max() == 1                                              # the rims touch: one component


def test_a_foreground_component_without_a_seed_is_one_object_and_thresholds_move_it():
    p = np.zeros((10, 12, 3), np.float32)
    p[..., 0] = 1
    p[2:6, 2:6] = (0.2, 0.6, 0.2)        # foreground (0.8) but no interior >= 0.5
    p[2:6, 8:11] = (0.1, 0.3, 0.6)       # a seeded object
    labels = decode(DecoderParams("seeded"), probabilities=p)
    assert labels.max() == 2 and labels[3, 3] == 1 and labels[3, 9] == 2
    assert decode(DecoderParams("seeded", foreground=0.85), probabilities=p).max() == 1   # only the seeded one
    assert decode(DecoderParams("seeded", seed=0.7), probabilities=p).max() == 2          # both seedless now


def test_partition_labels_every_pixel_within_expand_px_and_no_further():
    p, truth = two_touching_disks()
    seeded = decode(DecoderParams("seeded"), probabilities=p)
    for expand in (1, 3):
        labels = decode(DecoderParams("partition", expand=expand), probabilities=p)
        distance = ndimage.distance_transform_edt(seeded == 0)
        np.testing.assert_array_equal(labels > 0, distance <= expand)
        np.testing.assert_array_equal(labels[seeded > 0], seeded[seeded > 0])   # objects keep their pixels
    assert decode(DecoderParams("partition", expand=0), probabilities=p).tolist() == seeded.tolist()


def test_the_mask_of_a_partition_keeps_the_background_the_objects_grew_into():
    p, _ = two_touching_disks()
    params = DecoderParams("partition", expand=3)
    labels = decode(params, probabilities=p)
    foreground = (p[..., 1] + p[..., 2]) >= params.foreground
    mask = foreground_classes(labels, p, params.foreground)
    assert np.count_nonzero(labels) > np.count_nonzero(mask) > 0
    np.testing.assert_array_equal(mask, ((labels > 0) & foreground).astype(np.uint8))


def test_min_size_drops_small_objects_in_every_mode():
    mask = np.zeros((20, 20), np.uint8)
    mask[1:4, 1:4] = 1              # 9 px
    mask[8:18, 8:18] = 1            # 100 px
    p = np.zeros((20, 20, 3), np.float32)
    p[..., 0], p[..., 2] = mask == 0, mask == 1
    for mode in ("components", "watershed", "seeded", "partition"):
        labels = decode(DecoderParams(mode, min_size=10), probabilities=p, classes=mask)
        assert labels.max() == 1 and np.count_nonzero(labels) == 100 and labels[10, 10] == 1, mode
        assert decode(DecoderParams(mode, min_size=9), probabilities=p, classes=mask).max() == 2, mode


def test_components_are_the_components_of_each_class_numbered_in_raster_order():
    mask = np.array([[0, 2, 2, 0, 1],
                     [1, 0, 2, 0, 1],
                     [1, 1, 0, 0, 0],
                     [0, 0, 0, 2, 0]], np.uint8)
    expected = np.array([[0, 1, 1, 0, 2],
                         [3, 0, 1, 0, 2],
                         [3, 3, 0, 0, 0],
                         [0, 0, 0, 4, 0]], np.uint32)
    np.testing.assert_array_equal(decode(DecoderParams("components"), classes=mask), expected)
    diagonal = np.array([[1, 0], [0, 1]], np.uint8)
    assert decode(DecoderParams("components", connectivity=4), classes=diagonal).max() == 2
    assert decode(DecoderParams("components", connectivity=8), classes=diagonal).max() == 1


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2 ** 16), st.sampled_from([4, 8]))
def test_components_equal_skimage_labels_of_a_binary_mask(seed, connectivity):
    """What --instances components always wrote (scipy components numbered in raster order)."""
    mask = (np.random.default_rng(seed).random((17, 23)) < 0.45).astype(np.uint8)
    expected = skimage_label(mask, connectivity=1 if connectivity == 4 else 2)   # raster order too
    np.testing.assert_array_equal(decode(DecoderParams("components", connectivity=connectivity), classes=mask),
                                  expected)


def test_watershed_splits_touching_disks_at_their_neck():
    yy, xx = np.mgrid[0:80, 0:120]
    mask = ((((yy - 40) ** 2 + (xx - 30) ** 2) < 16 ** 2) | (((yy - 40) ** 2 + (xx - 58) ** 2) < 16 ** 2))
    mask = mask.astype(np.uint8)
    labels = decode(DecoderParams("watershed", min_distance=5), classes=mask)
    assert labels.max() == 2 and decode(DecoderParams("components"), classes=mask).max() == 1
    np.testing.assert_array_equal(labels > 0, mask > 0)
    assert set(np.unique(labels[:, :44])) == {0, 1} and set(np.unique(labels[:, 45:])) == {0, 2}


def test_renumbered_and_anchors_follow_the_first_pixel_in_raster_order():
    labels = np.array([[0, 7, 7], [5, 0, 9], [5, 9, 9]], np.int64)
    np.testing.assert_array_equal(renumbered(labels), [[0, 1, 1], [2, 0, 3], [2, 3, 3]])
    np.testing.assert_array_equal(anchors(renumbered(labels)), [[0, 1], [1, 0], [1, 2]])
    np.testing.assert_array_equal(foreground_classes(renumbered(labels)), labels > 0)


def test_bad_input_is_refused_with_what_was_expected():
    p = np.zeros((4, 4, 2), np.float32)
    with pytest.raises(ValueError, match=r"\(H, W, 3\) probabilities of \('background', 'boundary', 'interior'\)"):
        decode(DecoderParams("seeded"), probabilities=p)
    with pytest.raises(ValueError, match="got None"):
        decode(DecoderParams("partition"))
    with pytest.raises(ValueError, match="class-id mask"):
        decode(DecoderParams("components"), probabilities=np.zeros((4, 4, 3)))
    with pytest.raises(ValueError, match="class-id mask"):
        decode(DecoderParams("watershed"), classes=np.zeros((4, 4, 1), np.uint8))
    with pytest.raises(ValueError, match=r"\(H, W, 3\)"):
        boundary_foreground(p)
    for bad in ({"mode": "blobs"}, {"seed": 0.0}, {"foreground": 1.5}, {"min_size": -1}, {"connectivity": 6},
                {"min_distance": 0}):
        with pytest.raises(ValueError):
            DecoderParams(**bad)


def test_params_round_trip_through_a_dict_and_ignore_what_they_do_not_know():
    params = DecoderParams("partition", foreground=0.4, seed=0.7, min_size=3, expand=2)
    assert DecoderParams.from_dict({**params.to_dict(), "rule": "max rand", "value": 0.9}) == params
    assert params.reach == 2 and DecoderParams("seeded", expand=2).reach == 0
    assert params.needs_boundary_model and not DecoderParams("watershed").needs_boundary_model
