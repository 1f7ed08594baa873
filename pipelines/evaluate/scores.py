"""Pure numpy scores for ``tessera evaluate``: confusion counts and the metrics read from them.

Conventions (one rule for every ratio):

- Confusion matrices have rows = truth, columns = prediction. Truth pixels equal to
  ``IGNORE_LABEL`` (255) are not counted anywhere.
- A ratio whose denominator is zero is **1.0 when truth and prediction are both empty for
  that class** (nothing to find, nothing claimed: Dice, IoU, precision, recall, F-beta of two
  empty masks are all 1) and **0.0 otherwise** (e.g. precision when nothing was predicted
  but something was there; the same as scikit-learn's ``zero_division=0``).
- Segmentation summaries (``dice``, ``iou``, ...) are the mean over the *foreground*
  classes 1..K-1 that occur in the truth or the prediction (for a binary task: exactly the
  foreground class); 1.0 when no foreground class occurs in either. ``pixel_error`` is the
  fraction of labelled pixels whose class is wrong (all classes).
- Classification: ``macro_f1`` is the mean F1 over classes that occur in the truth or the
  predictions (what scikit-learn does when ``labels`` is not given).
- Adapted Rand error (ISBI 2012 / SNEMI3D, via ``skimage.metrics.adapted_rand_error``):
  both masks become 4-connected components of equal non-zero class
  (``skimage.measure.label(..., background=0, connectivity=1)``), after truth-ignored
  pixels are set to 0 in both. Truth label 0 (background / membrane, and ignored pixels)
  is excluded from the score (``ignore_labels=(0,)``, the "foreground-restricted" score);
  predicted background stays in the score as one segment, as scikit-image does. It is NaN
  (undefined) when the truth has no pair of pixels in one foreground component. The
  overall value is computed from the block-diagonal sum of the per-image contingency
  tables, i.e. from summed pair counts, not the mean of per-image errors.
"""
from __future__ import annotations

import numpy as np

from pipelines.evaluate.objects import objects_of
from schemas.example import IGNORE_LABEL
from schemas.object_scores import adapted_rand, combined_table, ids_table  # noqa: F401

CLASS_METRICS = ("dice", "iou", "precision", "recall", "fbeta")


def confusion_matrix(truth: np.ndarray, pred: np.ndarray, num_classes: int) -> np.ndarray:
    """(K, K) int64 counts, rows = truth class, columns = predicted class; truth 255 skipped."""
    truth = np.asarray(truth)
    pred = np.asarray(pred)
    if truth.shape != pred.shape:
        raise ValueError(f"truth shape {truth.shape} != prediction shape {pred.shape}")
    keep = truth != IGNORE_LABEL
    t = truth[keep].astype(np.int64)
    p = pred[keep].astype(np.int64)
    for name, values in (("truth", t), ("prediction", p)):
        if values.size and (values.min() < 0 or values.max() >= num_classes):
            raise ValueError(
                f"{name} holds class id {int(values.max())} outside 0..{num_classes - 1}")
    counts = np.bincount(t * num_classes + p, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes)


def _ratio(num: np.ndarray, den: np.ndarray, both_empty: np.ndarray) -> np.ndarray:
    num = np.asarray(num, dtype=np.float64)
    den = np.asarray(den, dtype=np.float64)
    out = np.where(both_empty, 1.0, 0.0)
    np.divide(num, den, out=out, where=den > 0)
    return out


def class_scores(confusion: np.ndarray, beta: float = 1.0) -> dict[str, np.ndarray]:
    """Per-class one-vs-rest scores from a confusion matrix: arrays of length K."""
    confusion = np.asarray(confusion, dtype=np.int64)
    tp = np.diag(confusion)
    fp = confusion.sum(axis=0) - tp
    fn = confusion.sum(axis=1) - tp
    empty = (tp + fp + fn) == 0
    b2 = beta * beta
    return {
        "tp": tp, "fp": fp, "fn": fn, "support": tp + fn,
        "dice": _ratio(2 * tp, 2 * tp + fp + fn, empty),
        "iou": _ratio(tp, tp + fp + fn, empty),
        "precision": _ratio(tp, tp + fp, empty),
        "recall": _ratio(tp, tp + fn, empty),
        "fbeta": _ratio((1 + b2) * tp, (1 + b2) * tp + b2 * fn + fp, empty),
        "present": ~empty,
    }


def pixel_error(confusion: np.ndarray) -> float:
    total = int(np.sum(confusion))
    return 0.0 if total == 0 else float(total - np.trace(confusion)) / total


def segmentation_summary(confusion: np.ndarray, beta: float = 1.0) -> dict[str, float]:
    """Dice, IoU, precision, recall, F-beta (foreground mean, see module doc), pixel error."""
    per_class = class_scores(confusion, beta)
    foreground = np.flatnonzero(per_class["present"][1:]) + 1
    summary = {
        name: float(per_class[name][foreground].mean()) if foreground.size else 1.0
        for name in CLASS_METRICS
    }
    summary["pixel_error"] = pixel_error(confusion)
    return summary


def rand_table(truth: np.ndarray, pred: np.ndarray):
    """The contingency table of truth components (rows) vs predicted components (columns)."""
    ignored = truth == IGNORE_LABEL
    return ids_table(objects_of(truth, ignored), objects_of(pred, ignored))


def label_confusion(truth: list[str], pred: list[str], class_names: list[str]) -> np.ndarray:
    """(K, K) counts of (truth label, predicted label) pairs; unknown labels raise."""
    index = {name: i for i, name in enumerate(class_names)}
    unknown = sorted({x for x in list(truth) + list(pred) if x not in index})
    if unknown:
        raise ValueError(f"labels {unknown} are not among the classes {class_names}")
    k = len(class_names)
    codes = np.array([index[t] * k + index[p] for t, p in zip(truth, pred)], dtype=np.int64)
    return np.bincount(codes, minlength=k * k).reshape(k, k)


def classification_summary(confusion: np.ndarray) -> dict:
    """Accuracy, macro-F1 and per-class precision / recall / F1 / support (lists)."""
    per_class = class_scores(confusion, beta=1.0)
    total = int(np.sum(confusion))
    present = per_class["present"]
    return {
        "accuracy": float(np.trace(confusion)) / total if total else 0.0,
        "macro_f1": float(per_class["fbeta"][present].mean()) if present.any() else 0.0,
        "precision": per_class["precision"].tolist(),
        "recall": per_class["recall"].tolist(),
        "f1": per_class["fbeta"].tolist(),
        "support": per_class["support"].tolist(),
    }


def seam_band(height: int, width: int, core: int, stride: int, band: int) -> np.ndarray:
    """(H, W) bool: pixels within ``band`` px of an edge between neighbouring tile cores (the
    image's own border is not a seam). Cores start at multiples of ``stride`` (the core grid)."""
    def near(length: int) -> np.ndarray:
        starts = np.arange(0, length, stride)
        edges = np.unique(np.concatenate([starts, starts + core]))
        edges = edges[(edges > 0) & (edges < length)]
        if not len(edges):
            return np.zeros(length, bool)
        index = np.arange(length)
        distance = np.abs(index[:, None] - edges[None, :]).min(axis=1)
        return distance < band
    return near(height)[:, None] | near(width)[None, :]


def seam_errors(truth: np.ndarray, pred: np.ndarray, in_band: np.ndarray) -> tuple[int, int, int, int]:
    """(errors near seams, labelled pixels near seams, errors inside, labelled pixels inside)."""
    labelled = truth != IGNORE_LABEL
    wrong = labelled & (truth != pred)
    return (int(wrong[in_band].sum()), int(labelled[in_band].sum()),
            int(wrong[~in_band].sum()), int(labelled[~in_band].sum()))
