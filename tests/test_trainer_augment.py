"""Dynamic augmentation, eagerly and inside tf.data: joint geometry, ignore kept, seeded."""
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

from trainer.augment import augment
from trainer.config import AugmentConfig  # noqa: E402

GEOMETRY_ONLY = AugmentConfig(brightness=0.0, contrast=0.0, gamma=0.0, noise=0.0)


def example(seed=0, size=12):
    rng = np.random.default_rng(seed)
    mask = rng.integers(0, 3, (size, size, 1)).astype(np.uint8)
    mask[:3, :5] = 255
    image = np.concatenate([mask / 255.0, rng.random((size, size, 1))], axis=-1).astype(np.float32)
    return image, mask


def run_eager(image, mask, seed, cfg):
    out_image, out_mask = augment(tf.constant(image), tf.constant(mask), tf.constant(seed, tf.int64), cfg)
    return out_image.numpy(), out_mask.numpy()


def run_in_dataset(image, mask, seed, cfg):
    ds = tf.data.Dataset.from_tensors((image, mask, np.array(seed, np.int64)))
    ds = ds.map(lambda i, m, s: augment(i, m, s, cfg), num_parallel_calls=2)
    out_image, out_mask = next(iter(ds))
    return out_image.numpy(), out_mask.numpy()


@pytest.mark.parametrize("runner", [run_eager, run_in_dataset])
def test_image_and_mask_move_together(runner):
    image, mask = example()
    seen = set()
    for s in range(12):
        out_image, out_mask = runner(image, mask, [7, s], GEOMETRY_ONLY)
        # channel 0 of the image encodes the mask: the same transform moved both
        np.testing.assert_allclose(out_image[..., 0], out_mask[..., 0] / 255.0, atol=1e-6)
        assert np.sum(out_mask == 255) == np.sum(mask == 255)
        assert sorted(out_image[..., 1].ravel()) == pytest.approx(sorted(image[..., 1].ravel()))
        seen.add(out_mask.tobytes())
    assert len(seen) >= 5  # flips x rotations give up to 8 distinct results


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
