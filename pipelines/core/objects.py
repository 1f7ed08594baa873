"""Objects of a large image: connected components per class, found block by block and merged
across block faces, so an object cut by any number of block borders is counted once.

Each block labels its own mask (``scipy.ndimage.label``, 4- or 8-connected) and keeps, per
local object, its class, area, bounding box, coordinate sums and confidence sum. Objects
that touch no face shared with another block are complete and written by the block itself;
only the *open* ones, with the block's edge labels, go to the merge: a union-find joins
open objects that touch across a face (or, 8-connected, across a corner), and the
statistics of joined objects add up. So the merge sees the objects along block borders,
not every object of the image. Pure numpy.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage

from schemas.decoder import class_components

FIELDS = ("cls", "area", "ymin", "xmin", "ymax", "xmax", "sum_y", "sum_x", "confidence")
EDGES = ("top", "bottom", "left", "right")


def block_objects(mask: np.ndarray, confidence: np.ndarray, origin: tuple[int, int], connectivity: int = 4,
                  faces: tuple[bool, bool, bool, bool] = (False, False, False, False)) -> tuple[dict, dict]:
    """(complete, open) objects of one block's mask (classes > 0), coordinates global.

    ``faces`` says which of its (top, bottom, left, right) faces meet another block: an
    object touching one of those is *open* (it may continue there) and goes to the merge with
    the block's edge labels; every other object is complete as it is (its final id is
    ``object_id(block, local_id)``)."""
    labels = class_components(mask, ndimage.generate_binary_structure(2, 1 if connectivity == 4 else 2))
    n = int(labels.max()) if labels.size else 0
    table = label_table(labels, n, mask, confidence, origin)
    height, width = mask.shape
    top, bottom, left, right = faces
    is_open = ((top & (table["ymin"] == origin[0])) | (bottom & (table["ymax"] == origin[0] + height))
               | (left & (table["xmin"] == origin[1])) | (right & (table["xmax"] == origin[1] + width)))
    ids = np.arange(1, n + 1, dtype=np.int64)
    complete = {f: v[~is_open] for f, v in table.items()}
    complete["local_id"] = ids[~is_open]
    opened = {f: v[is_open] for f, v in table.items()}
    opened.update(ids=ids[is_open], top=labels[0], bottom=labels[-1], left=labels[:, 0], right=labels[:, -1])
    return complete, opened


def label_table(labels: np.ndarray, n: int, mask: np.ndarray, confidence: np.ndarray,
                origin: tuple[int, int] = (0, 0)) -> dict:
    """Per object of a label image (ids 1..n): class (from ``mask``), area, bounding box
    [min, max) and coordinate sums in image coordinates (``origin`` added), confidence sum."""
    flat = labels.ravel().astype(np.int64)
    ys, xs = np.indices(labels.shape)
    table = {
        "cls": np.zeros(n, np.int64), "area": np.bincount(flat, minlength=n + 1)[1:].astype(np.int64),
        "sum_y": np.bincount(flat, (ys + origin[0]).ravel(), n + 1)[1:],
        "sum_x": np.bincount(flat, (xs + origin[1]).ravel(), n + 1)[1:],
        "confidence": np.bincount(flat, confidence.ravel().astype(np.float64), n + 1)[1:],
        "ymin": np.zeros(n, np.int64), "xmin": np.zeros(n, np.int64),
        "ymax": np.zeros(n, np.int64), "xmax": np.zeros(n, np.int64),
    }
    for i, box in enumerate(ndimage.find_objects(labels.astype(np.int64), max_label=n)):
        if box is None:
            continue
        table["ymin"][i], table["ymax"][i] = box[0].start + origin[0], box[0].stop + origin[0]
        table["xmin"][i], table["xmax"][i] = box[1].start + origin[1], box[1].stop + origin[1]
        table["cls"][i] = mask[box][labels[box] == i + 1][0]
    return table


class UnionFind:
    """Union-find over any hashable keys (the smaller root wins, so results are deterministic)."""

    def __init__(self):
        self.parent: dict = {}

    def find(self, key):
        self.parent.setdefault(key, key)
        root = key
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[key] != root:
            self.parent[key], key = root, self.parent[key]
        return root

    def union(self, a, b) -> bool:
        """Join the sets of ``a`` and ``b``; whether they were apart."""
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return False
        self.parent[max(ra, rb)] = min(ra, rb)
        return True


def _row(part: dict, local: int) -> int:
    if "_rows" not in part:
        part["_rows"] = {int(i): k for k, i in enumerate(part["ids"])}
    return part["_rows"][local]


def _same_class(parts: dict, a: int, i: int, b: int, j: int) -> bool:
    return parts[a]["cls"][_row(parts[a], i)] == parts[b]["cls"][_row(parts[b], j)]


def _join(uf: UnionFind, parts: dict, a: int, edge_a: np.ndarray, b: int, edge_b: np.ndarray,
          diagonal: bool) -> None:
    """Union the objects of blocks ``a`` and ``b`` (of one class) that touch across their face."""
    shifts = (-1, 0, 1) if diagonal else (0,)
    for shift in shifts:
        left = edge_a[max(0, -shift):len(edge_a) - max(0, shift)]
        right = edge_b[max(0, shift):len(edge_b) - max(0, -shift)]
        both = (left > 0) & (right > 0)
        for i, j in set(zip(left[both].tolist(), right[both].tolist())):
            if _same_class(parts, a, i, b, j):
                uf.union((a, i), (b, j))


def merge_objects(parts: dict[int, dict], grid: tuple[int, int], connectivity: int = 4) -> dict[str, np.ndarray]:
    """One table of the open objects of all blocks (``parts``: block index -> the open half of
    block_objects, blocks row-major on a ``grid`` of (rows, cols)), joined across faces; each
    keeps the id of the part its union-find root came from."""
    rows, cols = grid
    uf = UnionFind()
    diagonal = connectivity == 8
    for index, part in parts.items():
        r, c = divmod(index, cols)
        for local in part["ids"].tolist():
            uf.find((index, local))
        if c + 1 < cols and index + 1 in parts:
            _join(uf, parts, index, part["right"], index + 1, parts[index + 1]["left"], diagonal)
        if r + 1 < rows and index + cols in parts:
            _join(uf, parts, index, part["bottom"], index + cols, parts[index + cols]["top"], diagonal)
        if diagonal and r + 1 < rows:   # corners: the last pixel of one block, the first of the other
            below_right, below_left = index + cols + 1, index + cols - 1
            for other, mine, theirs, exists in ((below_right, -1, 0, c + 1 < cols), (below_left, 0, -1, c > 0)):
                if exists and other in parts:
                    i, j = int(part["bottom"][mine]), int(parts[other]["top"][theirs])
                    if i and j and _same_class(parts, index, i, other, j):
                        uf.union((index, i), (other, j))
    merged: dict = {}
    for index, part in parts.items():
        for k, local in enumerate(part["ids"].tolist()):
            root = uf.find((index, local))
            if root not in merged:
                merged[root] = {f: part[f][k] for f in FIELDS}
                merged[root]["object_id"] = object_id(*root)
                continue
            m = merged[root]
            for f in ("area", "sum_y", "sum_x", "confidence"):
                m[f] = m[f] + part[f][k]
            m["ymin"], m["xmin"] = min(m["ymin"], part["ymin"][k]), min(m["xmin"], part["xmin"][k])
            m["ymax"], m["xmax"] = max(m["ymax"], part["ymax"][k]), max(m["xmax"], part["xmax"][k])
    found = sorted(merged.values(), key=lambda m: m["object_id"])
    return {f: np.array([o[f] for o in found], np.float64 if f in ("sum_y", "sum_x", "confidence") else np.int64)
            for f in (*FIELDS, "object_id")}


def object_id(block: int, local: int) -> int:
    """An object's id: the block it was (first) found in and its label there."""
    return (block << 32) | local


def faces_of(block, height: int, width: int) -> tuple[bool, bool, bool, bool]:
    """Which of a block's (top, bottom, left, right) faces meet another block."""
    (a, b), (c, d) = block.rows, block.cols
    return a > 0, b < height, c > 0, d < width
