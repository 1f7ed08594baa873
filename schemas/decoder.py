"""The decoder: from a model's outputs to instance labels (uint32, 0 = background, ids 1..n).

One definition for ``tessera predict`` (whole images, strips and blocks of large images) and
the trainer's calibration, so the thresholds a model card records mean what predict does
(a contract between the two steps, like ``object_scores``). Pure numpy / scipy / scikit-image.

Modes (``DecoderParams.mode``):

- ``components``: the connected components of each class > 0 of a class-id mask (touching
  objects of one class become one object); any model.
- ``watershed``: ``components``, each split at the necks between its touching objects: seeds
  are the maxima of the distance to the component's outside at least ``min_distance`` px
  apart (``skimage.feature.peak_local_max``), grown over the negated distance inside the
  component (the classic distance-transform watershed of a binary mask; a component without
  a peak is one object); any model, no boundary head needed.
- ``seeded``: a boundary model (classes background / boundary / interior, ``BOUNDARY_CLASSES``).
  The foreground is P(boundary) + P(interior) >= ``foreground``; seeds are the connected
  components of P(interior) >= ``seed`` inside it, grown over P(boundary) by a watershed
  within the foreground (touching objects meet where the boundary is most likely); a
  foreground component without a seed is one object. Objects under ``min_size`` px are
  dropped.
- ``partition``: ``seeded``, then every object expanded by up to ``expand`` px into the
  background, the nearest object winning (``skimage.segmentation.expand_labels``): EM
  membranes, where every pixel of a thin membrane belongs to one of the cells it separates.

Numbering: objects are numbered 1..n in raster order of their first pixel (their *anchor*).
Every step is local (components, a watershed confined to one foreground or class component,
an expansion of at most ``expand`` px), so a window of an image that holds an object, its
foreground component and ``expand`` px around them (one more px for ``watershed``'s distance)
decodes it to the same pixels as the whole image does, up to its number: what block-wise
decoding of large images relies on.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
from scipy import ndimage
from skimage.feature import peak_local_max
from skimage.segmentation import expand_labels, watershed

from schemas.example import BOUNDARY_CLASSES  # noqa: F401  (a boundary model's classes, in order)

MODES = ("components", "watershed", "seeded", "partition")
CLASS_MODES = ("components", "watershed")                  # read a class-id mask: any model
BOUNDARY_MODES = ("seeded", "partition")                   # read a boundary model's probabilities
MAX_OBJECTS = 2 ** 32 - 1                                    # uint32 ids


@dataclasses.dataclass(frozen=True)
class DecoderParams:
    mode: str = "components"
    foreground: float = 0.5     # seeded/partition: P(boundary) + P(interior) at least this is foreground
    seed: float = 0.5           # ...and P(interior) at least this (inside the foreground) is a seed
    min_size: int = 0           # objects smaller than this (px) are dropped
    expand: int = 0             # partition: px an object grows into the background
    connectivity: int = 4       # 4 or 8: components, seeds and watershed
    min_distance: int = 5       # watershed: its seeds (distance maxima) at least this many px apart

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"decoder mode must be one of {MODES}, got {self.mode!r}")
        if not (0.0 < self.foreground <= 1.0 and 0.0 < self.seed <= 1.0):
            raise ValueError(f"decoder thresholds must be in (0, 1], got foreground={self.foreground}, "
                             f"seed={self.seed}")
        if self.min_size < 0 or self.expand < 0:
            raise ValueError(f"min_size and expand must be >= 0, got {self.min_size}, {self.expand}")
        if self.connectivity not in (4, 8):
            raise ValueError(f"connectivity must be 4 or 8, got {self.connectivity}")
        if self.min_distance < 1:
            raise ValueError(f"min_distance must be >= 1, got {self.min_distance}")

    @property
    def needs_boundary_model(self) -> bool:
        return self.mode in BOUNDARY_MODES

    @property
    def reach(self) -> int:
        """How far (px) beyond an object's own pixels its decoding looks: the expansion."""
        return self.expand if self.mode == "partition" else 0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "DecoderParams":
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


def decode(params: DecoderParams, probabilities: np.ndarray | None = None,
           classes: np.ndarray | None = None) -> np.ndarray:
    """(H, W) uint32 instance labels. ``components`` / ``watershed`` read ``classes`` (H, W class
    ids); ``seeded`` / ``partition`` read ``probabilities`` (H, W, 3) of BOUNDARY_CLASSES."""
    structure = ndimage.generate_binary_structure(2, 1 if params.connectivity == 4 else 2)
    if params.mode in CLASS_MODES:
        if classes is None or classes.ndim != 2:
            shape = None if classes is None else classes.shape
            raise ValueError(f"the {params.mode} decoder needs an (H, W) class-id mask, got {shape}")
        labels = class_components(classes, structure)
        if params.mode == "watershed":
            labels = split_at_necks(classes, labels, params.min_distance, params.connectivity)
        return renumbered(_drop_small(labels, params.min_size))
    if probabilities is None or probabilities.ndim != 3 or probabilities.shape[-1] != len(BOUNDARY_CLASSES):
        shape = None if probabilities is None else probabilities.shape
        raise ValueError(f"the {params.mode} decoder needs (H, W, 3) probabilities of {BOUNDARY_CLASSES}, "
                         f"got {shape}")
    return finished(params, grown(params, probabilities))


def grown(params: DecoderParams, probabilities: np.ndarray) -> np.ndarray:
    """A boundary model's objects before ``finished``: the seeds grown over P(boundary) within
    the foreground (int64, unnumbered). Depends on ``foreground``, ``seed`` and ``connectivity``
    only, so decoders that differ in the rest share it (the calibration's grid)."""
    structure = ndimage.generate_binary_structure(2, 1 if params.connectivity == 4 else 2)
    boundary = np.asarray(probabilities[..., 1], np.float32)
    interior = np.asarray(probabilities[..., 2], np.float32)
    foreground = (boundary + interior) >= params.foreground
    seeds, n = ndimage.label((interior >= params.seed) & foreground, structure)
    regions, m = ndimage.label(foreground, structure)
    has_seed = np.zeros(m + 1, bool)
    has_seed[regions[seeds > 0]] = True
    if not has_seed[1:].all():       # a foreground component without a seed is one object
        lone = ~has_seed[regions] & (regions > 0)
        seeds[lone] = regions[lone] + n
    return watershed_by_region(boundary, seeds, regions, params.connectivity)


def finished(params: DecoderParams, labels: np.ndarray) -> np.ndarray:
    """``grown`` labels to the decoder's instances: objects under ``min_size`` dropped, a
    partition's expansion, ids 1..n."""
    labels = _drop_small(labels, params.min_size)
    if params.mode == "partition" and params.expand > 0:
        labels = expand_labels(labels, params.expand)
    return renumbered(labels)


def boundary_foreground(probabilities: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """(H, W) uint8 1 where P(boundary) + P(interior) >= ``threshold``: a boundary model's
    foreground as a class-id mask (what the class modes read for such a model)."""
    if probabilities.ndim != 3 or probabilities.shape[-1] != len(BOUNDARY_CLASSES):
        raise ValueError(f"expected (H, W, 3) probabilities of {BOUNDARY_CLASSES}, got {probabilities.shape}")
    total = np.asarray(probabilities[..., 1], np.float32) + np.asarray(probabilities[..., 2], np.float32)
    return (total >= threshold).astype(np.uint8)


def split_at_necks(classes: np.ndarray, labels: np.ndarray, min_distance: int, connectivity: int) -> np.ndarray:
    """``labels`` (components of ``classes``) split by the distance-transform watershed of each
    class (int64, unnumbered order; a component without a distance peak stays whole)."""
    out = np.zeros(labels.shape, np.int64)
    offset = 0
    for cls in np.unique(classes[classes > 0]):
        region = classes == cls
        found = np.where(region, labels, 0)
        distance = ndimage.distance_transform_edt(region)
        peaks = peak_local_max(distance, min_distance=min_distance, labels=found, exclude_border=False)
        seeds = np.zeros(labels.shape, np.int64)
        seeds[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
        values, first = np.unique(found.ravel(), return_index=True)
        unseeded = np.isin(values, found[tuple(peaks.T)], invert=True) & (values > 0)
        seeds.ravel()[first[unseeded]] = len(peaks) + values[unseeded]
        split = watershed_by_region(-distance, seeds, found, connectivity)
        out[split > 0] = split[split > 0] + offset
        offset += int(split.max()) if split.size else 0
    return out


def watershed_by_region(priority: np.ndarray, seeds: np.ndarray, regions: np.ndarray,
                        connectivity: int) -> np.ndarray:
    """skimage's watershed of ``seeds`` over ``priority``, run on each region (a connected
    component of the mask, every one holding a seed) alone: a region with one seed is that
    seed's. skimage breaks ties between equal values of its seeds by their places in one heap,
    which depend on every seed of the image; alone, a region floods alike wherever it is
    decoded (a window of a large image, or the whole image)."""
    out = np.zeros(regions.shape, np.int64)
    inside = (regions > 0) & (seeds > 0)
    pairs = np.unique(np.stack([regions[inside], seeds[inside]]), axis=1)
    count = np.bincount(pairs[0], minlength=int(regions.max(initial=0)) + 1)
    single = np.zeros(len(count), np.int64)
    one = count[pairs[0]] == 1
    single[pairs[0][one]] = pairs[1][one]
    out[regions > 0] = single[regions[regions > 0]]
    boxes = ndimage.find_objects(np.where(count[regions] > 1, regions, 0))
    for region, box in enumerate(boxes, start=1):
        if box is None:
            continue
        mask = regions[box] == region
        flooded = watershed(priority[box], np.where(mask, seeds[box], 0), mask=mask,
                            connectivity=1 if connectivity == 4 else 2)
        out[box][mask] = flooded[mask]
    return out


def class_components(classes: np.ndarray, structure: np.ndarray) -> np.ndarray:
    """Connected components of each class > 0 (int64 labels, unnumbered order)."""
    labels = np.zeros(classes.shape, np.int64)
    offset = 0
    for cls in np.unique(classes[classes > 0]):
        found, n = ndimage.label(classes == cls, structure)
        labels[found > 0] = found[found > 0] + offset
        offset += n
    return labels


def _drop_small(labels: np.ndarray, min_size: int) -> np.ndarray:
    if min_size <= 1 or not labels.size:
        return labels
    areas = np.bincount(labels.ravel())
    small = areas < min_size
    small[0] = False
    return np.where(small[labels], 0, labels)


def renumbered(labels: np.ndarray) -> np.ndarray:
    """uint32 ids 1..n in raster order of each label's first pixel (its anchor); 0 stays 0."""
    flat = labels.ravel()
    values, first = np.unique(flat, return_index=True)
    first, values = first[values > 0], values[values > 0]
    if len(values) > MAX_OBJECTS:
        raise ValueError(f"{len(values)} objects do not fit uint32 instance ids")
    lookup = np.zeros(int(values.max()) + 1 if len(values) else 1, np.uint32)
    lookup[values[np.argsort(first)]] = np.arange(1, len(values) + 1, dtype=np.uint32)
    return lookup[labels]


def anchors(labels: np.ndarray) -> np.ndarray:
    """(n, 2) int64 (y, x) of the first pixel in raster order of ids 1..n of renumbered labels."""
    flat = labels.ravel()
    values, first = np.unique(flat, return_index=True)
    first = first[values > 0]
    return np.stack(np.unravel_index(first, labels.shape), axis=1).astype(np.int64)


def foreground_classes(labels: np.ndarray, probabilities: np.ndarray | None = None,
                       threshold: float = 0.5) -> np.ndarray:
    """The class-id mask a boundary model's decoded objects give: 1 where an object is and, given
    the ``probabilities``, the model's foreground (P(boundary) + P(interior) >= ``threshold``)
    too; else 0. So ``partition``'s expansion into the background labels every pixel of a thin
    membrane with a cell in the instances while the mask keeps the membrane (pixel scores stay
    the model's), and an object ``min_size`` dropped leaves the mask."""
    mask = labels > 0
    if probabilities is not None:
        mask &= boundary_foreground(probabilities, threshold) > 0
    return mask.astype(np.uint8)
