"""Instances decoded block by block with a halo equal the whole-image decoding up to
renumbering (components, seeded and partition modes, random touching blobs, random block
sides and halos), with deterministic ids 1..N; a halo too small for an object is refused."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy import ndimage

from pipelines.core import block_instances as bi
from schemas.decoder import CLASS_MODES, DecoderParams, decode


def blobs(rng, height, width, count, largest):
    """Random ellipses (later ones over earlier ones): an instance image with touching objects."""
    labels = np.zeros((height, width), np.int64)
    yy, xx = np.indices((height, width))
    for i in range(1, count + 1):
        cy, cx = rng.uniform(0, height), rng.uniform(0, width)
        ry, rx = rng.uniform(1.5, largest), rng.uniform(1.5, largest)
        labels[((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1] = i
    return labels


def boundary_probabilities(rng, labels):
    """(H, W, 3) probabilities of background / boundary / interior of an instance image, noisy."""
    padded = np.pad(labels, 1, mode="edge")
    centre = padded[1:-1, 1:-1]
    edge = ((padded[:-2, 1:-1] != centre) | (padded[2:, 1:-1] != centre) | (padded[1:-1, :-2] != centre)
            | (padded[1:-1, 2:] != centre)) & (labels > 0)
    classes = np.where(labels == 0, 0, np.where(edge, 1, 2))
    p = np.eye(3)[classes] * 0.7 + rng.uniform(0, 0.3, (*labels.shape, 3))
    return (p / p.sum(-1, keepdims=True)).astype(np.float32)


def same_up_to_renumbering(a, b):
    assert ((a == 0) == (b == 0)).all(), "background differs"
    pairs = np.unique(np.stack([a[a > 0], b[b > 0]]), axis=1)
    assert pairs.shape[1] == len(np.unique(a[a > 0])) == len(np.unique(b[b > 0])), "not a bijection of ids"


def largest_region(params, data):
    regions = bi._regions(params, data)
    boxes = [s for s in ndimage.find_objects(regions) if s is not None]
    return max([max(s[0].stop - s[0].start, s[1].stop - s[1].start) for s in boxes], default=0)


def reader(data):
    return lambda y0, y1, x0, x1: data[y0:y1, x0:x1]


MODES = st.sampled_from([
    DecoderParams("components"), DecoderParams("components", connectivity=8, min_size=6),
    DecoderParams("watershed", min_distance=3), DecoderParams("watershed", min_distance=2, min_size=4),
    DecoderParams("seeded", min_size=4), DecoderParams("seeded", seed=0.6, connectivity=8),
    DecoderParams("partition", expand=2), DecoderParams("partition", expand=1, min_size=5)])


def decoder_input(params, rng, height, width):
    objects = blobs(rng, height, width, int(rng.integers(3, 14)), 7)
    if params.mode in CLASS_MODES:
        classes = (objects > 0).astype(np.uint8) + (objects % 3 == 1)     # two classes that touch
        return classes
    return boundary_probabilities(rng, objects)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(params=MODES, seed=st.integers(0, 2**31), height=st.integers(20, 70), width=st.integers(20, 70),
       side=st.integers(6, 40), extra=st.integers(0, 6))
def test_blocks_with_a_large_enough_halo_equal_the_whole_image(params, seed, height, width, side, extra):
    rng = np.random.default_rng(seed)
    data = decoder_input(params, rng, height, width)
    largest = largest_region(params, data)      # twice with a size filter and an expansion (module docstring)
    halo = largest * (2 if params.min_size > 1 and params.reach else 1) + 3 * params.reach + 1 + extra
    whole = decode(params, **({"classes": data} if params.mode in CLASS_MODES else {"probabilities": data}))
    by_blocks = bi.blockwise_labels(params, reader(data), height, width, side, halo)
    same_up_to_renumbering(by_blocks, whole)
    n = int(whole.max())
    assert sorted(np.unique(by_blocks[by_blocks > 0]).tolist()) == list(range(1, n + 1))   # ids 1..N, dense
    np.testing.assert_array_equal(bi.blockwise_labels(params, reader(data), height, width, side, halo), by_blocks)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(params=MODES, seed=st.integers(0, 2**31), side=st.integers(6, 30), halo=st.integers(1, 12))
def test_any_halo_either_equals_the_whole_image_or_is_refused(params, seed, side, halo):
    rng = np.random.default_rng(seed)
    data = decoder_input(params, rng, 50, 50)
    whole = decode(params, **({"classes": data} if params.mode in CLASS_MODES else {"probabilities": data}))
    try:
        by_blocks = bi.blockwise_labels(params, reader(data), 50, 50, side, halo)
    except ValueError as e:        # HaloTooSmall, or a halo under the decoder's reach
        assert "--halo" in str(e)
        return
    same_up_to_renumbering(by_blocks, whole)


def test_an_object_larger_than_the_halo_is_refused_with_its_size():
    classes = np.zeros((40, 40), np.uint8)
    classes[5:35, 18:22] = 1                    # 30 px tall, crosses the border of blocks of 20
    with pytest.raises(bi.HaloTooSmall, match=r"at least (2[0-9]|30) x 4 px\).*halo of 8 px.*raise --halo"):
        bi.blockwise_labels(DecoderParams("components"), reader(classes), 40, 40, 20, 8)
    labels = bi.blockwise_labels(DecoderParams("components"), reader(classes), 40, 40, 20, 30)
    assert labels.max() == 1 and (labels > 0).sum() == 120


def test_touching_objects_need_the_whole_group_in_the_halo():
    """Two seeded objects touch: each is small, but the watershed splits their joint region,
    so a halo holding one of them and not the other is refused."""
    probabilities = np.zeros((12, 48, 3), np.float32)
    probabilities[..., 0] = 1
    probabilities[3:9, 4:44] = (0, 0.1, 0.9)    # one foreground region 40 px wide ...
    probabilities[3:9, 6:8] = (0.1, 0.1, 0.8)   # ... seeds left and right of a boundary ridge
    probabilities[3:9, 23:25] = (0, 0.9, 0.1)
    params = DecoderParams("seeded")
    assert decode(params, probabilities=probabilities).max() == 2
    with pytest.raises(bi.HaloTooSmall):
        bi.blockwise_labels(params, reader(probabilities), 12, 48, 12, 10)
    same_up_to_renumbering(bi.blockwise_labels(params, reader(probabilities), 12, 48, 12, 40),
                           decode(params, probabilities=probabilities))


def test_the_halo_must_exceed_the_expansion():
    with pytest.raises(ValueError, match="--halo 6 px must exceed 3 x the decoder's expansion"):
        bi.check_halo(DecoderParams("partition", expand=2), 6)
    bi.check_halo(DecoderParams("partition", expand=2), 7)


def test_ids_follow_blocks_then_raster_order_of_anchors():
    classes = np.zeros((10, 10), np.uint8)
    classes[1, 6] = classes[2, 1] = classes[7, 7] = classes[6, 2] = 1
    labels = bi.blockwise_labels(DecoderParams("components"), reader(classes), 10, 10, 5, 2)
    assert [labels[1, 6], labels[2, 1], labels[6, 2], labels[7, 7]] == [2, 1, 3, 4]   # blocks 0, 1, 2, 3
    assert bi.offsets_of([1, 1, 1, 1]).tolist() == [0, 1, 2, 3]
