"""Objects found block by block and merged across block faces equal the connected
components of the whole mask: the same count, classes, areas and boxes."""
from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from pipelines.core import objects
from pipelines.predict import blocks


def whole_objects(mask, connectivity):
    structure = ndimage.generate_binary_structure(2, 1 if connectivity == 4 else 2)
    found = []
    for cls in range(1, int(mask.max()) + 1):
        labels, _ = ndimage.label(mask == cls, structure)
        for box, index in zip(ndimage.find_objects(labels), range(1, labels.max() + 1)):
            found.append((box[0].start, box[1].start, cls, int((labels[box] == index).sum()),
                          box[0].stop, box[1].stop))
    return sorted(found)


def by_blocks(mask, side, connectivity):
    height, width = mask.shape
    plan = blocks.plan_blocks(height, width, side)
    parts, complete = {}, []
    for b in plan:
        (a, e), (c, d) = b.rows, b.cols
        done, parts[b.index] = objects.block_objects(mask[a:e, c:d], np.ones((e - a, d - c)), (a, c), connectivity,
                                                     objects.faces_of(b, height, width))
        complete.append({**done, "object_id": [objects.object_id(b.index, i) for i in done["local_id"]]})
    grid = (-(-height // side), -(-width // side))
    tables = complete + [objects.merge_objects(parts, grid, connectivity)]
    table = {f: np.concatenate([np.asarray(t[f]) for t in tables]) for f in (*objects.FIELDS, "object_id")}
    assert len(set(table["object_id"].tolist())) == len(table["object_id"])        # ids are unique
    return sorted(zip(table["ymin"].tolist(), table["xmin"].tolist(), table["cls"].tolist(),
                      table["area"].tolist(), table["ymax"].tolist(), table["xmax"].tolist())), table


def known_shapes(height=120, width=150):
    """Discs, a ring, a snake across many blocks, a blob over a block corner, a diagonal chain."""
    yy, xx = np.indices((height, width))
    mask = np.zeros((height, width), np.uint8)
    mask[(yy - 30) ** 2 + (xx - 40) ** 2 < 15 ** 2] = 1                       # a disc
    r2 = (yy - 80) ** 2 + (xx - 100) ** 2
    mask[(r2 < 25 ** 2) & (r2 >= 18 ** 2)] = 1                                # a ring
    mask[(r2 < 8 ** 2)] = 2                                                   # another class inside it
    mask[5:8, :] = 2                                                          # a line across every block
    mask[58:66, 58:66] = 1                                                    # over a block corner (64)
    for i in range(20):
        mask[100 + i % 2, 10 + i] = 1                                         # only 8-connected steps
    mask[110:120, 130:150] = 2                                                # a whole corner block
    return mask


@pytest.mark.parametrize("connectivity", [4, 8])
@pytest.mark.parametrize("side", [32, 64, 17])
def test_known_objects_are_counted_once_whatever_the_blocks(connectivity, side):
    mask = known_shapes()
    found, merged = by_blocks(mask, side, connectivity)
    assert found == whole_objects(mask, connectivity)
    assert merged["sum_y"].sum() == np.indices(mask.shape)[0][mask > 0].sum()


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("connectivity", [4, 8])
def test_random_masks_merge_to_the_whole_mask_components(seed, connectivity):
    rng = np.random.default_rng(seed)
    mask = (rng.random((53, 71)) < 0.45).astype(np.uint8) * rng.integers(1, 3, (53, 71)).astype(np.uint8)
    found, _ = by_blocks(mask, 1 + seed * 3 + 8, connectivity)
    assert found == whole_objects(mask, connectivity)
