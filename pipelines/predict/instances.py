"""Instance labels of a predicted mask (``--instances``): an id per object, 0 background.

``components``: the 4- or 8-connected components of each class > 0 (touching objects of
one class become one). ``watershed``: each component is split at the necks between its
touching objects — seeds are the local maxima of the distance to the background at least
``min_distance`` px apart (``skimage.feature.peak_local_max``), grown over the negated
distance by ``skimage.segmentation.watershed`` inside the component (the classic
distance-transform watershed). Pure numpy / scipy / scikit-image.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage
from skimage.feature import peak_local_max
from skimage.segmentation import watershed

from pipelines.predict.objects import label_table

METHODS = ("none", "components", "watershed")


def instance_labels(mask: np.ndarray, method: str = "components", connectivity: int = 4,
                    min_distance: int = 5) -> np.ndarray:
    """(H, W) uint32 instance ids of the classes > 0 of ``mask``, numbered in raster order
    of their first pixel within each class, classes in order."""
    if method not in METHODS[1:]:
        raise ValueError(f"instances must be one of {METHODS[1:]}, got {method!r}")
    structure = ndimage.generate_binary_structure(2, 1 if connectivity == 4 else 2)
    labels = np.zeros(mask.shape, np.uint32)
    offset = 0
    for cls in np.unique(mask[mask > 0]):
        region = mask == cls
        found, n = ndimage.label(region, structure)
        if method == "watershed" and n:
            distance = ndimage.distance_transform_edt(region)
            peaks = peak_local_max(distance, min_distance=min_distance, labels=found, exclude_border=False)
            seeds = np.zeros(mask.shape, np.int64)
            seeds[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
            values, first = np.unique(found.ravel(), return_index=True)        # a component without a peak
            unseeded = np.isin(values, found[tuple(peaks.T)], invert=True) & (values > 0)   # seeds itself
            seeds.ravel()[first[unseeded]] = len(peaks) + values[unseeded]
            found = watershed(-distance, seeds, mask=region, connectivity=1 if connectivity == 4 else 2)
            found, n = _renumbered(found)
        labels[found > 0] = found[found > 0] + offset
        offset += n
    return labels


def _renumbered(labels: np.ndarray) -> tuple[np.ndarray, int]:
    """Ids 1..n in raster order of each label's first pixel (deterministic numbering)."""
    flat = labels.ravel()
    present = flat > 0
    values, first = np.unique(flat[present], return_index=True)
    order = values[np.argsort(first)]
    lookup = np.zeros(int(labels.max()) + 1, np.int64)
    lookup[order] = np.arange(1, len(order) + 1)
    return lookup[labels], len(order)


def instance_table(labels: np.ndarray, mask: np.ndarray, confidence: np.ndarray) -> dict:
    """Per instance (ids 1..n) the fields ``label_outputs.objects_table`` takes (object_id =
    the instance id): ``objects.label_table`` of the instance image."""
    n = int(labels.max()) if labels.size else 0
    return {"object_id": np.arange(1, n + 1, dtype=np.int64), **label_table(labels, n, mask, confidence)}
