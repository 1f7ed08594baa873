"""The U-Net border weight map (Ronneberger et al. 2015, eq. 2), as pure numpy.

    w(x) = w_c(x) + w0 * exp(-(d1(x) + d2(x))^2 / (2 sigma^2))

d1 and d2 are the distances from a background pixel to the nearest and the second-nearest
object: the term is large in the thin background gaps between touching objects, the pixels
whose loss teaches the network to keep neighbours apart. Here it is computed on background
pixels only (inside objects and where fewer than two objects are near it is 0).

Preprocessing stores the border term ``exp(...)`` of each tile (``border_term``) as a uint8
PNG feature (``encode``: 255 = 1); the trainer adds ``w0 *`` it to the class weight w_c of
every pixel. Objects are the instance ids when the mask has them (``--mask-values
instances``); otherwise the connected components (4-connected, per class) of a mask whose
*background separates objects* — EM membranes around cells, say. ``label(binary)`` of
touching cells is one object, and no weight map can then tell them apart.
"""
from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

STORED_MAX = 255   # the stored uint8 value of a border term of 1


def objects_of(classes: np.ndarray, ignore: int) -> np.ndarray:
    """Object ids (0 = none) of a class-id mask: 4-connected components of each class > 0."""
    objects = np.zeros(classes.shape, np.int32)
    for value in np.unique(classes):
        if value in (0, ignore):
            continue
        labelled, count = ndimage.label(classes == value)
        objects[labelled > 0] = labelled[labelled > 0] + objects.max()
    return objects


def reach(sigma: float) -> float:
    """The d1 + d2 beyond which the stored term rounds to 0."""
    return sigma * math.sqrt(2.0 * math.log(2.0 * STORED_MAX))


def border_term(objects: np.ndarray, background: np.ndarray, sigma: float) -> np.ndarray:
    """exp(-(d1 + d2)^2 / (2 sigma^2)) (float64) at ``background`` pixels of a 2-D object-id
    array, 0 elsewhere. Each object's distances are computed in its box grown by ``reach``:
    a pixel outside it has d1 + d2 past the reach through that object, so the term is exact
    wherever it is stored as more than 0."""
    if objects.ndim != 2 or objects.shape != background.shape:
        raise ValueError(f"need 2-D objects and background of one shape, got {objects.shape}, {background.shape}")
    if sigma <= 0:
        raise ValueError(f"sigma must be > 0, got {sigma}")
    nearest = np.full(objects.shape, np.inf)
    second = np.full(objects.shape, np.inf)
    grow = int(math.ceil(reach(sigma)))
    for index, box in enumerate(ndimage.find_objects(objects), start=1):
        if box is None:
            continue
        window = tuple(slice(max(0, s.start - grow), min(n, s.stop + grow)) for s, n in zip(box, objects.shape))
        distance = ndimage.distance_transform_edt(objects[window] != index)
        d1, d2 = nearest[window], second[window]
        second[window] = np.minimum(d2, np.maximum(d1, distance))
        nearest[window] = np.minimum(d1, distance)
    term = np.exp(-np.square(nearest + second) / (2.0 * sigma * sigma))   # inf -> 0
    return np.where(background, term, 0.0)


def encode(term: np.ndarray) -> np.ndarray:
    """A border term in [0, 1] -> (H, W, 1) uint8, 255 = 1."""
    return np.rint(np.clip(term, 0.0, 1.0) * STORED_MAX).astype(np.uint8)[..., None]


def tile_weights(mask_tile: np.ndarray, instance_tile: np.ndarray | None, sigma: float, ignore: int) -> np.ndarray:
    """The stored border term (H, W, 1) uint8 of one (H, W, 1) mask tile, its objects from
    ``instance_tile`` when given, else from the mask's components."""
    classes = mask_tile[..., 0]
    objects = instance_tile[..., 0] if instance_tile is not None else objects_of(classes, ignore)
    return encode(border_term(_compact(objects), classes == 0, sigma))


def _compact(objects: np.ndarray) -> np.ndarray:
    """Ids renumbered 1..n (find_objects walks every id up to the largest)."""
    values, inverse = np.unique(objects, return_inverse=True)
    compact = inverse.reshape(objects.shape).astype(np.int32)
    return compact if values[0] == 0 else compact + 1
