"""Object scores by hand: matching at IoU thresholds, AP as the cell literature reports it,
variation of information, the ISBI 2012 V_rand, and instance truth that keeps touching cells
apart where connected components would fuse them."""
from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image
from skimage.metrics import variation_of_information

from pipelines.evaluate import job as evaluate
from pipelines.evaluate import objects, scores
from schemas import layout as names


def test_matching_precision_recall_f1_and_ap_by_hand():
    truth = np.zeros((20, 30), np.int64)
    truth[1:5, 1:5] = 1            # A: found exactly
    truth[8:12, 1:9] = 2           # B: 32 px, only 12 of them predicted (IoU 0.375)
    truth[15:19, 20:24] = 3        # C: missed
    pred = np.zeros_like(truth)
    pred[1:5, 1:5] = 1
    pred[8:12, 1:4] = 2
    pred[1:4, 20:28] = 3           # a false positive
    counts = objects.object_counts(truth, pred)
    assert (counts["true"], counts["pred"]) == (3, 3) and counts["tp"] == [1] * len(objects.THRESHOLDS)
    summary = objects.object_summary(counts)
    assert summary["object_precision"] == summary["object_recall"] == pytest.approx(1 / 3)
    assert summary["object_f1"] == pytest.approx(1 / 3) and summary["object_ap50"] == pytest.approx(1 / 5)
    assert summary["object_ap_50_95"] == pytest.approx(1 / 5)          # A matches at every threshold
    shifted = np.zeros_like(truth)
    shifted[1:5, 2:6] = 1          # IoU 12/20 = 0.6: a match at 0.50, 0.55 and 0.60 only
    tp = objects.object_counts(truth[:, :10] * (truth[:, :10] == 1), shifted[:, :10])["tp"]
    assert tp == [1, 1, 1] + [0] * 7
    assert objects.object_summary({"true": 0, "pred": 0, "tp": [0] * 10})["object_f1"] == 1.0   # both empty


def test_variation_of_information_by_hand_and_as_scikit_image():
    truth = np.zeros((10, 10), np.int64)
    truth[1:5, 1:5], truth[6:9, 1:9] = 1, 2
    pred = np.zeros_like(truth)
    pred[1:5, 1:9], pred[6:9, 1:4], pred[6:9, 5:9] = 1, 2, 3
    vi = objects.information_variation(scores.ids_table(truth, pred))
    # truth 2 (24 of the 40 truth pixels) is split 9 / 3 (background) / 12: 0.6 H(3/8, 1/8, 1/2) bits
    split = 0.6 * -sum(p * np.log2(p) for p in (3 / 8, 1 / 8, 1 / 2))
    assert vi["vi_split"] == pytest.approx(split) and vi["vi_merge"] == 0.0
    np.testing.assert_allclose([vi["vi_split"], vi["vi_merge"]], variation_of_information(truth, pred,
                                                                                          ignore_labels=(0,)))


def test_vrand_isbi_takes_the_best_threshold_of_the_thinned_boundaries():
    truth = np.zeros((20, 21), np.int64)
    truth[:, :10], truth[:, 11:] = 1, 2                 # two cells, a membrane column between
    foreground = np.full((20, 21), 0.9, np.float32)
    foreground[:, 9:12] = 0.65                          # a fuzzy, 3 px membrane only below 0.7
    best, threshold = objects.vrand_isbi(truth, foreground, np.zeros_like(truth, bool))
    assert best > 0.99 and threshold == pytest.approx(0.7)   # 0.0-0.6 merge the cells
    merged, _ = objects.vrand_isbi(truth, np.full((20, 21), 0.9, np.float32), np.zeros_like(truth, bool))
    assert merged < 0.9


def _png(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def test_truth_instances_keep_touching_cells_apart(tmp_path):
    instances = np.zeros((40, 60), np.uint16)
    instances[10:26, 10:20] = 4        # two touching cells ...
    instances[10:26, 20:40] = 9
    fused = (instances > 0).astype(np.uint8)   # ... predicted as one object
    _png(tmp_path / "truth" / "a.png", instances)
    _png(tmp_path / "binary" / "a.png", fused)
    pred = tmp_path / "pred"
    _png(pred / names.MASKS_DIR / "a.png", fused)
    probabilities = np.stack([1.0 - fused, fused], -1).astype(np.float16)
    (pred / names.PROBABILITIES_DIR).mkdir()
    np.save(pred / names.probabilities_path("a"), probabilities)
    pq.write_table(pa.table({"image_id": ["a"], "mask_path": [names.mask_path("a")],
                             "probabilities_path": [names.probabilities_path("a")]}), pred / names.PREDICTIONS_FILE)
    (pred / names.SUCCESS_FILE).write_text("{}")
    report = {}
    for name, extra in (("instances", ["--truth", str(tmp_path / "truth"), "--truth-instances"]),
                        ("components", ["--truth", str(tmp_path / "binary"), "--mask-values", "ids"])):
        out = tmp_path / f"{name}.json"
        assert evaluate.run(["--predictions", str(pred), "--output", str(out), *extra]) == 0
        report[name] = json.loads(out.read_text())["overall"]["micro"]
    # by instances: 2 cells, the fused object matches the larger (IoU 320/480): recall 1/2
    assert report["instances"]["object_recall"] == pytest.approx(0.5)
    assert report["instances"]["object_precision"] == 1.0 and report["instances"]["vi_merge"] > 0
    assert report["components"]["object_f1"] == 1.0 and report["components"]["vi"] == 0.0   # fused truth too
    assert report["components"]["vrand_isbi"] == pytest.approx(1.0)
    assert report["instances"]["adapted_rand_error"] > 0.2       # the merge shows in the Rand error too
