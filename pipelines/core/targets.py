"""Learned instance representations: a boundary target and a distance map from objects, as pure numpy.

A *boundary target* (acvl_utils' ``convert_seg_to_boundary_classes`` style) has the classes of
``schemas.example.BOUNDARY_CLASSES``: 0 background, 1 boundary, 2 interior, and 255 where the
mask is ignored. An object pixel is *boundary* when a pixel of another label (background or
another object, but not an ignored pixel) lies within Euclidean distance ``thickness`` of it;
else *interior*. Equivalently: each object minus its erosion by the disk
``{(dy, dx): dy² + dx² <= thickness²}``, where ignored pixels and pixels beyond the array's edge
count as the object's own (unknown, so no boundary is made there). Two touching objects are
separated by a band of ``thickness`` px on each side, so their interiors are ``2 * thickness + 1``
px or more apart: ``schemas.decoder`` (``seeded``) grows the interiors back over the band.

The limit: an object at most ``2 * thickness`` px wide everywhere is all boundary: it has no
interior, so no seed; alone it still decodes as one object (a foreground component without a
seed), but touching another object it is absorbed by it. A neck that thin splits an interior
in two, and the object decodes as two. Where one object's corner meets another, a band pixel
can be as many 4-connected steps from both interiors and decode to either (a few pixels per
contact; ``tests/test_targets.py`` bounds it).

The *distance map* holds, at each object pixel, the Euclidean distance (px) to the nearest pixel
outside its object (another label, not ignored; the array's edge counts as inside), 0 elsewhere.
Stored as uint8: ``round(min(d, max_distance) / max_distance * 255)``.

Objects come from instance ids (uint, 0 = background) or, for class masks, from
:func:`objects_of_mask` (the connected components of each class > 0).
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage

BACKGROUND, BOUNDARY, INTERIOR = 0, 1, 2
IGNORE = 255
MAX_ID = 2 ** 32 - 1
STORED_MAX = 255


def check_instances(instances: np.ndarray, name: str = "instance mask") -> np.ndarray:
    """``instances`` as a 2-D uint32 array of ids, or ValueError with the remedy."""
    instances = np.asarray(instances)
    if instances.ndim != 2:
        raise ValueError(f"{name}: need a 2-D (H, W) array of ids, got shape {instances.shape}")
    if instances.dtype == bool or instances.dtype.kind not in "ui":
        raise ValueError(f"{name}: instance ids must be integers (0 = background), got {instances.dtype}; "
                         "label a binary mask's objects first (objects_of_mask) or pass class masks as classes")
    if instances.size and instances.dtype.kind == "i" and int(instances.min()) < 0:
        raise ValueError(f"{name}: instance ids must be >= 0, got {int(instances.min())}")
    if instances.size and int(instances.max()) > MAX_ID:
        raise ValueError(f"{name}: instance ids up to {int(instances.max())} do not fit uint32 (at most {MAX_ID}); "
                         "renumber the objects 1..n")
    return instances.astype(np.uint32, copy=False)


def objects_of_mask(classes: np.ndarray, ignore: int = IGNORE) -> np.ndarray:
    """(H, W) uint32 object ids of a class-id mask: the 4-connected components of each class > 0
    (``ignore`` is no class), numbered in raster order of their first pixel within each class,
    classes in increasing order. Touching objects of one class are one object: their mask must
    separate them (EM membranes between cells), or use instance ids."""
    classes = np.asarray(classes)
    if classes.ndim != 2:
        raise ValueError(f"need a 2-D class mask, got shape {classes.shape}")
    objects = np.zeros(classes.shape, np.uint32)
    offset = 0
    for value in np.unique(classes):
        if value == 0 or value == ignore:
            continue
        found, count = ndimage.label(classes == value)
        objects[found > 0] = found[found > 0].astype(np.uint32) + np.uint32(offset)
        offset += count
    return objects


def disk(radius: int) -> np.ndarray:
    """The (2r+1)² boolean footprint ``dy² + dx² <= r²``."""
    yy, xx = np.mgrid[-radius:radius + 1, -radius:radius + 1]
    return yy * yy + xx * xx <= radius * radius


def _ignored_mask(ignored: np.ndarray | None, shape: tuple[int, ...]) -> np.ndarray:
    if ignored is None:
        return np.zeros(shape, bool)
    ignored = np.asarray(ignored, bool)
    if ignored.shape != shape:
        raise ValueError(f"ignored has shape {ignored.shape}, the instances {shape}")
    return ignored


def boundary_target(instances: np.ndarray, thickness: int, ignored: np.ndarray | None = None) -> np.ndarray:
    """(H, W) uint8 target of ``instances`` (ids, 0 background): 0 background, 1 boundary (an
    object pixel within ``thickness`` px of a pixel of another label), 2 interior, 255 where
    ``ignored`` (see the module docstring)."""
    labels = check_instances(instances).astype(np.int64)
    if int(thickness) != thickness or thickness < 1:
        raise ValueError(f"border thickness must be an integer >= 1, got {thickness}")
    ignored = _ignored_mask(ignored, labels.shape)
    footprint = disk(int(thickness))
    # the largest and smallest label near each pixel, ignored pixels left out (-1 and > any id);
    # 'nearest' repeats the edge, which adds no label the footprint does not already see
    highest = ndimage.maximum_filter(np.where(ignored, -1, labels), footprint=footprint, mode="nearest")
    lowest = ndimage.minimum_filter(np.where(ignored, MAX_ID + 1, labels), footprint=footprint, mode="nearest")
    near_other = (highest > labels) | (lowest < labels)
    target = np.where(labels > 0, np.where(near_other, BOUNDARY, INTERIOR), BACKGROUND).astype(np.uint8)
    target[ignored] = IGNORE
    return target


def distance_to_boundary(instances: np.ndarray, ignored: np.ndarray | None = None) -> np.ndarray:
    """(H, W) float32: at each object pixel the Euclidean distance to the nearest pixel of another
    label (not ignored; none beyond the array's edge: ``inf`` when an object has no such pixel),
    0 at background and ignored pixels. Each object's distances come from a window around it,
    grown until no pixel of it could have a nearer outside pixel beyond the window."""
    labels = check_instances(instances)
    ignored = _ignored_mask(ignored, labels.shape)
    out = np.zeros(labels.shape, np.float32)
    compact = _compact(labels)
    for index, box in enumerate(ndimage.find_objects(compact), start=1):
        if box is not None:
            window, distance, mine = _object_distance(compact, ignored, index, box)
            out[window][mine] = distance[mine]
    out[ignored] = 0
    return out


def _compact(labels: np.ndarray) -> np.ndarray:
    """int32 ids 1..n in the order of ``labels``' ids, 0 stays 0 (``find_objects`` walks every id
    up to the largest): a lookup table when the ids are small, else a sort."""
    top = int(labels.max()) if labels.size else 0
    if top <= 4 * labels.size + 1024:
        present = np.zeros(top + 1, bool)
        present[labels] = True
        present[0] = False
        return np.cumsum(present, dtype=np.int32)[labels]
    values, inverse = np.unique(labels, return_inverse=True)
    compact = inverse.reshape(labels.shape).astype(np.int32)
    return compact if values[0] == 0 else compact + 1


def _object_distance(compact: np.ndarray, ignored: np.ndarray, index: int, box: tuple[slice, slice]):
    height, width = compact.shape
    grow = 1
    while True:
        top, bottom = max(0, box[0].start - grow), min(height, box[0].stop + grow)
        left, right = max(0, box[1].start - grow), min(width, box[1].stop + grow)
        window = (slice(top, bottom), slice(left, right))
        mine = compact[window] == index
        inside = mine | ignored[window]       # ignored pixels are no object's outside
        distance = np.full(mine.shape, np.inf, np.float32) if inside.all() else \
            ndimage.distance_transform_edt(inside).astype(np.float32)
        rows = np.arange(bottom - top, dtype=np.float64)[:, None]
        cols = np.arange(right - left, dtype=np.float64)[None, :]
        cut = np.full(mine.shape, np.inf)     # how far the window's cut sides are (not the array's edge)
        if top > 0:
            cut = np.minimum(cut, rows + 1)
        if bottom < height:
            cut = np.minimum(cut, bottom - top - rows)
        if left > 0:
            cut = np.minimum(cut, cols + 1)
        if right < width:
            cut = np.minimum(cut, right - left - cols)
        if np.all(distance[mine] <= cut[mine]):
            return window, distance, mine
        grow *= 2


def encode_distance(distance: np.ndarray, max_distance: float) -> np.ndarray:
    """A distance map (px) -> (H, W, 1) uint8: ``round(min(d, max_distance) / max_distance * 255)``."""
    if max_distance <= 0:
        raise ValueError(f"max_distance must be > 0, got {max_distance}")
    scaled = np.minimum(np.asarray(distance, np.float64), max_distance) / max_distance * STORED_MAX
    return np.rint(scaled).astype(np.uint8)[..., None]


def decode_distance(stored: np.ndarray, max_distance: float) -> np.ndarray:
    """The stored uint8 map back to px (float32; distances past ``max_distance`` read as it)."""
    return (np.asarray(stored, np.float32) * np.float32(max_distance / STORED_MAX))


def one_hot(target: np.ndarray) -> np.ndarray:
    """(H, W, 3) float32 one-hot of a boundary target (ignored pixels all 0): what a perfect
    boundary model outputs."""
    target = np.asarray(target)
    return np.stack([target == c for c in (BACKGROUND, BOUNDARY, INTERIOR)], axis=-1).astype(np.float32)
