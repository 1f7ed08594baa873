"""--calibrate rand|object-f1: the threshold that keeps touching cells apart, chosen on the
validation images put back together from their cores."""
import numpy as np
import pytest

from schemas.example import IGNORE_LABEL
from trainer.calibrate import ObjectCalibration, SourceCanvas


def test_object_calibration_picks_the_threshold_that_keeps_touching_cells_apart():
    truth = np.zeros((20, 30), np.uint8)
    truth[2:18, 2:14] = 1
    truth[2:18, 16:28] = 1                      # two cells, two background columns between them
    foreground = np.where(truth == 1, 0.9, 0.1)
    foreground[2:18, 14:16] = 0.6               # a weak membrane: below 0.6 the cells merge
    truth[19, :] = IGNORE_LABEL
    for metric in ("rand", "object-f1"):
        found = ObjectCalibration(metric)
        found.add(foreground, truth)
        values = found.values()
        threshold, value, rule = found.best()
        assert 0.6 < threshold <= 0.9 and value == values.max() == 1.0, metric
        assert values[[t <= 0.6 for t in (0.05 * i for i in range(1, 20))]].max() < value
        assert threshold == 0.65                # of the equal ones, the nearest 0.5
    assert "object F1" in rule


def test_cores_are_put_back_together_per_source_and_a_dropped_core_stays_ignored():
    rng = np.random.default_rng(0)
    image, truth = rng.random((20, 27)).astype(np.float32), rng.integers(0, 2, (20, 27)).astype(np.uint8)
    canvas, out = SourceCanvas(core=8), []
    cores = [(y, x) for y in range(0, 20, 8) for x in range(0, 27, 8)]
    for y, x in cores[:-1]:                                  # the last core dropped (a tile filter)
        h, w = min(8, 20 - y), min(8, 27 - x)
        p, t = np.zeros((8, 8), np.float32), np.zeros((8, 8), np.uint8)
        p[:h, :w], t[:h, :w] = image[y:y + h, x:x + w], truth[y:y + h, x:x + w]
        out += list(canvas.add(b"a", (y, x, h, w, 20, 27), p, t))
        out += list(canvas.add(b"b", (y, x, h, w, 20, 27), p, t)) if (y, x) == (0, 0) else []
    assert out == []                                         # incomplete: nothing yet
    rest = list(canvas.rest())
    assert len(rest) == 2
    assembled, assembled_truth = rest[0]
    np.testing.assert_array_equal(assembled[:16], image[:16])
    np.testing.assert_array_equal(assembled_truth[16:, 24:], IGNORE_LABEL)      # the dropped core
    np.testing.assert_array_equal(assembled_truth[:16], truth[:16])
    whole = SourceCanvas(core=8)
    one = [list(whole.add(b"c", (0, 0, 8, 8, 8, 8), image[:8, :8], truth[:8, :8]))]
    assert len(one[0]) == 1                                  # a one-core source is complete at once
    big = SourceCanvas(core=8, max_pixels=100)               # a source above the bound: core by core
    (core,) = list(big.add(b"d", (8, 8, 8, 5, 20, 13), image[:8, :8], truth[:8, :8]))
    assert core[0].shape == (8, 5) and not big.open
