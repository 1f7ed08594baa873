import dataclasses
import json

import numpy as np
import pytest

from pipelines.preprocess.static_augment import (
    StaticAugmentConfig,
    apply_transform,
    augment,
    sample_transform,
    seed_for,
)

GEOMETRY_ONLY = StaticAugmentConfig(brightness=0, contrast=0, gamma=0, noise=0)
T = 48


def tile(dtype=np.uint8, channels=3, seed=0):
    rng = np.random.default_rng(seed)
    top = np.iinfo(dtype).max
    yy, xx = np.mgrid[:T, :T]
    smooth = (np.sin(yy / 5.0) + np.cos(xx / 7.0) + 2) / 4 * top
    image = np.stack([smooth * (c + 1) / channels for c in range(channels)], axis=-1)
    image = np.clip(image + rng.normal(0, top * 0.05, image.shape), 0, top).astype(dtype)
    mask = np.zeros((T, T, 1), dtype=np.uint8)
    mask[10:30, 14:40] = 1
    mask[30:40, 5:20] = 2
    mask[:4] = 255
    return image, mask


def test_seed_is_stable_and_distinct():
    assert seed_for("a/b", 0, 16, 1) == seed_for("a/b", 0, 16, 1)
    # pinned: sha256 of the key, so the seed never depends on the Python process or version
    assert seed_for("a/b", 0, 16, 1) == 0x2880813D18C45B56
    seeds = {seed_for(s, y, x, c) for s in ("a", "b") for y in (0, 1) for x in (0, 1) for c in (1, 2)}
    assert len(seeds) == 16
    assert all(0 <= s < 2**64 for s in seeds)
    assert seed_for("a", 1, 23, 1) != seed_for("a", 12, 3, 1)  # fields cannot run into each other


def test_same_inputs_give_identical_bytes_and_copies_differ():
    image, mask = tile()
    config = StaticAugmentConfig()
    a_img, a_mask, a_params = augment(image, mask, "img/1", 32, 64, 1, config)
    b_img, b_mask, b_params = augment(image.copy(), mask.copy(), "img/1", 32, 64, 1, config)
    assert a_img.tobytes() == b_img.tobytes() and a_mask.tobytes() == b_mask.tobytes()
    assert a_params == b_params
    c_img, c_mask, c_params = augment(image, mask, "img/1", 32, 64, 2, config)
    assert c_params != a_params
    assert c_img.tobytes() != a_img.tobytes()


def test_copy_zero_is_the_original():
    image, mask = tile()
    out_img, out_mask, params = augment(image, mask, "x", 0, 0, 0, StaticAugmentConfig())
    assert params == {}
    assert np.array_equal(out_img, image) and np.array_equal(out_mask, mask)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("with_mask", [True, False])
def test_dtype_and_shape_preserved(dtype, channels, with_mask):
    image, mask = tile(dtype, channels)
    out_img, out_mask, params = augment(image, mask if with_mask else None, "s", 0, 0, 3, StaticAugmentConfig())
    assert out_img.dtype == dtype and out_img.shape == image.shape
    assert not np.array_equal(out_img, image)
    if with_mask:
        assert out_mask.dtype == np.uint8 and out_mask.shape == mask.shape
    else:
        assert out_mask is None


def test_mask_stays_categorical():
    image, mask = tile()
    for copy in range(1, 9):
        _, out_mask, _ = augment(image, mask, "s", 0, 0, copy, StaticAugmentConfig(elastic_sigma=6))
        assert set(np.unique(out_mask)) <= set(np.unique(mask))
        assert 1 in out_mask and 2 in out_mask  # the classes survive, moved not erased


def _agreement(image, mask):
    return np.mean((image[..., 0] > 100) == (mask[..., 0] == 1))


def test_image_and_mask_move_together():
    _, mask = tile()
    mask = np.where(mask == 1, 1, 0).astype(np.uint8)
    image = (mask * 200).astype(np.uint8)
    for copy in range(1, 6):
        out_img, out_mask, params = augment(image, mask, "s", 0, 0, copy, GEOMETRY_ONLY)
        assert "elastic" in params and "angle" in params
        assert not np.array_equal(out_mask, mask)  # it did move
        assert _agreement(out_img, out_mask) > 0.98  # disagree only on the edge ring
        assert _agreement(out_img, mask) < _agreement(out_img, out_mask)


def test_geometric_parts_are_exact_where_they_should_be():
    image, mask = tile()
    params = {"rot90": 1, "flip": True}
    out_img, out_mask = apply_transform(image, mask, params)
    assert np.array_equal(out_img, np.flip(np.rot90(image), axis=1))
    assert np.array_equal(out_mask, np.flip(np.rot90(mask), axis=1))
    zero_field = {"elastic": np.zeros((2, 3, 3)).tolist(), "angle": 0.0}
    out_img, out_mask = apply_transform(image, mask, zero_field)
    assert np.array_equal(out_img, image) and np.array_equal(out_mask, mask)


def test_constant_elastic_grid_is_a_translation():
    image, mask = tile()
    shift = {"elastic": [np.full((3, 3), 2.0).tolist(), np.full((3, 3), -3.0).tolist()]}
    out_img, out_mask = apply_transform(image, mask, shift)
    # output(y, x) = input(y + 2, x - 3) away from the borders
    assert np.array_equal(out_mask[5:-5, 5:-5], mask[7:-3, 2:-8])
    assert np.array_equal(out_img[5:-5, 5:-5], image[7:-3, 2:-8])


def test_intensity_changes_touch_the_image_only():
    image, mask = tile()
    params = {"brightness": 0.1, "contrast": 1.2, "gamma": 0.9, "noise_std": 0.02, "noise_seed": 7}
    out_img, out_mask = apply_transform(image, mask, params)
    assert np.array_equal(out_mask, mask)
    assert not np.array_equal(out_img, image)
    brighter, _ = apply_transform(image, None, {"brightness": 0.1})
    assert np.abs(brighter.astype(int) - np.minimum(image.astype(int) + 26, 255)).max() <= 1
    saturated, _ = apply_transform(image, None, {"brightness": 5.0})
    assert (saturated == 255).all()  # clipped, not wrapped


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_params_round_trip_through_json(dtype):
    image, mask = tile(dtype)
    out_img, out_mask, params = augment(image, mask, "src", 8, 8, 4, StaticAugmentConfig())
    record = json.dumps(params, sort_keys=True)
    again_img, again_mask = apply_transform(image, mask, json.loads(record))
    assert json.loads(record) == params
    assert again_img.tobytes() == out_img.tobytes() and again_mask.tobytes() == out_mask.tobytes()


def test_sample_transform_respects_config():
    rng = np.random.default_rng(0)
    nothing = StaticAugmentConfig(elastic=False, rotate90=False, flip=False, max_rotation=0,
                            brightness=0, contrast=0, gamma=0, noise=0)
    assert sample_transform(rng, nothing) == {}
    params = sample_transform(rng, dataclasses.replace(nothing, elastic=True, elastic_grid=4))
    assert np.asarray(params["elastic"]).shape == (2, 4, 4)
    params = sample_transform(rng, dataclasses.replace(nothing, max_rotation=5))
    assert -5 <= params["angle"] <= 5 and set(params) == {"angle"}


def test_bad_inputs_are_rejected():
    image, mask = tile()
    with pytest.raises(ValueError, match="uint8 or uint16"):
        apply_transform(image.astype(np.float32), mask, {})
    with pytest.raises(ValueError, match="mask"):
        apply_transform(image, mask[:-1], {})
    with pytest.raises(ValueError, match="square"):
        apply_transform(image[:-2], None, {"rot90": 1})
    with pytest.raises(ValueError, match="gamma"):
        StaticAugmentConfig(gamma=1.5)
    with pytest.raises(ValueError, match="elastic_grid"):
        StaticAugmentConfig(elastic_grid=1)
