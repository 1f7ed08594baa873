"""A boundary model's decoder calibrated on validation images: the grid's known-best thresholds
are chosen on a constructed case; the rule follows the dataset (auto, refusals)."""
import numpy as np
import pytest
from scipy import ndimage

from schemas.decoder import DecoderParams
from schemas.example import IGNORE_LABEL, DatasetSpec
from trainer.calibrate import (
    DecoderCalibration,
    SourceCanvas,
    calibration_rule,
    decoder_candidates,
    truth_objects,
)


def boundary_target(ids: np.ndarray) -> np.ndarray:
    """Classes background 0 / boundary 1 (an object's pixels next to another id) / interior 2."""
    rim = (ids > 0) & ((ndimage.maximum_filter(ids, 3) != ids) | (ndimage.minimum_filter(ids, 3) != ids))
    return np.where(ids == 0, 0, np.where(rim, 1, 2)).astype(np.uint8)


def constructed_case():
    """Two touching cells whose shared boundary the model sees as interior 0.65 (seeds under 0.7
    merge them) and two faint cells of P(foreground) 0.45 (found only at foreground <= 0.4; both
    missed are one segment for the adapted Rand error, which counts prediction 0 as a segment)."""
    ids = np.zeros((30, 50), np.int32)
    ids[3:17, 3:17] = 1
    ids[3:17, 17:29] = 2                       # touches 1 along column 16/17 (unequal: no IoU of exactly 0.5)
    ids[20:28, 38:46] = 3
    ids[20:27, 5:12] = 4
    truth = boundary_target(ids)
    p = np.zeros((30, 50, 3), np.float32)
    p[truth == 0] = (1.0, 0.0, 0.0)
    p[truth == 1] = (0.05, 0.9, 0.05)
    p[truth == 2] = (0.05, 0.05, 0.9)
    p[3:17, 16:18] = (0.05, 0.3, 0.65)         # the shared boundary: weak
    p[ids >= 3] = (0.55, 0.1, 0.35)            # the faint cells
    truth[29, :] = IGNORE_LABEL
    return p, truth, ids


def test_calibration_picks_the_known_best_thresholds_of_the_grid():
    p, truth, ids = constructed_case()
    np.testing.assert_array_equal(truth_objects(truth)[:29] > 0, ids[:29] > 0)
    assert truth_objects(truth).max() == 4
    for metric in ("rand", "object-f1"):
        found = DecoderCalibration(metric, border_thickness=1)
        found.add(p, truth)
        params, value, rule = found.best()
        # foreground <= 0.4 (the faint cell), seed >= 0.7 (the touching pair apart), seeded (partition
        # grows objects into the background); of the equal ones the nearest 0.5
        assert params == DecoderParams("seeded", foreground=0.4, seed=0.7), metric
        values = found.values()
        assert value == values.max() and value > 0.95, metric
        merged = [i for i, c in enumerate(found.candidates) if c.seed <= 0.6 and c.foreground <= 0.4]
        missed = [i for i, c in enumerate(found.candidates) if c.foreground >= 0.5]
        assert values[merged].max() < value and values[missed].max() < value, metric
    assert "Rand" not in rule and "object F1" in rule


def test_the_candidates_are_the_grid_and_partition_grows_by_twice_the_border():
    candidates = decoder_candidates(3)
    assert len(candidates) == 2 * 6 * 6
    assert {c.expand for c in candidates if c.mode == "partition"} == {6}
    assert {c.expand for c in candidates if c.mode == "seeded"} == {0}


def test_the_canvas_puts_class_probabilities_back_together_within_its_bound():
    rng = np.random.default_rng(1)
    image = rng.random((12, 10, 3)).astype(np.float32)
    truth = rng.integers(0, 3, (12, 10)).astype(np.uint8)
    canvas, out = SourceCanvas(core=8), []
    for y in (0, 8):
        for x in (0, 8):
            h, w = min(8, 12 - y), min(8, 10 - x)
            p, t = np.zeros((8, 8, 3), np.float32), np.zeros((8, 8), np.uint8)
            p[:h, :w], t[:h, :w] = image[y:y + h, x:x + w], truth[y:y + h, x:x + w]
            out += list(canvas.add(b"s", (y, x, h, w, 12, 10), p, t))
    ((assembled, assembled_truth),) = out
    np.testing.assert_array_equal(assembled, image)
    np.testing.assert_array_equal(assembled_truth, truth)
    bounded = SourceCanvas(core=8, max_pixels=300)       # 120 px x 3 channels > 300: core by core
    (core,) = list(bounded.add(b"s", (0, 0, 8, 8, 12, 10), image[:8, :8], truth[:8, :8]))
    assert core[0].shape == (8, 8, 3) and not bounded.open


def spec(target: str, classes: tuple[str, ...]) -> DatasetSpec:
    extra = {"target": "boundary", "object_class": "cell"} if target == "boundary" else {}
    return DatasetSpec(task="segmentation", core=8, margin=2, channels=1, class_names=classes, **extra)


def test_the_rule_follows_the_dataset_and_what_makes_no_sense_is_refused():
    boundary = spec("boundary", ("background", "boundary", "interior"))
    binary = spec("classes", ("background", "foreground"))
    three = spec("classes", ("a", "b", "c"))
    assert calibration_rule("auto", boundary) == "rand" and calibration_rule("auto", binary) == "fbeta"
    assert calibration_rule("object-f1", boundary) == "object-f1" and calibration_rule("rand", binary) == "rand"
    assert calibration_rule("auto", three) == "fbeta"
    for rule in ("fbeta", "recall"):
        with pytest.raises(ValueError, match="boundary target.*--calibrate rand"):
            calibration_rule(rule, boundary, "d")
    with pytest.raises(ValueError, match="binary segmentation"):
        calibration_rule("rand", three)
