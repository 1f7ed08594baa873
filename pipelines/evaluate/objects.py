"""Object-level scores for ``tessera evaluate`` (pure numpy / scikit-image).

What microscopy and pathology users count are objects (cells, nuclei), so besides pixel
scores:

- **Objects** are the 4-connected components of equal non-zero class (as for the adapted
  Rand error), or the ids of an instance label image (``--truth-instances``: touching cells
  stay apart). Truth-ignored pixels are removed from both sides first.
- **Matching**: a predicted and a truth object match at threshold t when their IoU > t
  (strictly, as DSB 2018 scores them); for t >= 0.5 a match is unique, so TP(t) is the
  number of pairs with IoU > t. Then
  precision TP/(TP+FP), recall TP/(TP+FN), F1, and the cell-segmentation literature's
  AP(t) = TP/(TP+FP+FN) (StarDist's "accuracy"), at t = 0.5 and averaged over
  t = 0.50, 0.55, ..., 0.95. Sums over images give the overall values.
- **Panoptic quality** (Kirillov et al. 2019, one "thing" class): matching at IoU > 0.5
  (strictly: unique matches), PQ = SQ x RQ with SQ = the mean IoU of the matched pairs and
  RQ = TP / (TP + FP/2 + FN/2), i.e. PQ = (sum of matched IoUs) / (TP + FP/2 + FN/2); the
  overall value from the summed TP, FP, FN and IoU sum of all images.
- **Predicted objects** are the ids of the predicted instance labels when the prediction has
  them (``instances_path``: ``instances/<id>.tif``, or a large image's
  ``instances/<id>.ome.zarr`` pyramid, its full-resolution level read within --max-pixels),
  else the components of the predicted mask.
- **Variation of information** (Meila 2003, in bits), split into false merges H(truth|pred)
  and false splits H(pred|truth), truth background excluded (what
  ``skimage.metrics.variation_of_information`` computes, from the summed tables).
- **V_rand (ISBI 2012 protocol)**: from the foreground probability p, for each threshold
  t in 0.0, 0.1, ..., 1.0 the background {p < t} is thinned to one-pixel lines
  (``skimage.morphology.thin``, framed so lines keep reaching the image border) and the rest
  split into 4-connected cells; V_rand is the best
  Rand F-score (1 - adapted Rand error, truth background excluded) over the thresholds.
"""
from __future__ import annotations

import numpy as np
import scipy.sparse
from skimage.measure import label as connected_components
from skimage.metrics import adapted_rand_error, contingency_table
from skimage.morphology import thin

from schemas.example import IGNORE_LABEL
from schemas.object_scores import THRESHOLDS, add_counts, object_counts, object_summary, objects_of  # noqa: F401

ISBI_THRESHOLDS = np.round(np.arange(0.0, 1.01, 0.1), 1)


def information_variation(table) -> dict:
    """VI (bits) of a contingency table (rows truth, its background row already excluded), as
    false merges H(truth | pred) + false splits H(pred | truth)."""
    table = scipy.sparse.coo_array(table)
    total = float(table.sum())
    if total == 0:
        return {"vi": float("nan"), "vi_merge": float("nan"), "vi_split": float("nan")}
    p = table.data / total
    keep = p > 0
    rows, cols, p = table.row[keep], table.col[keep], p[keep]
    px = np.bincount(rows, weights=p, minlength=table.shape[0])
    py = np.bincount(cols, weights=p, minlength=table.shape[1])
    merge = float(-(p * np.log2(p / py[cols])).sum()) + 0.0
    split = float(-(p * np.log2(p / px[rows])).sum()) + 0.0
    return {"vi": merge + split, "vi_merge": merge, "vi_split": split}


def vrand_isbi(truth_ids: np.ndarray, foreground: np.ndarray, ignored: np.ndarray) -> tuple[float, float]:
    """(best V_rand, its threshold) by the ISBI 2012 protocol (see the module docstring)."""
    best, at = float("nan"), float("nan")
    for t in ISBI_THRESHOLDS:
        boundaries = thin(np.pad(foreground < t, 1, constant_values=True))[1:-1, 1:-1]   # lines reach the border
        cells = connected_components(np.where(ignored, 0, ~boundaries), background=0, connectivity=1)
        table = contingency_table(truth_ids, cells, ignore_labels=(0,), sparse_type="array")
        if scipy.sparse.csr_array(table).nnz == 0:
            continue
        with np.errstate(divide="ignore", invalid="ignore"):
            error, _, _ = adapted_rand_error(table=scipy.sparse.csr_array(table))
        if not np.isnan(error) and (np.isnan(best) or 1 - error > best):
            best, at = float(1 - error), float(t)
    return best, at


def foreground_of(probabilities: np.ndarray) -> np.ndarray:
    """The probability of any class > 0 from (H, W, K) class probabilities."""
    return np.asarray(probabilities[..., 1:], np.float32).sum(axis=-1)


def ignored_of(truth: np.ndarray) -> np.ndarray:
    return truth == IGNORE_LABEL
