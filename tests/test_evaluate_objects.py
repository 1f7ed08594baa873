"""Object scores by hand: matching at IoU thresholds, AP as the cell literature reports it,
variation of information, the ISBI 2012 V_rand, and instance truth that keeps touching cells
apart where connected components would fuse them."""
from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
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
    shifted[1:5, 2:6] = 1          # IoU 12/20 = 0.6: a match at 0.50 and 0.55 only (IoU > t)
    tp = objects.object_counts(truth[:, :10] * (truth[:, :10] == 1), shifted[:, :10])["tp"]
    assert tp == [1, 1] + [0] * 8
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


def pq_case():
    """Truth A matched exactly (IoU 1), B at IoU 24/32 = 0.75, C at exactly 0.5 (no match: IoU
    must exceed the threshold, for F1 as for PQ), D missed, one false positive."""
    truth = np.zeros((30, 40), np.int64)
    truth[1:5, 1:5] = 1              # A, 16 px
    truth[8:12, 1:9] = 2             # B, 32 px
    truth[15:19, 1:5] = 3            # C, 16 px
    truth[22:26, 30:34] = 4          # D
    pred = np.zeros_like(truth)
    pred[1:5, 1:5] = 7
    pred[8:12, 1:7] = 8              # 24 of B
    pred[15:19, 1:3] = 9             # 8 of C: IoU 8 / 16
    pred[1:4, 20:28] = 5             # false positive
    return truth, pred


def test_panoptic_quality_f1_and_dsb_accuracy_by_hand():
    truth, pred = pq_case()
    counts = objects.object_counts(truth, pred)
    assert counts["pq_tp"] == 2 and counts["pq_iou"] == pytest.approx(1.75)
    assert counts["tp"] == [2] * 5 + [1] * 5                    # 0.5-0.7 | 0.75 (B: 0.75 is not > 0.75)-0.95
    s = objects.object_summary(counts)
    # PQ: TP 2 (A, B), FP 2 (C's and the stray prediction), FN 2 (C, D)
    assert s["object_sq"] == pytest.approx(1.75 / 2) and s["object_rq"] == pytest.approx(2 / (2 + 1 + 1))
    assert s["object_pq"] == pytest.approx(1.75 / 4) == pytest.approx(s["object_sq"] * s["object_rq"])
    # at IoU 0.5: TP 2, FP 2, FN 2
    assert s["object_precision"] == s["object_recall"] == s["object_f1"] == pytest.approx(0.5)
    assert s["object_ap50"] == pytest.approx(2 / 6)             # DSB 2018 "accuracy": TP / (TP + FP + FN)
    assert s["object_ap_50_95"] == pytest.approx((5 * 2 / 6 + 5 * 1 / 7) / 10)
    assert s["object_f1_50_95"] == pytest.approx((5 * 2 / 4 + 5 * 1 / 4) / 10)
    assert objects.object_summary(objects.object_counts(truth * 0, pred * 0))["object_pq"] == 1.0   # both empty
    nothing = objects.object_summary(objects.object_counts(truth, pred * 0))
    assert nothing["object_pq"] == nothing["object_sq"] == nothing["object_rq"] == 0.0


def test_panoptic_quality_over_images_is_computed_from_summed_counts():
    truth, pred = pq_case()
    second_truth = np.zeros((6, 6), np.int64)
    second_truth[0:2, 0:5] = 1                                   # 10 px
    second_pred = np.zeros_like(second_truth)
    second_pred[0:2, 0:3] = 1                                    # IoU 6 / 10
    first, second = objects.object_counts(truth, pred), objects.object_counts(second_truth, second_pred)
    assert objects.object_summary(second)["object_pq"] == pytest.approx(0.6)
    both = objects.object_summary(objects.add_counts(objects.add_counts(None, first), second))
    assert both["object_pq"] == pytest.approx((1.75 + 0.6) / (3 + 2 / 2 + 2 / 2))   # not the mean 0.51875
    assert both["object_sq"] == pytest.approx(2.35 / 3) and both["object_rq"] == pytest.approx(3 / 5)
    assert first["tp"] == [2] * 5 + [1] * 5                      # add_counts left its inputs alone


def _instances_dir(tmp_path, truth, pred_labels, name, instances, large=False):
    """A prediction directory whose row names ``instances`` (a path under it) as the image's
    instance labels; ``large``: its mask an OME-Zarr label pyramid, as predict writes for large images."""
    _png(tmp_path / "truth" / "a.png", truth.astype(np.uint16))
    pred = tmp_path / name
    mask = (pred_labels > 0).astype(np.uint8)
    if large:
        _zarr_labels(pred / names.label_image_path("a"), mask)
    else:
        _png(pred / names.MASKS_DIR / "a.png", mask)
    mask_path = names.label_image_path("a") if large else names.mask_path("a")
    pq.write_table(pa.table({"image_id": ["a"], "mask_path": [mask_path], "instances_path": [instances]}),
                   pred / names.PREDICTIONS_FILE)
    (pred / names.SUCCESS_FILE).write_text("{}")
    return pred


def _zarr_labels(path, labels):
    import zarr
    group = zarr.open_group(str(path), mode="w", zarr_format=2)
    group.create_array("0", shape=labels.shape, chunks=(16, 16), dtype=labels.dtype, fill_value=0)[:] = labels
    group.attrs["multiscales"] = [{"version": "0.4", "datasets": [{"path": "0"}]}]


def test_evaluate_scores_small_and_large_instance_predictions_with_pq(tmp_path, capsys):
    import tifffile
    truth, pred = pq_case()
    truth16 = truth.astype(np.uint16)
    expected = objects.object_summary(objects.object_counts(truth, pred))
    reports = {}
    small = _instances_dir(tmp_path, truth16, pred, "small", "instances/a.tif")
    (small / names.INSTANCES_DIR).mkdir()
    tifffile.imwrite(small / "instances" / "a.tif", pred.astype(np.uint32))
    large = _instances_dir(tmp_path, truth16, pred, "large", "instances/a.ome.zarr", large=True)
    _zarr_labels(large / "instances/a.ome.zarr", pred.astype(np.uint32))
    for name, folder in (("small", small), ("large", large)):
        out = tmp_path / f"{name}.json"
        assert evaluate.run(["--predictions", str(folder), "--truth", str(tmp_path / "truth"), "--truth-instances",
                             "--output", str(out)]) == 0
        reports[name] = json.loads(out.read_text())
    printed = capsys.readouterr().out
    assert "object_pq" in printed and f"{expected['object_pq']:.4f}" in printed
    for report in reports.values():
        micro = report["overall"]["micro"]
        assert micro["object_pq"] == pytest.approx(1.75 / 4) and micro["object_sq"] == pytest.approx(0.875)
        assert micro["object_f1"] == pytest.approx(0.5) and micro["object_ap50"] == pytest.approx(2 / 6)
        assert report["overall"]["per_image_mean"]["object_pq"] == pytest.approx(1.75 / 4)
    rows = pq.read_table(tmp_path / "large.parquet").to_pylist()
    assert rows[0]["pred_objects"] == "instances" and rows[0]["object_rq"] == pytest.approx(0.5)


def test_instance_predictions_too_large_or_not_integer_are_rejected(tmp_path):
    import tifffile

    from pipelines.evaluate.inputs import read_instance_labels
    from schemas.rejected import RejectedInput
    truth, pred = pq_case()
    path = tmp_path / "big.ome.zarr"
    _zarr_labels(path, pred.astype(np.uint32))
    assert read_instance_labels(str(path), truth.size).dtype == np.int64
    with pytest.raises(RejectedInput, match="--max-pixels"):
        read_instance_labels(str(path), truth.size - 1)
    tifffile.imwrite(tmp_path / "big.tif", pred.astype(np.uint32))
    with pytest.raises(RejectedInput, match="--max-pixels"):
        read_instance_labels(str(tmp_path / "big.tif"), truth.size - 1)
    folder = _instances_dir(tmp_path, truth, pred, "floats", "instances/a.tif")
    (folder / names.INSTANCES_DIR).mkdir()
    tifffile.imwrite(folder / "instances" / "a.tif", pred.astype(np.float32))
    out = tmp_path / "floats.json"
    assert evaluate.run(["--predictions", str(folder), "--truth", str(tmp_path / "truth"), "--truth-instances",
                         "--output", str(out)]) == 1                           # nothing evaluated
    [rejected] = json.loads(out.read_text())["rejected"]
    assert rejected["reason"] == "instances_not_integer" and "float32" in rejected["detail"]


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(0, 4), min_size=48, max_size=48), st.lists(st.integers(0, 4), min_size=48, max_size=48))
def test_matching_counts_equal_a_brute_force_over_every_pair(truth_values, pred_values):
    truth = np.array(truth_values).reshape(6, 8)
    pred = np.array(pred_values).reshape(6, 8)
    truth_ids, pred_ids = np.unique(truth[truth > 0]), np.unique(pred[pred > 0])
    ious = np.array([[np.sum((truth == t) & (pred == p)) / np.sum((truth == t) | (pred == p))
                      for p in pred_ids] for t in truth_ids]).reshape(len(truth_ids), len(pred_ids))
    counts = objects.object_counts(truth, pred)
    assert counts["pq_tp"] == int(np.sum(ious > 0.5))
    assert counts["pq_iou"] == pytest.approx(float(ious[ious > 0.5].sum()))
    assert counts["tp"] == [int(np.sum(ious > t)) for t in objects.THRESHOLDS]
    assert (ious > 0.5).sum(axis=0).max(initial=0) <= 1 and (ious > 0.5).sum(axis=1).max(initial=0) <= 1
    s = objects.object_summary(counts)
    assert s["object_pq"] == pytest.approx(s["object_sq"] * s["object_rq"])
    assert objects.object_summary(objects.object_counts(truth, truth))["object_pq"] == 1.0
