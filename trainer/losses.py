"""Ignore-aware losses: cross-entropy, focal, dice, Tversky, and weighted sums of them.

A loss is written as a string: ``"ce"``, ``"focal+dice"``, ``"0.5*ce+dice"``. Every term
returns a (sum, count) pair over the local batch: pixel terms (ce, focal) sum over
labelled pixels (mask != 255) and count them; region terms (dice, tversky) sum one value
per example and count examples. The loss is ``sum_t w_t * sum_t / count_t`` where the
counts are *global* (all replicas), so gradients summed over replicas equal those of one
device on the global batch, and ignored pixels change nothing.

Logits have one channel for binary segmentation (sigmoid) and K channels otherwise
(softmax). Class weights (``--class-weights``, the role of focal's alpha) weight each
labelled pixel or example by its true class. With the U-Net border weight map
(``border_w0 > 0``) the mask has a second channel, the stored border term b (255 = 1), and a
pixel term weighs each pixel by w_c + w0 * b / 255 (w_c its class weight, 1 without).

A distance head (``distance_weight > 0``) adds one more term: the mean absolute error of the
head's sigmoid output against the mask's last channel, the stored distance map / 255, over the
labelled pixels (background included, whose distance is 0), weighted by ``distance_weight``:
``loss = class loss + distance_weight * distance loss``. Absolute, not squared, error: the
targets lie in [0, 1], where a squared error is tiny next to the class loss and its gradient
vanishes as the error shrinks, while the absolute error keeps a gradient of constant size, is
on the class loss's scale (so weight 1 is a sensible default), and is not led by the few
large errors at clipped (``distance_max``) or ambiguous pixels (StarDist regresses its
distances with it too).
"""
from __future__ import annotations

import dataclasses
import re

import keras
import numpy as np
import tensorflow as tf

from schemas.example import IGNORE_LABEL, SEGMENTATION

PIXEL_TERMS = ("ce", "focal")
REGION_TERMS = ("dice", "tversky")
ALIASES = {"ce": "ce", "bce": "ce", "cce": "ce", "crossentropy": "ce", "focal": "focal",
           "dice": "dice", "tversky": "tversky"}


def parse_loss(text: str) -> tuple[tuple[float, str], ...]:
    """``"0.5*ce+dice"`` -> ((0.5, "ce"), (1.0, "dice")); ValueError on anything else."""
    terms = []
    for part in text.replace(" ", "").lower().split("+"):
        match = re.fullmatch(r"(?:(\d+(?:\.\d*)?|\.\d+)\*)?([a-z]+)", part)
        if not match or match.group(2) not in ALIASES:
            raise ValueError(f"cannot parse loss term {part!r} in {text!r}; use e.g. 'focal+dice' or "
                             f"'0.5*ce+dice' with terms {sorted(set(ALIASES))}")
        weight = float(match.group(1)) if match.group(1) else 1.0
        if weight <= 0:
            raise ValueError(f"loss term weight must be > 0 in {text!r}")
        terms.append((weight, ALIASES[match.group(2)]))
    return tuple(terms)


@dataclasses.dataclass(frozen=True)
class LossSpec:
    terms: tuple[tuple[float, str], ...]
    class_weights: tuple[float, ...] | None = None
    focal_gamma: float = 2.0
    tversky_alpha: float = 0.3      # false positives
    tversky_beta: float = 0.7       # false negatives
    smooth: float = 1.0
    border_w0: float = 0.0          # > 0: y_true's second channel holds the border term (weight_map)
    distance_weight: float = 0.0    # > 0: a distance head; y_true's last channel holds the distance map

    @property
    def weights(self) -> tuple[float, ...]:
        """The weight of every (sum, count) pair: the class terms', then the distance head's."""
        return tuple(w for w, _ in self.terms) + ((self.distance_weight,) if self.distance_weight > 0 else ())

    @classmethod
    def from_text(cls, text: str, task: str = SEGMENTATION, **kwargs) -> "LossSpec":
        spec = cls(parse_loss(text), **kwargs)
        if task != SEGMENTATION and any(name in REGION_TERMS for _, name in spec.terms):
            raise ValueError(f"loss {text!r}: dice and tversky apply to segmentation only")
        return spec


def balanced_class_weights(counts) -> tuple[float, ...]:
    """n / (K * n_c), the 'balanced' weighting (mean weight over examples or pixels = 1);
    classes absent from the counts get weight 1."""
    counts = np.asarray(counts, np.float64)
    weights = np.where(counts > 0, counts.sum() / (len(counts) * np.maximum(counts, 1)), 1.0)
    return tuple(float(w) for w in weights)


def class_weights_from_setting(setting: str, stats: dict, class_names: tuple[str, ...],
                               task: str) -> tuple[float, ...] | None:
    """``--class-weights``: "none", "w0,w1,...", or "auto" (balanced from stats.json; None if
    the dataset has no counts)."""
    if setting == "none":
        return None
    if setting == "auto":
        key = "class_pixels" if task == SEGMENTATION else "labels"
        counts = stats.get(key)
        if not counts:
            return None
        return balanced_class_weights([counts.get(name, 0) for name in class_names])
    weights = tuple(float(w) for w in setting.split(","))
    if len(weights) != len(class_names) or min(weights) < 0:
        raise ValueError(f"--class-weights needs {len(class_names)} non-negative numbers, got {setting!r}")
    return weights


def split_labels(y_true):
    """Integer labels (255 -> 0) and a float validity mask, without the trailing channel."""
    labels = tf.cast(y_true, tf.int32)
    if labels.shape.rank == 4:
        labels = labels[..., 0]
    valid = tf.cast(tf.not_equal(labels, IGNORE_LABEL), tf.float32)
    return labels * tf.cast(valid, tf.int32), valid


def probabilities(logits):
    """[..., 1] sigmoid -> [..., 2] = [1 - p, p]; [..., K] -> softmax."""
    logits = tf.cast(logits, tf.float32)
    if logits.shape[-1] == 1:
        p = tf.sigmoid(logits)
        return tf.concat([1.0 - p, p], axis=-1)
    return tf.nn.softmax(logits, axis=-1)


def cross_entropy(labels, logits):
    """Per pixel / example cross-entropy from logits (Keras' own functions)."""
    logits = tf.cast(logits, tf.float32)
    if logits.shape[-1] == 1:
        return keras.losses.binary_crossentropy(tf.cast(labels, tf.float32)[..., None], logits, from_logits=True)
    return keras.losses.sparse_categorical_crossentropy(labels, logits, from_logits=True)


def focal(labels, logits, gamma: float):
    """Per pixel / example focal loss -(1 - p_t)^gamma log p_t (Keras' own functions, no alpha:
    class weights play that role)."""
    logits = tf.cast(logits, tf.float32)
    if logits.shape[-1] == 1:
        return keras.losses.binary_focal_crossentropy(
            tf.cast(labels, tf.float32)[..., None], logits, gamma=gamma, from_logits=True)
    onehot = tf.one_hot(labels, logits.shape[-1])
    return keras.losses.categorical_focal_crossentropy(onehot, logits, alpha=1.0, gamma=gamma, from_logits=True)


def tversky_index(onehot, probs, valid, alpha: float, beta: float, smooth: float):
    """Per example and class (TP + s) / (TP + alpha FP + beta FN + s) over labelled pixels.

    Keras' ``keras.losses.tversky`` applies its ``alpha`` to false negatives despite its
    docstring; here alpha weighs false positives and beta false negatives (Salehi et al.)."""
    valid = valid[..., None]
    truth, pred = onehot * valid, probs * valid
    tp = tf.reduce_sum(truth * pred, axis=(1, 2))
    fp = tf.reduce_sum((1.0 - truth) * pred, axis=(1, 2))
    fn = tf.reduce_sum(truth * (1.0 - pred), axis=(1, 2))
    return (tp + smooth) / (tp + alpha * fp + beta * fn + smooth)


def loss_sums(y_true, logits, spec: LossSpec):
    """(sums [T], counts [T]) over the local batch, one entry per term of ``spec``."""
    labels, valid = split_labels(y_true)
    pixel_weight = valid
    if spec.class_weights is not None:
        pixel_weight = valid * tf.gather(tf.constant(spec.class_weights, tf.float32), labels)
    if spec.border_w0 > 0:
        border = tf.cast(y_true[..., 1], tf.float32) * (spec.border_w0 / 255.0)
        pixel_weight = pixel_weight + valid * border
    sums, counts = [], []
    for _, name in spec.terms:
        if name in PIXEL_TERMS:
            values = cross_entropy(labels, logits) if name == "ce" else focal(labels, logits, spec.focal_gamma)
            sums.append(tf.reduce_sum(values * pixel_weight))
            counts.append(tf.reduce_sum(valid))
        else:
            probs = probabilities(logits)
            num_classes = probs.shape[-1]
            alpha, beta = (0.5, 0.5) if name == "dice" else (spec.tversky_alpha, spec.tversky_beta)
            index = tversky_index(tf.one_hot(labels, num_classes), probs, valid, alpha, beta, spec.smooth)
            sums.append(tf.reduce_sum(1.0 - tf.reduce_mean(index[:, 1:], axis=-1)))
            counts.append(tf.cast(tf.shape(labels)[0], tf.float32))
    return tf.stack(sums), tf.stack(counts)


def distance_sums(y_true, distance):
    """(sum, count) of the distance head's absolute error over the labelled pixels: ``distance``
    [B, H, W, 1] in [0, 1] against ``y_true``'s last channel / 255 (the stored distance map)."""
    _, valid = split_labels(y_true)
    truth = tf.cast(y_true[..., -1], tf.float32) / 255.0
    error = tf.abs(tf.cast(distance[..., 0], tf.float32) - truth)
    return tf.reduce_sum(error * valid), tf.reduce_sum(valid)


def combine(sums, counts, spec: LossSpec):
    """sum_t w_t * sums_t / counts_t (counts should be global); empty counts contribute 0."""
    weights = tf.constant(spec.weights, tf.float32)
    return tf.reduce_sum(weights * tf.math.divide_no_nan(sums, counts))


def head_losses(sums, counts, spec: LossSpec) -> dict:
    """With a distance head, each head's loss for the logs: ``classes`` (the weighted class terms)
    and ``distance`` (its mean absolute error, unweighted), so loss = classes + distance_weight *
    distance; {} without one."""
    if spec.distance_weight <= 0:
        return {}
    per_term = tf.math.divide_no_nan(sums, counts)
    classes = tf.reduce_sum(tf.constant([w for w, _ in spec.terms], tf.float32) * per_term[:-1])
    return {"classes": classes, "distance": per_term[-1]}

