"""How objects are scored: the definitions ``tessera evaluate`` reports and the trainer's
object calibration (``--calibrate rand|object-f1``) optimises, in one place so the threshold
a card calibrates means what evaluate measures (pure numpy / scikit-image).

Objects are the 4-connected components of equal non-zero class, or instance ids as given;
matching at IoU > t, strictly, as the DSB 2018 metric (at IoU >= 0.5 a truth object split in
two equal halves would match both, and F1 could exceed 1); the adapted Rand error is scikit-image's (alpha 0.5, truth
background excluded). Panoptic quality (Kirillov et al. 2019) matches at IoU > 0.5 (strictly,
so matches are unique): PQ = (sum of the matched pairs' IoU) / (TP + FP/2 + FN/2) = SQ x RQ,
SQ = the mean IoU of the matched pairs, RQ = TP / (TP + FP/2 + FN/2). Counts (and the IoU
sum) add up over images, so overall values are computed from the sums, never by averaging
per-image scores. ``pipelines.evaluate.objects`` and ``scores`` define the metrics in full.
"""
from __future__ import annotations

import numpy as np
import scipy.sparse
from skimage.measure import label as connected_components
from skimage.metrics import adapted_rand_error, contingency_table

THRESHOLDS = np.round(np.arange(0.5, 0.96, 0.05), 2)


def objects_of(labels: np.ndarray, ignored: np.ndarray, instances: bool = False) -> np.ndarray:
    """Object ids (0 = none): instance ids as given, else components of equal non-zero class."""
    labels = np.where(ignored, 0, labels)
    if instances:
        return labels.astype(np.int64)
    return connected_components(labels, background=0, connectivity=1)


def object_counts(truth_ids: np.ndarray, pred_ids: np.ndarray) -> dict:
    """Truth and predicted objects and TP at each of THRESHOLDS (IoU > t), and the TP and the
    sum of the matched pairs' IoU for panoptic quality (IoU > 0.5) (one image)."""
    table = scipy.sparse.coo_array(contingency_table(truth_ids, pred_ids, sparse_type="array"))
    areas_true = np.asarray(table.sum(axis=1)).ravel()
    areas_pred = np.asarray(table.sum(axis=0)).ravel()
    keep = (table.row > 0) & (table.col > 0)
    rows, cols, overlap = table.row[keep], table.col[keep], table.data[keep].astype(np.float64)
    iou = overlap / (areas_true[rows] + areas_pred[cols] - overlap)
    return {"true": int(np.count_nonzero(areas_true[1:])), "pred": int(np.count_nonzero(areas_pred[1:])),
            "tp": [int(np.count_nonzero(iou > t)) for t in THRESHOLDS],
            "pq_tp": int(np.count_nonzero(iou > 0.5)), "pq_iou": float(iou[iou > 0.5].sum())}


def add_counts(a: dict | None, b: dict) -> dict:
    """The counts of two sets of images together (lists add element by element)."""
    if a is None:
        return {k: (list(v) if isinstance(v, list) else v) for k, v in b.items()}
    return {k: ([x + y for x, y in zip(v, b[k])] if isinstance(v, list) else v + b[k]) for k, v in a.items()}


def object_summary(counts: dict | None) -> dict:
    """Precision, recall, F1 and AP at IoU 0.5, F1 and AP averaged over 0.5:0.95, and panoptic
    quality (PQ, SQ, RQ). Both sides empty: 1.0 (nothing to find, nothing claimed); else 0/0
    is 0.0."""
    if counts is None:
        return {}
    tp = np.asarray(counts["tp"], np.float64)
    fp, fn = counts["pred"] - tp, counts["true"] - tp
    empty = counts["pred"] == 0 and counts["true"] == 0

    def ratio(num, den):
        return np.where(den > 0, num / np.maximum(den, 1), 1.0 if empty else 0.0)

    precision, recall = ratio(tp, tp + fp), ratio(tp, tp + fn)
    f1, ap = ratio(2 * tp, 2 * tp + fp + fn), ratio(tp, tp + fp + fn)
    summary = {"object_precision": float(precision[0]), "object_recall": float(recall[0]),
               "object_f1": float(f1[0]), "object_ap50": float(ap[0]),
               "object_f1_50_95": float(f1.mean()), "object_ap_50_95": float(ap.mean())}
    if "pq_tp" in counts:
        pq_tp, pq_iou = counts["pq_tp"], counts["pq_iou"]
        half = pq_tp + (counts["pred"] - pq_tp + counts["true"] - pq_tp) / 2
        summary.update(object_pq=float(ratio(pq_iou, half)), object_sq=float(ratio(pq_iou, pq_tp)),
                       object_rq=float(ratio(pq_tp, half)))
    return {**summary, "objects_true": counts["true"], "objects_pred": counts["pred"]}


def ids_table(truth_ids: np.ndarray, pred_ids: np.ndarray):
    """The contingency table of truth objects (rows; background 0 excluded) vs predicted ones."""
    return contingency_table(truth_ids, pred_ids, ignore_labels=(0,), sparse_type="array")


def adapted_rand(table) -> float:
    """skimage's adapted Rand error (alpha 0.5) of a contingency table; NaN when undefined."""
    table = scipy.sparse.csr_array(table)
    if table.nnz == 0:
        return float("nan")
    with np.errstate(divide="ignore", invalid="ignore"):
        error, _, _ = adapted_rand_error(table=table)
    return float(error)


def combined_table(tables) -> scipy.sparse.csr_array:
    """Per-image tables side by side (block diagonal): pair counts add up across images."""
    tables = [scipy.sparse.csr_array(t) for t in tables]
    if not tables:
        return scipy.sparse.csr_array((0, 0), dtype=np.int64)
    return scipy.sparse.csr_array(scipy.sparse.block_diag(tables, format="csr"))
