"""Ignore-aware metrics from confusion matrices: Dice, IoU, precision, recall, F-beta for
segmentation; accuracy and macro-F1 for classification.

Same conventions as ``tessera evaluate``: rows = truth, columns = prediction; truth 255
is not counted; a ratio with a zero denominator is 1.0 when truth and prediction are both
empty for that class and 0.0 otherwise; segmentation summaries are the mean over the
foreground classes (1..K-1) present in truth or prediction (1.0 if none is); macro-F1 is
the mean over classes present in truth or prediction.

Confusion matrices accumulate in TensorFlow (summed over replicas); the scores are numpy.
"""
from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from trainer.losses import probabilities, split_labels

SEGMENTATION_METRICS = ("dice", "iou", "precision", "recall", "fbeta")
HISTOGRAM_BINS = 1000   # resolution of P(foreground) histograms for threshold calibration


def predicted_classes(logits, threshold: float = 0.5):
    """Class ids: P(foreground) >= threshold for one sigmoid channel, argmax otherwise."""
    logits = tf.cast(logits, tf.float32)
    if logits.shape[-1] == 1:
        return tf.cast(tf.sigmoid(logits[..., 0]) >= threshold, tf.int32)
    return tf.argmax(logits, axis=-1, output_type=tf.int32)


def confusion_matrix(y_true, logits, num_classes: int, threshold: float = 0.5):
    """[K, K] float32 counts over labelled pixels (or examples)."""
    labels, valid = split_labels(y_true)
    predictions = predicted_classes(logits, threshold)
    return tf.math.confusion_matrix(tf.reshape(labels, [-1]), tf.reshape(predictions, [-1]), num_classes,
                                    weights=tf.reshape(valid, [-1]), dtype=tf.float32)


def foreground_histograms(y_true, logits, bins: int):
    """Binary tasks: histograms of P(foreground) over [0, 1] for labelled foreground and
    background pixels ([2, bins]: row 0 background, row 1 foreground), for calibration."""
    labels, valid = split_labels(y_true)
    p = tf.reshape(probabilities(logits)[..., 1], [-1])
    index = tf.clip_by_value(tf.cast(p * bins, tf.int32), 0, bins - 1)   # NaN (diverged) casts below 0
    row = tf.reshape(labels, [-1])
    flat = row * bins + index
    return tf.reshape(tf.math.bincount(flat, weights=tf.reshape(valid, [-1]), minlength=2 * bins,
                                       maxlength=2 * bins, dtype=tf.float32), [2, bins])


def _ratio(num, den, both_empty):
    num, den = np.asarray(num, np.float64), np.asarray(den, np.float64)
    out = np.where(both_empty, 1.0, 0.0)
    np.divide(num, den, out=out, where=den > 0)
    return out


def class_scores(confusion, beta: float = 1.0) -> dict[str, np.ndarray]:
    """Per-class one-vs-rest scores (arrays of length K) and which classes are present."""
    confusion = np.asarray(confusion, np.float64)
    tp = np.diag(confusion)
    fp = confusion.sum(axis=0) - tp
    fn = confusion.sum(axis=1) - tp
    empty = (tp + fp + fn) == 0
    b2 = beta * beta
    return {"dice": _ratio(2 * tp, 2 * tp + fp + fn, empty), "iou": _ratio(tp, tp + fp + fn, empty),
            "precision": _ratio(tp, tp + fp, empty), "recall": _ratio(tp, tp + fn, empty),
            "fbeta": _ratio((1 + b2) * tp, (1 + b2) * tp + b2 * fn + fp, empty), "present": ~empty}


def segmentation_scores(confusion, beta: float = 1.0) -> dict[str, float]:
    scores = class_scores(confusion, beta)
    present = scores["present"][1:]
    out = {}
    for name in SEGMENTATION_METRICS:
        values = scores[name][1:][present]
        out[name] = float(values.mean()) if values.size else 1.0
    return out


def classification_scores(confusion) -> dict[str, float]:
    confusion = np.asarray(confusion, np.float64)
    total = confusion.sum()
    scores = class_scores(confusion)
    f1 = scores["fbeta"][scores["present"]]
    return {"accuracy": float(np.trace(confusion) / total) if total else 0.0,
            "macro_f1": float(f1.mean()) if f1.size else 0.0}


@keras.saving.register_keras_serializable(package="tessera")
class SegmentationScore(keras.metrics.Metric):
    """One of dice / iou / precision / recall / fbeta as a Keras metric (accumulates a
    confusion matrix over labelled pixels; y_pred are logits)."""

    def __init__(self, metric: str = "dice", num_classes: int = 2, beta: float = 1.0, threshold: float = 0.5,
                 name: str | None = None, **kwargs):
        if metric not in SEGMENTATION_METRICS:
            raise ValueError(f"metric must be one of {SEGMENTATION_METRICS}, got {metric!r}")
        super().__init__(name=name or metric, **kwargs)
        self.metric, self.num_classes, self.beta, self.threshold = metric, num_classes, beta, threshold
        self.confusion = self.add_variable((num_classes, num_classes), initializer="zeros", name="confusion")

    def update_state(self, y_true, y_pred, sample_weight=None):
        self.confusion.assign_add(confusion_matrix(y_true, y_pred, self.num_classes, self.threshold))

    def result(self):
        return tf.numpy_function(lambda c: np.float32(segmentation_scores(c, self.beta)[self.metric]),
                                 [self.confusion.value], tf.float32)

    def reset_state(self):
        self.confusion.assign(tf.zeros_like(self.confusion))

    def get_config(self):
        return {**super().get_config(), "metric": self.metric, "num_classes": self.num_classes,
                "beta": self.beta, "threshold": self.threshold}
