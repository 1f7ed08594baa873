"""Polygon outlines of the objects of a label image (pure numpy / scipy / scikit-image).

Coordinates are QuPath's (and GeoJSON's for images): ``x`` = column, ``y`` = row, in pixels
of the full-resolution image, with the origin at the top-left *corner* of pixel (0, 0):
pixel (r, c) covers [c, c + 1) x [r, r + 1). An outline runs along the pixel edges, so its
area equals the object's pixel count, with one exception: where two pixels of the region
touch only diagonally (a 2 x 2 "saddle"), the ring cuts that corner by half a pixel edge
(1/8 px² per cut), so that no ring touches itself or another ring and the polygon is valid
(OGC simple features: what shapely/GEOS, JTS and QuPath accept).

What an outline is:

- the object's pixels are its 4-connected region (like ``schemas.object_scores``); an object
  of several parts (8-connected components, or a watershed cut through a neck) is outlined by
  its **largest part** only (the first in raster order on ties): one polygon per object, so the
  Parquet column and the GeoJSON geometry are always a Polygon;
- **rings**: the exterior first, then the holes (background enclosed by the part, 4-connected
  through the saddles, as the 8-connected background of a 4-connected foreground); exterior
  counter-clockwise in the (x, y) plane (positive shoelace area), holes clockwise (RFC 7946);
  each ring closed (last vertex = first) and without collinear vertices;
- ``tolerance`` > 0 simplifies each ring (Douglas-Peucker, ``skimage.measure.approximate_polygon``,
  at most ``tolerance`` px from the exact outline); a ring left with fewer than 4 vertices is
  dropped (a hole) or kept unsimplified (the exterior). A simplified polygon may, rarely, be
  invalid (simplification does not check rings against each other);
- ``max_vertices`` bounds an outline: an object whose rings have more vertices in all is
  simplified with a doubling tolerance (from 0.5 px) until they fit, so a huge region costs
  at most that much.

Each object is traced on its bounding-box crop (``scipy.ndimage.find_objects`` once per
label image), never on the whole image. The label window must hold the whole object:
pass ``origin`` (the window's top-left pixel in the full image) for windows of large images,
and ``scale`` when the labels are at a lower resolution than the full image (a pyramid level
with downsample 2**k: ``scale=2**k``; coordinates are multiplied after the origin is added).
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage
from skimage.measure import approximate_polygon, find_contours

FOUR_CONNECTED = ndimage.generate_binary_structure(2, 1)
MAX_VERTICES = 4096


def polygons(labels: np.ndarray, ids=None, origin: tuple[int, int] = (0, 0), tolerance: float = 0.0,
             max_vertices: int = MAX_VERTICES, holes: bool = True, scale: float = 1.0) -> list[list[np.ndarray] | None]:
    """The outline of each object of ``labels`` (ids > 0): for each of ``ids`` (default: the
    ids present, ascending) its rings (float64 (N, 2) arrays of [x, y], exterior first; see
    the module docstring), or None for an id that is not in ``labels``.

    ``origin`` = (row, column) of ``labels[0, 0]`` in the full image."""
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"labels must be a 2-D label image, got shape {labels.shape}")
    if max_vertices < 4:
        raise ValueError(f"max_vertices must be at least 4, got {max_vertices}")
    present, compact = np.unique(labels, return_inverse=True)
    compact = compact.reshape(labels.shape)
    if present.size and present[0] < 0:
        raise ValueError(f"labels hold a negative id ({present[0]}); instance ids are 0 (background) or positive")
    if present.size and present[0] == 0:
        present = present[1:]
    else:
        compact = compact + 1            # no background in the window: every value is an object
    boxes = ndimage.find_objects(compact.astype(np.int64), max_label=len(present))
    wanted = present if ids is None else np.asarray(ids).ravel()
    position = np.minimum(np.searchsorted(present, wanted), max(len(present) - 1, 0))
    found = (present[position] == wanted) & (wanted != 0) if len(present) else np.zeros(len(wanted), bool)
    out: list[list[np.ndarray] | None] = []
    for index, ok in zip(position.tolist(), found.tolist()):
        if not ok:
            out.append(None)
            continue
        box = boxes[int(index)]
        region = compact[box] == index + 1
        corner = (origin[0] + box[0].start, origin[1] + box[1].start)
        out.append(outline(region, corner, tolerance, max_vertices, holes, scale))
    return out


def outline(region: np.ndarray, corner: tuple[int, int] = (0, 0), tolerance: float = 0.0,
            max_vertices: int = MAX_VERTICES, holes: bool = True, scale: float = 1.0) -> list[np.ndarray] | None:
    """The rings of the largest 4-connected part of the boolean ``region`` (exterior first),
    ``corner`` = (row, column) of ``region[0, 0]`` in the full image; None when it is empty."""
    parts, n = ndimage.label(region, FOUR_CONNECTED)
    if n == 0:
        return None
    if n > 1:
        region = parts == 1 + int(np.argmax(np.bincount(parts.ravel())[1:]))
    padded = np.pad(region, 1).astype(np.float32)
    rings = [_pixel_edges(c, padded) for c in find_contours(padded, 0.5, fully_connected="low")]
    areas = np.array([_signed_area(r) for r in rings])
    first = int(np.argmax(np.abs(areas)))
    exterior = rings[first] if areas[first] > 0 else rings[first][::-1]
    inner = [r if a < 0 else r[::-1] for i, (r, a) in enumerate(zip(rings, areas)) if i != first] if holes else []
    rings = _bounded([exterior, *inner], tolerance, max_vertices)
    shift = np.array([corner[1] - 1, corner[0] - 1], np.float64)   # the padding, then the crop's place
    return [(r + shift) * scale for r in rings]


def _pixel_edges(contour: np.ndarray, padded: np.ndarray) -> np.ndarray:
    """A closed marching-squares contour (rows, cols through the midpoints of pixel edges)
    -> the ring along the pixel edges, [x, y] in the padded array's corner coordinates."""
    points = contour[:, ::-1] + 0.5                       # [x, y]: centres (i, j) -> corners (j + .5, i + .5)
    if not np.array_equal(points[0], points[-1]):
        points = np.vstack([points, points[:1]])
    a, b = points[:-1], points[1:]
    turn = (a[:, 0] != b[:, 0]) & (a[:, 1] != b[:, 1])    # a step to the next edge around a pixel corner
    on_vertical = a[:, 0] == np.round(a[:, 0])           # the midpoint of a vertical edge has an integer x
    corner = np.where(on_vertical[:, None], np.stack([a[:, 0], b[:, 1]], 1), np.stack([b[:, 0], a[:, 1]], 1))
    cy, cx = corner[:, 1].astype(np.int64), corner[:, 0].astype(np.int64)
    h, w = padded.shape
    inside = (cy > 0) & (cx > 0) & (cy < h) & (cx < w)
    cy, cx = np.clip(cy, 1, h - 1), np.clip(cx, 1, w - 1)
    saddle = inside & (padded[cy - 1, cx - 1] == padded[cy, cx]) & (padded[cy - 1, cx] == padded[cy, cx - 1]) \
        & (padded[cy - 1, cx - 1] != padded[cy - 1, cx])
    keep_corner = turn & ~saddle                          # at a saddle the ring cuts the corner instead
    sequence = np.empty((len(a) + int(keep_corner.sum()), 2))
    slots = np.arange(len(a)) + np.concatenate([[0], np.cumsum(keep_corner)[:-1]])
    sequence[slots] = a
    sequence[slots[keep_corner] + 1] = corner[keep_corner]
    return _without_collinear(sequence)


def _without_collinear(ring: np.ndarray) -> np.ndarray:
    """An open sequence of vertices of a ring -> the closed ring without collinear vertices."""
    before, after = np.roll(ring, 1, axis=0), np.roll(ring, -1, axis=0)
    cross = (ring[:, 0] - before[:, 0]) * (after[:, 1] - ring[:, 1]) \
        - (ring[:, 1] - before[:, 1]) * (after[:, 0] - ring[:, 0])
    ring = ring[np.abs(cross) > 1e-9]
    return np.vstack([ring, ring[:1]])


def _signed_area(ring: np.ndarray) -> float:
    """Shoelace area of a closed ring: positive when counter-clockwise in the (x, y) plane."""
    x, y = ring[:, 0], ring[:, 1]
    return float(np.dot(x[:-1], y[1:]) - np.dot(x[1:], y[:-1])) / 2


def _bounded(rings: list[np.ndarray], tolerance: float, max_vertices: int) -> list[np.ndarray]:
    """Rings simplified at ``tolerance``, then with a doubling tolerance until they have at
    most ``max_vertices`` vertices in all (or the exterior would collapse: the last that did
    not); holes reduced below a triangle are dropped."""
    step, best = tolerance, None
    for _ in range(64):
        simple = rings if step <= 0 else [_simplified(r, step) for r in rings]
        if simple[0] is None:
            break
        best = [simple[0], *(h for h in simple[1:] if h is not None)]
        if sum(len(r) - 1 for r in best) <= max_vertices:
            break
        step = max(0.5, 2 * step)
    return best if best is not None else rings[:1]


def _simplified(ring: np.ndarray, tolerance: float) -> np.ndarray | None:
    """Douglas-Peucker within ``tolerance`` px; None when less than a triangle is left."""
    simple = approximate_polygon(ring, tolerance)
    return simple if len(simple) >= 4 and abs(_signed_area(simple)) > 0 else None
