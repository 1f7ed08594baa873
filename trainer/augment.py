"""Dynamic (per-epoch) augmentation of one example, applied jointly to image and mask.

Every random draw is stateless and comes from the example's ``seed`` (shape [2]), so an
epoch replays exactly on resume. Images are normalised floats in [0, 1]; masks hold class
ids (255 = ignore) and only follow the geometric transforms, so ignore stays ignore.
"""
from __future__ import annotations

import tensorflow as tf

from trainer.config import AugmentConfig


def _uniform(seed, low: float, high: float):
    return tf.random.stateless_uniform([], seed, minval=low, maxval=high)


def geometric(image, mask, seed, cfg: AugmentConfig):
    """Random flips and 90-degree rotations of image (and mask, if given) alike."""
    seeds = tf.random.experimental.stateless_split(seed, 3)
    tensors = [image] if mask is None else [image, mask]
    if cfg.flips:
        flip_lr = _uniform(seeds[0], 0.0, 1.0) < 0.5
        flip_ud = _uniform(seeds[1], 0.0, 1.0) < 0.5
        tensors = [tf.cond(flip_lr, lambda t=t: tf.image.flip_left_right(t), lambda t=t: t) for t in tensors]
        tensors = [tf.cond(flip_ud, lambda t=t: tf.image.flip_up_down(t), lambda t=t: t) for t in tensors]
    if cfg.rot90:
        k = tf.random.stateless_uniform([], seeds[2], minval=0, maxval=4, dtype=tf.int32)
        tensors = [tf.image.rot90(t, k) for t in tensors]
    return (tensors[0], None) if mask is None else (tensors[0], tensors[1])


def photometric(image, seed, cfg: AugmentConfig):
    """Brightness, contrast, gamma and noise on a [0, 1] image; the result is clipped to [0, 1]."""
    seeds = tf.random.experimental.stateless_split(seed, 5)
    if cfg.brightness > 0:
        image = image + _uniform(seeds[0], -cfg.brightness, cfg.brightness)
    if cfg.contrast > 0:
        mean = tf.reduce_mean(image, axis=(0, 1), keepdims=True)
        image = mean + (image - mean) * _uniform(seeds[1], 1.0 - cfg.contrast, 1.0 + cfg.contrast)
    if cfg.gamma > 0:
        image = tf.pow(tf.clip_by_value(image, 0.0, 1.0), _uniform(seeds[2], 1.0 - cfg.gamma, 1.0 + cfg.gamma))
    if cfg.noise > 0:
        sigma = _uniform(seeds[3], 0.0, cfg.noise)
        image = image + sigma * tf.random.stateless_normal(tf.shape(image), seeds[4])
    return tf.clip_by_value(image, 0.0, 1.0)


def augment(image, mask, seed, cfg: AugmentConfig):
    """(image float [H, W, C] in [0, 1], mask uint8 [H, W, 1] or None, seed int [2]) -> same shapes."""
    if not cfg.enabled:
        return image, mask
    geometric_seed, photometric_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    image, mask = geometric(image, mask, geometric_seed, cfg)
    return photometric(image, photometric_seed, cfg), mask
