"""Decision threshold of a binary model, calibrated on validation histograms of P(foreground).

``histograms`` is [2, B]: counts of labelled background (row 0) and foreground (row 1)
pixels whose P(foreground) falls in bin i = [i/B, (i+1)/B). A pixel is predicted
foreground when p >= t, and the candidate thresholds are the bin edges i/B, so the counts
at each threshold are exact for those edges.
"""
from __future__ import annotations

import numpy as np

from trainer.metrics import segmentation_scores


def counts_at_thresholds(histograms) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(thresholds [B], tp, fp, fn) for t = i/B, i = 0..B-1."""
    histograms = np.asarray(histograms, np.float64)
    bins = histograms.shape[1]
    negatives, positives = histograms[0], histograms[1]
    tp = positives[::-1].cumsum()[::-1]
    fp = negatives[::-1].cumsum()[::-1]
    fn = positives.sum() - tp
    return np.arange(bins) / bins, tp, fp, fn


def _fbeta(tp, fp, fn, beta: float):
    b2 = beta * beta
    den = (1 + b2) * tp + b2 * fn + fp
    return np.divide((1 + b2) * tp, den, out=np.zeros_like(den), where=den > 0)


def calibrate_threshold(histograms, beta: float = 1.0, target_recall: float = 0.0) -> tuple[float, str]:
    """(threshold, rule). Without a target: the threshold of maximum F-beta (the highest
    one among ties). With ``target_recall``: the highest threshold whose recall still
    reaches the target (the most precise such threshold); 0.0 if the positives are absent."""
    thresholds, tp, fp, fn = counts_at_thresholds(histograms)
    if target_recall > 0:
        positives = tp[0]
        if positives == 0:
            return 0.0, f"recall >= {target_recall:g} on val (no foreground in val: threshold 0)"
        reaching = np.nonzero(tp / positives >= target_recall)[0]
        return float(thresholds[reaching[-1]]), f"recall >= {target_recall:g} on val"
    scores = _fbeta(tp, fp, fn, beta)
    best = np.nonzero(scores == scores.max())[0][-1]
    return float(thresholds[best]), f"max F{beta:g} on val"


def scores_at(histograms, threshold: float, beta: float = 1.0) -> dict[str, float]:
    """Foreground dice, iou, precision, recall, fbeta at ``threshold`` (one of the bin edges),
    with the conventions of ``trainer.metrics`` (empty truth and prediction score 1)."""
    thresholds, tp, fp, fn = counts_at_thresholds(histograms)
    i = int(np.clip(np.searchsorted(thresholds, threshold - 1e-9), 0, len(thresholds) - 1))
    return segmentation_scores(np.array([[0.0, fp[i]], [fn[i], tp[i]]]), beta)
