"""Dynamic batch augmentation, eagerly and inside tf.data: joint geometry, ignore kept, seeded."""
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

from trainer.augment import augment
from trainer.config import AugmentConfig  # noqa: E402

GEOMETRY_ONLY = AugmentConfig(brightness=0.0, contrast=0.0, gamma=0.0, noise=0.0)


def example(seed=0, size=12, batch=6):
    """Images whose channel 0 encodes the mask, so a joint transform keeps them equal."""
    rng = np.random.default_rng(seed)
    mask = rng.integers(0, 3, (batch, size, size, 1)).astype(np.uint8)
    mask[:, :3, :5] = 255
    image = np.concatenate([mask / 255.0, rng.random((batch, size, size, 1))], axis=-1).astype(np.float32)
    return image, mask


def run_eager(image, mask, seed, cfg):
    out_image, out_mask = augment(tf.constant(image), tf.constant(mask), tf.constant(seed, tf.int64), cfg)
    return out_image.numpy(), out_mask.numpy()


def run_in_dataset(image, mask, seed, cfg):
    ds = tf.data.Dataset.from_tensor_slices((image, mask)).batch(len(image))
    ds = ds.map(lambda i, m: augment(i, m, tf.constant(seed, tf.int64), cfg), num_parallel_calls=2)
    out_image, out_mask = next(iter(ds))
    return out_image.numpy(), out_mask.numpy()


@pytest.mark.parametrize("runner", [run_eager, run_in_dataset])
def test_image_and_mask_move_together(runner):
    image, mask = example()
    seen = set()
    for s in range(4):
        out_image, out_mask = runner(image, mask, [7, s], GEOMETRY_ONLY)
        # channel 0 of the image encodes the mask: the same transform moved both
        np.testing.assert_allclose(out_image[..., 0], out_mask[..., 0] / 255.0, atol=1e-6)
        for i in range(len(mask)):
            assert np.sum(out_mask[i] == 255) == np.sum(mask[i] == 255)
            assert sorted(out_image[i, ..., 1].ravel()) == pytest.approx(sorted(image[i, ..., 1].ravel()))
            seen.add(out_mask[i].tobytes())
    assert len(seen) >= 5 * len(mask) // 2  # flips x rotations: up to 8 results per example


@pytest.mark.parametrize("flips, rot90, allowed", [
    (True, True, 8), (False, True, 4), (True, False, 4)])
def test_geometry_draws_from_the_right_group(flips, rot90, allowed):
    """Each output is one of the allowed dihedral transforms of its input, and all occur."""
    tile = np.arange(16, dtype=np.float32).reshape(1, 4, 4, 1) / 16
    batch = np.repeat(tile, 64, axis=0)
    cfg = AugmentConfig(flips=flips, rot90=rot90, brightness=0, contrast=0, gamma=0, noise=0)
    out, _ = augment(tf.constant(batch), None, tf.constant([1, 2], tf.int64), cfg)
    rotations = [np.rot90(tile[0, ..., 0], k) for k in range(4)]
    group = {"rot": rotations, "flip": [tile[0, ..., 0], tile[0, ::-1, :, 0], tile[0, :, ::-1, 0],
                                        tile[0, ::-1, ::-1, 0]]}
    candidates = rotations + [r.T for r in rotations] if flips and rot90 else group["rot" if rot90 else "flip"]
    found = {next(i for i, c in enumerate(candidates) if np.array_equal(o[..., 0], c)) for o in out.numpy()}
    assert found == set(range(allowed))


def test_eager_and_dataset_agree_and_seeds_decide():
    image, mask = example(1)
    cfg = AugmentConfig()
    a = run_eager(image, mask, [3, 4], cfg)
    b = run_in_dataset(image, mask, [3, 4], cfg)
    np.testing.assert_allclose(a[0], b[0], atol=1e-6)
    np.testing.assert_array_equal(a[1], b[1])
    c = run_eager(image, mask, [3, 5], cfg)
    assert not np.allclose(a[0], c[0])


def test_photometric_changes_only_the_image_and_stays_in_range():
    image, mask = example(2)
    cfg = AugmentConfig(flips=False, rot90=False, brightness=0.3, contrast=0.5, gamma=0.5, noise=0.1)
    for s in range(5):
        out_image, out_mask = run_eager(image, mask, [1, s], cfg)
        np.testing.assert_array_equal(out_mask, mask)
        assert out_image.min() >= 0.0 and out_image.max() <= 1.0
        assert not np.allclose(out_image, image)


def test_disabled_is_identity_and_masks_are_optional():
    image, mask = example(3)
    out_image, out_mask = run_eager(image, mask, [0, 0], AugmentConfig(enabled=False))
    np.testing.assert_array_equal(out_image, image)
    np.testing.assert_array_equal(out_mask, mask)
    out_image, none = augment(tf.constant(image), None, tf.constant([0, 1], tf.int64), AugmentConfig())
    assert none is None and out_image.shape == image.shape


def test_config_rejects_out_of_range_strengths():
    with pytest.raises(ValueError, match="noise"):
        AugmentConfig(noise=1.5)
