"""Dynamic (per-epoch) augmentation of a batch, applied jointly to images and masks.

Vectorised over the batch (one draw per example, no per-example graph), which keeps it
cheap next to decoding. Every draw is stateless and comes from ``seed`` (shape [2]), so an
epoch replays exactly on resume. Images are normalised floats in [0, 1]; masks hold class
ids (255 = ignore; and the border weights as a second channel when the loss uses them) and
only follow the geometric transforms, so ignore stays ignore.

Geometry is an element of the dihedral group of the square: an optional transpose then
optional left-right and up-down flips. Flips and 90-degree rotations together draw all
eight uniformly; rotations alone draw k * 90 degrees (k uniform in 0..3); flips alone
draw the four flips.
"""
from __future__ import annotations

import numpy as np
import tensorflow as tf

from trainer.config import AugmentConfig

# rotation by k * 90 degrees counter-clockwise as (transpose, flip left-right, flip up-down)
ROTATIONS = ((False, False, False), (True, False, True), (False, True, True), (True, True, False))


def _coins(seed, count):
    return tf.random.stateless_uniform([count], seed) < 0.5


def _uniform(seed, count, low: float, high: float):
    return tf.random.stateless_uniform([count, 1, 1, 1], seed, minval=low, maxval=high)


def geometry_bits(seed, count, cfg: AugmentConfig):
    """[count, 3] booleans: (transpose, flip left-right, flip up-down) per example."""
    seeds = tf.random.experimental.stateless_split(seed, 4)
    none = tf.zeros([count], tf.bool)
    if cfg.rot90 and not cfg.flips:
        k = tf.random.stateless_uniform([count], seeds[0], minval=0, maxval=4, dtype=tf.int32)
        return tf.gather(tf.constant(ROTATIONS), k)
    transpose = _coins(seeds[1], count) if cfg.rot90 else none
    flips = [_coins(seeds[2], count), _coins(seeds[3], count)] if cfg.flips else [none, none]
    return tf.stack([transpose, *flips], axis=1)


def permutations(size: int) -> np.ndarray:
    """[8, T*T]: for each (transpose, flip lr, flip ud) = bits of 4t + 2l + u, the flat
    source pixel of every output pixel."""
    grid = np.arange(size * size, dtype=np.int32).reshape(size, size)
    maps = []
    for code in range(8):
        out = grid.T if code & 4 else grid
        out = out[:, ::-1] if code & 2 else out
        maps.append((out[::-1] if code & 1 else out).ravel())
    return np.stack(maps)


def apply_geometry(batch, bits):
    """Per-example (transpose, flip lr, flip ud) of [B, T, T, C] square tiles: one gather."""
    shape = tf.shape(batch)
    codes = tf.reduce_sum(tf.cast(bits, tf.int32) * tf.constant([4, 2, 1]), axis=1)
    indices = tf.gather(tf.constant(permutations(batch.shape[1])), codes)
    flat = tf.reshape(batch, [shape[0], shape[1] * shape[2], shape[3]])
    return tf.reshape(tf.gather(flat, indices, batch_dims=1), shape)


def photometric(images, seed, cfg: AugmentConfig):
    """Brightness, contrast, gamma and noise per example on [0, 1] images; clipped to [0, 1].

    Brightness b then contrast c around the (shifted) mean m + b fuse into one affine map:
    c * x + b + (1 - c) * m."""
    seeds = tf.random.experimental.stateless_split(seed, 5)
    count = tf.shape(images)[0]
    if cfg.brightness > 0 or cfg.contrast > 0:
        shift = _uniform(seeds[0], count, -cfg.brightness, cfg.brightness) if cfg.brightness > 0 else 0.0
        if cfg.contrast > 0:
            factor = _uniform(seeds[1], count, 1.0 - cfg.contrast, 1.0 + cfg.contrast)
            shift = shift + (1.0 - factor) * tf.reduce_mean(images, axis=(1, 2, 3), keepdims=True)
            images = images * factor
        images = images + shift
    if cfg.gamma > 0:
        gamma = _uniform(seeds[2], count, 1.0 - cfg.gamma, 1.0 + cfg.gamma)
        images = tf.pow(tf.clip_by_value(images, 0.0, 1.0), gamma)
    if cfg.noise > 0:
        sigma = _uniform(seeds[3], count, 0.0, cfg.noise)
        images = images + sigma * tf.random.stateless_normal(tf.shape(images), seeds[4])
    return tf.clip_by_value(images, 0.0, 1.0)


def augment(images, masks, seed, cfg: AugmentConfig):
    """(images float [B, T, T, C] in [0, 1], masks uint8 [B, T, T, 1] or None, seed int [2])
    -> the same shapes, augmented."""
    if not cfg.enabled:
        return images, masks
    geometry_seed, photometric_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    if cfg.flips or cfg.rot90:
        bits = geometry_bits(geometry_seed, tf.shape(images)[0], cfg)
        if masks is None:
            images = apply_geometry(images, bits)
        else:  # one gather moves both: the mask (and its weights) ride along as extra channels
            both = apply_geometry(tf.concat([images, tf.cast(masks, images.dtype)], axis=-1), bits)
            split = images.shape[-1]
            images, masks = both[..., :split], tf.cast(both[..., split:], masks.dtype)
    return photometric(images, photometric_seed, cfg), masks


def augment_example_batch(images, targets, seed, cfg: AugmentConfig, segmentation: bool):
    """``augment`` for (images, masks) or (images, labels) batches; labels pass through."""
    if segmentation:
        return augment(images, targets, seed, cfg)
    return augment(images, None, seed, cfg)[0], targets
