"""Losses against hand-computed numbers; ignored pixels change nothing; replica split exact."""
import math
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

from trainer import losses  # noqa: E402
from trainer.losses import LossSpec, combine, loss_sums, parse_loss  # noqa: E402

# one 2x2 binary example; the bottom-right pixel is ignored
LOGITS = np.array([[[[2.0], [-1.0]], [[0.5], [3.0]]]], np.float32)
MASK = np.array([[[[1], [0]], [[1], [255]]]], np.uint8)


def sigmoid(z):
    return 1.0 / (1.0 + math.exp(-z))


def total(text, logits=LOGITS, mask=MASK, **kwargs):
    spec = LossSpec.from_text(text, **kwargs)
    return float(combine(*loss_sums(tf.constant(mask), tf.constant(logits), spec), spec))


def test_parse_loss():
    assert parse_loss("focal+dice") == ((1.0, "focal"), (1.0, "dice"))
    assert parse_loss("0.5*ce + dice") == ((0.5, "ce"), (1.0, "dice"))
    assert parse_loss("BCE+2*tversky") == ((1.0, "ce"), (2.0, "tversky"))
    for bad in ("", "hinge", "0*ce", "ce+", "x*ce"):
        with pytest.raises(ValueError):
            parse_loss(bad)
    with pytest.raises(ValueError, match="segmentation only"):
        LossSpec.from_text("ce+dice", task="classification")


def test_binary_cross_entropy_and_focal_by_hand():
    ce = [math.log1p(math.exp(-2.0)), math.log1p(math.exp(-1.0)), math.log1p(math.exp(-0.5))]
    assert ce == pytest.approx([0.126928, 0.313262, 0.474077], abs=1e-6)
    assert total("ce") == pytest.approx(sum(ce) / 3, rel=1e-5)
    p_t = [sigmoid(2.0), 1 - sigmoid(-1.0), sigmoid(0.5)]
    focal = [(1 - p) ** 2 * c for p, c in zip(p_t, ce)]
    assert total("focal", focal_gamma=2.0) == pytest.approx(sum(focal) / 3, rel=1e-4)
    assert total("0.5*ce+2*focal") == pytest.approx(0.5 * sum(ce) / 3 + 2 * sum(focal) / 3, rel=1e-4)


def test_dice_and_tversky_by_hand():
    p = [sigmoid(2.0), sigmoid(-1.0), sigmoid(0.5)]
    g = [1, 0, 1]
    tp = sum(pi * gi for pi, gi in zip(p, g))
    fp = sum(pi * (1 - gi) for pi, gi in zip(p, g))
    fn = sum((1 - pi) * gi for pi, gi in zip(p, g))
    assert (tp, fp, fn) == pytest.approx((1.503256, 0.268941, 0.496744), abs=1e-6)
    assert total("dice", smooth=0.0) == pytest.approx(1 - 2 * tp / (2 * tp + fp + fn), rel=1e-5)
    assert total("dice", smooth=0.0) == pytest.approx(0.202981, abs=1e-5)
    assert total("dice", smooth=1.0) == pytest.approx(1 - (tp + 1) / (tp + 0.5 * fp + 0.5 * fn + 1), rel=1e-5)
    tversky = 1 - tp / (tp + 0.3 * fp + 0.7 * fn)
    assert total("tversky", smooth=0.0, tversky_alpha=0.3, tversky_beta=0.7) == pytest.approx(tversky, rel=1e-5)
    assert tversky == pytest.approx(0.221779, abs=1e-5)


def test_region_losses_agree_with_keras_on_masked_inputs():
    """Keras' dice/tversky have no ignore mask; on labelled pixels only they must agree
    (Keras' tversky applies alpha to false negatives, so alpha and beta swap)."""
    p = tf.sigmoid(tf.constant([2.0, -1.0, 0.5]))[None]
    g = tf.constant([[1.0, 0.0, 1.0]])
    assert total("dice", smooth=0.0) == pytest.approx(float(keras.losses.dice(g, p)), rel=1e-5)
    ours = total("tversky", smooth=0.0, tversky_alpha=0.2, tversky_beta=0.8)
    assert ours == pytest.approx(float(keras.losses.tversky(g, p, alpha=0.8, beta=0.2)), rel=1e-5)


@pytest.mark.parametrize("text", ["ce", "focal", "dice", "tversky", "focal+dice"])
def test_ignored_pixels_change_nothing(text):
    changed = LOGITS.copy()
    changed[0, 1, 1, 0] = -7.0
    assert total(text, logits=changed) == pytest.approx(total(text), rel=1e-6)
    fully_labelled = MASK.copy()
    fully_labelled[0, 1, 1, 0] = 0
    assert total(text, mask=fully_labelled) != pytest.approx(total(text), rel=1e-3)


def test_class_weights():
    assert losses.balanced_class_weights([90, 10]) == pytest.approx((100 / 180, 5.0))
    assert losses.balanced_class_weights([30, 0, 10]) == pytest.approx((40 / 90, 1.0, 40 / 30))
    ce = [math.log1p(math.exp(-2.0)), math.log1p(math.exp(-1.0)), math.log1p(math.exp(-0.5))]
    weighted = total("ce", class_weights=(0.5, 5.0))
    assert weighted == pytest.approx((5.0 * ce[0] + 0.5 * ce[1] + 5.0 * ce[2]) / 3, rel=1e-5)
    stats = {"class_pixels": {"background": 900, "disc": 100}, "labels": {"a": 3, "b": 1}}
    names = ("background", "disc")
    assert losses.class_weights_from_setting("auto", stats, names, "segmentation") == pytest.approx((1000 / 1800, 5.0))
    assert losses.class_weights_from_setting("auto", stats, ("a", "b"), "classification") == pytest.approx((4 / 6, 2.0))
    assert losses.class_weights_from_setting("none", stats, names, "segmentation") is None
    assert losses.class_weights_from_setting("auto", {}, names, "segmentation") is None
    assert losses.class_weights_from_setting("1,3", stats, names, "segmentation") == (1.0, 3.0)
    with pytest.raises(ValueError):
        losses.class_weights_from_setting("1,2,3", stats, names, "segmentation")


def test_multiclass_cross_entropy_matches_keras_with_ignore_class():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(2, 4, 4, 3)).astype(np.float32)
    mask = rng.integers(0, 3, size=(2, 4, 4, 1)).astype(np.uint8)
    mask[0, :2] = 255
    per_pixel = keras.losses.sparse_categorical_crossentropy(mask[..., 0].astype(np.int32), logits,
                                                             from_logits=True, ignore_class=255)
    expected = float(tf.reduce_sum(per_pixel)) / np.sum(mask != 255)
    assert total("ce", logits=logits, mask=mask) == pytest.approx(expected, rel=1e-5)
    onehot = tf.one_hot(np.where(mask[..., 0] == 255, 0, mask[..., 0]), 3)
    focal_keras = keras.losses.categorical_focal_crossentropy(onehot, logits, alpha=1.0, gamma=2.0, from_logits=True)
    expected_focal = float(tf.reduce_sum(focal_keras * (mask[..., 0] != 255))) / np.sum(mask != 255)
    assert total("focal", logits=logits, mask=mask) == pytest.approx(expected_focal, rel=1e-4)


def test_replica_split_with_global_counts_equals_the_whole_batch():
    """What two replicas compute (local sums over global counts) adds up to the one-device loss."""
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(4, 6, 6, 1)).astype(np.float32)
    mask = rng.integers(0, 2, size=(4, 6, 6, 1)).astype(np.uint8)
    mask[:2, :4] = 255  # the first replica's half is mostly ignored
    spec = LossSpec.from_text("0.5*ce+focal+dice+tversky", class_weights=(0.7, 2.0))
    whole = combine(*loss_sums(mask, logits, spec), spec)
    (sa, ca), (sb, cb) = loss_sums(mask[:2], logits[:2], spec), loss_sums(mask[2:], logits[2:], spec)
    split = combine(sa, ca + cb, spec) + combine(sb, ca + cb, spec)
    assert float(split) == pytest.approx(float(whole), rel=1e-6)


def test_classification_losses():
    logits = np.array([[2.0, 0.0, -1.0], [0.0, 1.0, 0.0]], np.float32)
    labels = np.array([0, 2], np.int32)
    log_softmax = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    ce = [-log_softmax[0, 0], -log_softmax[1, 2]]
    assert total("ce", logits=logits, mask=labels, task="classification") == pytest.approx(np.mean(ce), rel=1e-5)
    weighted = total("ce", logits=logits, mask=labels, task="classification", class_weights=(1.0, 1.0, 3.0))
    assert weighted == pytest.approx((ce[0] + 3 * ce[1]) / 2, rel=1e-5)

