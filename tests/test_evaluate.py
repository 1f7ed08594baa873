"""tessera evaluate: metrics against hand-computed numbers, and the command end to end."""
from __future__ import annotations

import io
import json
import math

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from pipelines.evaluate import job as evaluate
from pipelines.evaluate import scores
from pipelines.evaluate.confusion_plot import (
    cell_colour,
    compact_count,
    render_confusion_png,
)
from schemas import layout as names

I = 255  # ignore

# A 3x3 binary pair used throughout.
#   truth        prediction
#   0 1 1        0 1 0
#   0 1 I        1 1 1
#   0 0 0        0 0 0
# Labelled pixels: 8 (the ignored one is not counted, whatever is predicted there).
# Foreground: tp = 2 ((0,1), (1,1)), fn = 1 ((0,2)), fp = 1 ((1,0)); background tp = 4.
TRUTH_3 = np.array([[0, 1, 1], [0, 1, I], [0, 0, 0]], np.uint8)
PRED_3 = np.array([[0, 1, 0], [1, 1, 1], [0, 0, 0]], np.uint8)


def test_binary_scores_by_hand():
    confusion = scores.confusion_matrix(TRUTH_3, PRED_3, 2)
    np.testing.assert_array_equal(confusion, [[4, 1], [1, 2]])
    s = scores.segmentation_summary(confusion)
    assert s["dice"] == pytest.approx(2 * 2 / (2 * 2 + 1 + 1))   # 4/6
    assert s["iou"] == pytest.approx(2 / 4)
    assert s["precision"] == pytest.approx(2 / 3)
    assert s["recall"] == pytest.approx(2 / 3)
    assert s["pixel_error"] == pytest.approx(2 / 8)


def test_fbeta_by_hand():
    # 4x4: truth foreground = 4 pixels (top-left 2x2); prediction = top-left 2x3 minus (1,1)
    # -> tp = 3, fp = 3 ((0,2), (1,2) and (2,0)), fn = 1 ((1,1)).
    truth = np.zeros((4, 4), np.uint8)
    truth[:2, :2] = 1
    pred = np.zeros((4, 4), np.uint8)
    pred[:2, :3] = 1
    pred[1, 1] = 0
    pred[2, 0] = 1
    s = scores.segmentation_summary(scores.confusion_matrix(truth, pred, 2), beta=2.0)
    assert s["precision"] == pytest.approx(3 / 6)
    assert s["recall"] == pytest.approx(3 / 4)
    assert s["dice"] == pytest.approx(6 / 10)
    assert s["iou"] == pytest.approx(3 / 7)
    # F2 = 5 tp / (5 tp + 4 fn + fp) = 15 / 22
    assert s["fbeta"] == pytest.approx(15 / 22)
    assert s["pixel_error"] == pytest.approx(4 / 16)


def test_ignored_pixels_change_nothing():
    # Surround the 3x3 pair with a band of ignored truth and arbitrary predictions (ones,
    # which would bridge components and add false positives if they were looked at).
    truth = np.full((7, 7), I, np.uint8)
    truth[2:5, 2:5] = TRUTH_3
    pred = np.ones((7, 7), np.uint8)
    pred[2:5, 2:5] = PRED_3
    a, b = scores.confusion_matrix(TRUTH_3, PRED_3, 2), scores.confusion_matrix(truth, pred, 2)
    np.testing.assert_array_equal(a, b)
    assert scores.segmentation_summary(a) == scores.segmentation_summary(b)
    assert scores.adapted_rand(scores.rand_table(truth, pred)) == scores.adapted_rand(
        scores.rand_table(TRUTH_3, PRED_3))
    # Two separate objects, predicted exactly: the band of predicted ones must not join them.
    two = np.array([[1, 0, 1], [1, 0, 1], [0, 0, 0]], np.uint8)
    truth[2:5, 2:5], pred[2:5, 2:5] = two, two
    assert scores.adapted_rand(scores.rand_table(truth, pred)) == 0.0


def test_multiclass_per_class_by_hand():
    # truth        prediction      confusion (rows truth 0,1,2; columns predicted)
    # 0 0 1 1      0 1 1 1         0: [2, 1, 0]   (0 -> 1 at (0,1))
    # 0 2 2 1      0 2 1 1         1: [0, 4, 1]   (1 -> 2 at (3,2))
    # 2 2 2 I      2 2 2 0         2: [1, 1, 5]   (2 -> 1 at (1,2), 2 -> 0 at (3,1))
    # 1 2 1 2      1 0 2 2         the ignored (2,3) is not counted: 15 pixels
    truth = np.array([[0, 0, 1, 1], [0, 2, 2, 1], [2, 2, 2, I], [1, 2, 1, 2]], np.uint8)
    pred = np.array([[0, 1, 1, 1], [0, 2, 1, 1], [2, 2, 2, 0], [1, 0, 2, 2]], np.uint8)
    confusion = scores.confusion_matrix(truth, pred, 3)
    np.testing.assert_array_equal(confusion, [[2, 1, 0], [0, 4, 1], [1, 1, 5]])
    c = scores.class_scores(confusion)
    # class 0: tp 2, fp 1, fn 1; class 1: tp 4, fp 2, fn 1; class 2: tp 5, fp 1, fn 2
    np.testing.assert_allclose(c["dice"], [4 / 6, 8 / 11, 10 / 13])
    np.testing.assert_allclose(c["iou"], [2 / 4, 4 / 7, 5 / 8])
    np.testing.assert_allclose(c["precision"], [2 / 3, 4 / 6, 5 / 6])
    np.testing.assert_allclose(c["recall"], [2 / 3, 4 / 5, 5 / 7])
    s = scores.segmentation_summary(confusion)
    assert s["dice"] == pytest.approx((8 / 11 + 10 / 13) / 2)   # foreground classes 1 and 2
    assert s["recall"] == pytest.approx((4 / 5 + 5 / 7) / 2)
    assert s["pixel_error"] == pytest.approx(4 / 15)


def test_empty_masks():
    empty = np.zeros((3, 3), np.uint8)
    blob = empty.copy()
    blob[1:, 1:] = 1
    # Both empty: every ratio is 0/0 and defined as 1 (nothing to find, nothing claimed).
    both = scores.segmentation_summary(scores.confusion_matrix(empty, empty, 2))
    assert both == {"dice": 1.0, "iou": 1.0, "precision": 1.0, "recall": 1.0, "fbeta": 1.0, "pixel_error": 0.0}
    # Empty prediction of a non-empty truth, and the reverse: 0 everywhere, 4 wrong pixels of 9.
    for truth, pred in ((blob, empty), (empty, blob)):
        s = scores.segmentation_summary(scores.confusion_matrix(truth, pred, 2))
        assert (s["dice"], s["iou"], s["precision"], s["recall"]) == (0.0, 0.0, 0.0, 0.0)
        assert s["pixel_error"] == pytest.approx(4 / 9)
    # No foreground in the truth: the foreground-restricted Rand error has no pairs -> NaN.
    assert math.isnan(scores.adapted_rand(scores.rand_table(empty, blob)))


def test_adapted_rand_by_hand_and_overall_from_summed_pairs():
    # TRUTH_3: one foreground component {(0,1),(0,2),(1,1)}. PRED_3 with the ignored pixel
    # zeroed: one component {(0,1),(1,0),(1,1)}; (0,2) is predicted background (label 0).
    # Table row: [1 (pred 0), 2 (pred comp)]: pairs both = 1+4-3 = 2, truth pairs = 9-3 = 6,
    # prediction pairs = (1+4)-3 = 2; error = 1 - 2 / (0.5*6 + 0.5*2) = 0.5.
    t1 = scores.rand_table(TRUTH_3, PRED_3)
    assert scores.adapted_rand(t1) == pytest.approx(0.5)
    # A perfect 2x2 object: pairs 12, 12, 12 -> error 0.
    square = np.zeros((3, 3), np.uint8)
    square[:2, :2] = 1
    t2 = scores.rand_table(square, square)
    assert scores.adapted_rand(t2) == pytest.approx(0.0)
    # Overall from summed pair counts: 1 - (2+12) / (0.5*(6+12) + 0.5*(2+12)) = 1 - 14/16,
    # not the mean of the per-image errors (0.25).
    assert scores.adapted_rand(scores.combined_table([t1, t2])) == pytest.approx(0.125)


def test_classification_by_hand():
    # classes bird, cat, dog, fish (fish never occurs: left out of macro-F1)
    truth = ["cat", "cat", "cat", "dog", "dog", "bird"]
    pred = ["cat", "cat", "dog", "dog", "bird", "bird"]
    confusion = scores.label_confusion(truth, pred, ["bird", "cat", "dog", "fish"])
    np.testing.assert_array_equal(confusion, [[1, 0, 0, 0], [0, 2, 1, 0], [1, 0, 1, 0], [0, 0, 0, 0]])
    s = scores.classification_summary(confusion)
    assert s["accuracy"] == pytest.approx(4 / 6)
    # bird P 1/2 R 1 F1 2/3; cat P 1 R 2/3 F1 0.8; dog P 1/2 R 1/2 F1 1/2
    np.testing.assert_allclose(s["precision"][:3], [0.5, 1.0, 0.5])
    np.testing.assert_allclose(s["recall"][:3], [1.0, 2 / 3, 0.5])
    np.testing.assert_allclose(s["f1"][:3], [2 / 3, 0.8, 0.5])
    assert s["macro_f1"] == pytest.approx((2 / 3 + 0.8 + 0.5) / 3)
    assert s["support"] == [1, 3, 2, 0]
    with pytest.raises(ValueError, match="horse"):
        scores.label_confusion(["horse"], ["cat"], ["cat", "dog"])


def test_confusion_png_is_readable():
    assert [compact_count(n) for n in (7, 9999, 12345, 999_999, 3_456_789)] == ["7", "9999", "12k", "1.0M", "3.5M"]
    png = render_confusion_png(np.array([[9, 1], [0, 5]]), ["cat", "dog"], "images")
    small = Image.open(io.BytesIO(png))
    big = Image.open(io.BytesIO(render_confusion_png(np.eye(6, dtype=int), list("abcdef"))))
    assert small.format == "PNG" and big.width > small.width and big.height > small.height
    # Diagonal cells (fraction 1) are filled with the darkest shade, the rest stay light:
    # six cells of at least 40x40 pixels, less their numbers.
    pixels = np.asarray(big.convert("RGB")).reshape(-1, 3)
    darkest = np.all(pixels == cell_colour(1.0), axis=1).sum()
    assert 6 * 35 * 35 < darkest < 7 * 60 * 60
    assert cell_colour(0.0) == (255, 255, 255)


# ---------------------------------------------------------------- the command


def _png(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(array, np.uint8)).save(path)


def _rows(path):
    return {r["image_id"]: r for r in pq.read_table(path).to_pylist()}


def _complete(pred):
    """What tessera predict writes last, when every image is done."""
    (pred / names.SUCCESS_FILE).write_text("{}")


def test_segmentation_command(tmp_path, capsys):
    truth, pred = tmp_path / "truth", tmp_path / "pred"
    _png(truth / "a.png", TRUTH_3)
    _png(pred / names.MASKS_DIR / "a.png", PRED_3)
    _png(truth / "sub" / "b.tif", TRUTH_3 * (TRUTH_3 != I))      # other extension, nothing ignored
    _png(pred / names.MASKS_DIR / "sub" / "b.png", PRED_3 * 255)           # --binary-255 output
    _png(truth / "c.png", TRUTH_3)                                 # no prediction
    _png(pred / names.MASKS_DIR / "d.png", PRED_3)                         # no truth
    _png(truth / "e.png", np.zeros((4, 4)))                        # wrong size -> rejected
    _png(pred / names.MASKS_DIR / "e.png", np.zeros((3, 3)))
    (truth / "notes.txt").write_text("not a mask")                 # rejected, not skipped
    _png(truth / "f.png", TRUTH_3)                                 # listed, but its mask file is gone
    pq.write_table(pa.table({"image_id": ["a", "sub/b", "d", "e", "f"],
                             "mask_path": [names.mask_path("a"), names.mask_path("sub/b"), names.mask_path("d"), names.mask_path("e"), None]}),
                   pred / names.PREDICTIONS_FILE)
    out = tmp_path / "out" / "report.json"
    argv = ["--predictions", str(pred), "--truth", str(truth), "--output", str(out), "--mask-values", "ids"]
    assert evaluate.run(argv) == 2  # no _SUCCESS: the run may not have finished
    assert "no _SUCCESS" in capsys.readouterr().err and not out.exists()
    _complete(pred)
    code = evaluate.run(argv)
    assert code == 0
    report = json.loads(out.read_text())
    assert report["counts"] == {"truth": 5, "predictions": 5, "evaluated": 2, "missing_predictions": 1,
                                "missing_truth": 1, "rejected": 3}
    assert report["missing_predictions"] == ["c"] and report["missing_truth"] == ["d"]
    assert sorted((r["reason"], r["source"].split("/")[-1]) for r in report["rejected"]) == [
        ("not_an_image", "notes.txt"), ("prediction_file_missing", "f.png"), ("size_mismatch", "e.png")]
    # a: confusion [[4,1],[1,2]]; b: the ignored pixel is now background predicted 1 -> [[4,2],[1,2]]
    np.testing.assert_array_equal(report["confusion_matrix"]["counts"], [[8, 3], [2, 4]])
    micro, mean = report["overall"]["micro"], report["overall"]["per_image_mean"]
    assert micro["dice"] == pytest.approx(8 / 13)                        # 2*4 / (2*4 + 3 + 2)
    assert mean["dice"] == pytest.approx((4 / 6 + 4 / 7) / 2)
    assert micro["pixel_error"] == pytest.approx(5 / 17)
    assert report["overall"]["per_class"]["foreground"]["support"] == 6
    rows = _rows(out.with_suffix(".parquet"))
    assert {k: r["status"] for k, r in rows.items()} == {
        "a": "evaluated", "sub/b": "evaluated", "c": "missing_prediction", "d": "missing_truth", "e": "rejected",
        "f": "rejected"}
    assert rows["a"]["dice"] == pytest.approx(4 / 6) and rows["a"]["adapted_rand_error"] == pytest.approx(0.5)
    assert rows["a"]["dice:background"] == pytest.approx(0.8) and rows["a"]["ignored_pixels"] == 1
    cm = pq.read_table(tmp_path / "out" / "report_confusion.parquet").to_pylist()
    assert {"truth": "background", "predicted": "foreground", "count": 3} in cm
    printed = capsys.readouterr().out
    assert "missing predictions: c" in printed and "dice" in printed and "0.6154" in printed


def test_multiclass_command_and_workers_agree(tmp_path):
    truth, pred = tmp_path / "truth", tmp_path / "pred"
    rng = np.random.default_rng(0)
    for i in range(4):
        t = rng.integers(0, 3, (6, 5))
        _png(truth / f"m{i}.png", t)
        _png(pred / names.MASKS_DIR / f"m{i}.png", np.where(rng.random((6, 5)) < 0.7, t, rng.integers(0, 3, (6, 5))))
    # As tessera predict writes it: task and class names in every row.
    pq.write_table(pa.table({"image_id": [f"m{i}" for i in range(4)], "task": ["segmentation"] * 4,
                             "class_names": [["bg", "cell", "edge"]] * 4}), pred / names.PREDICTIONS_FILE)
    _complete(pred)
    reports = []
    for flags in (["--workers", "1"], ["--workers", "2", "--class-names", "bg,cell,edge"]):
        out = tmp_path / f"r{flags[1]}.json"
        assert evaluate.run(["--predictions", str(pred), "--truth", str(truth), "--output", str(out), *flags]) == 0
        reports.append(json.loads(out.read_text()))
    assert reports[0]["overall"] == reports[1]["overall"]
    per_class = reports[0]["overall"]["per_class"]
    assert list(per_class) == ["bg", "cell", "edge"]
    counts = np.array(reports[0]["confusion_matrix"]["counts"])
    assert counts.sum() == 4 * 30
    assert per_class["cell"]["recall"] == pytest.approx(counts[1, 1] / counts[1].sum())
    assert per_class["edge"]["precision"] == pytest.approx(counts[2, 2] / counts[:, 2].sum())


def test_classification_command(tmp_path, capsys):
    truth, pred = tmp_path / "photos", tmp_path / "pred"
    labels = {"cat": ["c1", "c2", "c3"], "dog": ["d1", "d2"], "bird": ["b1"]}
    for label, stems in labels.items():
        for name in stems:
            _png(truth / label / f"{name}.jpg", np.zeros((2, 2)))
    _png(truth / "loose.png", np.zeros((2, 2)))                    # no class folder -> rejected
    # predictions made on a flat folder: ids without the class folder are matched too
    ids = ["cat/c1", "cat/c2", "c3", "dog/d1", "d2", "b1", "x9"]
    predicted = ["cat", "cat", "dog", "dog", "bird", "bird", "cat"]
    pred.mkdir()
    pq.write_table(pa.table({"image_id": ids, "label": predicted,
                             "probabilities": [[0.9, 0.05, 0.05]] * len(ids)}), pred / names.PREDICTIONS_FILE)
    _complete(pred)
    out = tmp_path / "cls.json"
    assert evaluate.run(["--predictions", str(pred), "--truth", str(truth), "--output", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["task"] == "classification" and report["class_names"] == ["bird", "cat", "dog"]
    assert report["confusion_matrix"]["counts"] == [[1, 0, 0], [0, 2, 1], [1, 0, 1]]
    assert report["overall"]["accuracy"] == pytest.approx(4 / 6)
    assert report["overall"]["macro_f1"] == pytest.approx((2 / 3 + 0.8 + 0.5) / 3)
    assert report["overall"]["per_class"]["cat"]["recall"] == pytest.approx(2 / 3)
    assert report["missing_truth"] == ["x9"] and report["rejected"][0]["reason"] == "no_class_folder"
    rows = _rows(tmp_path / "cls.parquet")
    assert rows["c3"]["truth_label"] == "cat" and rows["c3"]["correct"] is False
    assert rows["c3"]["confidence"] == pytest.approx(0.9)
    cm = {(r["truth"], r["predicted"]): r["count"] for r in pq.read_table(tmp_path / "cls_confusion.parquet").to_pylist()}
    assert cm[("cat", "dog")] == 1 and sum(cm.values()) == 6
    assert Image.open(tmp_path / "cls_confusion.png").size[0] > 100

    # Names that do not cover the labels: a clear error and exit status 2, no report.
    assert evaluate.run(["--predictions", str(pred), "--truth", str(truth), "--output", str(tmp_path / "x.json"),
                         "--class-names", "cat,dog"]) == 2
    assert "['bird'] are not among the classes" in capsys.readouterr().err
    assert not (tmp_path / "x.json").exists()

    # The same truth as a CSV (ids with extensions are accepted); one image left unlabelled.
    csv_path = tmp_path / "labels.csv"
    csv_path.write_text("image_id,label\ncat/c1.jpg,cat\ncat/c2,cat\nc3,cat\nd2,dog\nb1,bird\n")
    out = tmp_path / "csv.json"
    assert evaluate.run(["--predictions", str(pred), "--truth", str(csv_path), "--output", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["counts"]["evaluated"] == 5 and sorted(report["missing_truth"]) == ["dog/d1", "x9"]
    assert report["overall"]["accuracy"] == pytest.approx(3 / 5)


def test_gs_paths_through_the_emulator(tmp_path, gcs_prefix):
    from apache_beam.io.filesystems import FileSystems

    from tests.conftest import upload_tree

    _png(tmp_path / "truth" / "a.png", TRUTH_3)
    _png(tmp_path / "pred" / names.MASKS_DIR / "a.png", PRED_3)
    pq.write_table(pa.table({"image_id": ["a"], "mask_path": [names.mask_path("a")]}),
                   tmp_path / "pred" / names.PREDICTIONS_FILE)
    _complete(tmp_path / "pred")
    upload_tree(tmp_path, gcs_prefix)
    output = f"{gcs_prefix}/reports/report.json"
    assert evaluate.run(["--predictions", f"{gcs_prefix}/pred", "--truth", f"{gcs_prefix}/truth",
                         "--output", output, "--mask-values", "ids"]) == 0
    with FileSystems.open(output) as f:
        report = json.loads(f.read())
    assert report["overall"]["micro"]["dice"] == pytest.approx(4 / 6)
    with FileSystems.open(f"{gcs_prefix}/reports/report.parquet") as f:
        assert pq.read_table(io.BytesIO(f.read()))["image_id"].to_pylist() == ["a"]
    assert FileSystems.exists(f"{gcs_prefix}/reports/report_confusion.png")


def test_incomplete_predictions_need_allow_incomplete_and_bad_flags_exit_2(tmp_path, capsys):
    import os
    import subprocess
    import sys

    truth, pred = tmp_path / "truth", tmp_path / "pred"
    _png(truth / "a.png", TRUTH_3)
    _png(pred / names.MASKS_DIR / "a.png", PRED_3)  # an interrupted run: masks, no Parquet, no _SUCCESS
    base = ["--predictions", str(pred), "--output", str(tmp_path / "r.json"), "--mask-values", "ids"]
    assert evaluate.run([*base, "--truth", str(truth)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("tessera evaluate: error:") and "--allow-incomplete" in err and "\n" not in err
    assert evaluate.run([*base, "--truth", str(truth), "--allow-incomplete"]) == 0
    assert json.loads((tmp_path / "r.json").read_text())["overall"]["micro"]["dice"] == pytest.approx(4 / 6)
    _complete(pred)
    assert evaluate.run([*base, "--truth", str(tmp_path / "nothing")]) == 2
    assert "nothing: no truth found" in capsys.readouterr().err
    pq.write_table(pa.table({"image_id": ["a"], "label": ["cat"]}), pred / names.PREDICTIONS_FILE)
    assert evaluate.run([*base, "--truth", str(tmp_path / "nothing")]) == 2  # classification: class folders
    assert "nothing: no truth found" in capsys.readouterr().err
    done = subprocess.run([sys.executable, "-m", "tessera.cli", "evaluate", *base, "--truth", str(tmp_path / "x.csv")],
                          check=False, cwd=os.path.dirname(os.path.dirname(__file__)), capture_output=True, text=True)
    assert done.returncode == 2 and "Traceback" not in done.stderr and "x.csv: no such file" in done.stderr


def test_seam_band_marks_pixels_near_inner_core_edges_only():
    band = scores.seam_band(10, 6, core=4, stride=4, band=2)
    assert band[:, 0].tolist() == [False, False, False, True, True, True, False, True, True, True]
    assert band[0].tolist() == [False, False, False, True, True, True]
    assert not scores.seam_band(3, 3, core=4, stride=4, band=2).any()   # one tile: no seam at all


def test_evaluate_reports_errors_near_tile_seams_vs_inside(tmp_path):
    truth = np.zeros((12, 12), np.uint8)
    truth[2:10, 2:10] = 1
    pred = truth.copy()
    pred[4, :] = 1 - pred[4, :]                                 # every error on a seam row (cores of 4)
    _png(tmp_path / "truth" / "a.png", truth)
    _png(tmp_path / "pred" / names.mask_path("a"), pred)
    _complete(tmp_path / "pred")
    (tmp_path / "pred" / names.CONFIG_FILE).write_text(json.dumps({"geometry": {"core": 4, "stride": 4}}))
    out = tmp_path / "report.json"
    assert evaluate.run(["--predictions", str(tmp_path / "pred"), "--truth", str(tmp_path / "truth"),
                         "--output", str(out), "--class-names", "bg,fg", "--seam-band", "1"]) == 0
    seams = json.loads(out.read_text())["overall"]["tile_seams"]
    assert seams["error_near_seams"] == pytest.approx(12 / seams["pixels_near_seams"]) and seams["error_inside"] == 0
    assert seams["pixels_near_seams"] + seams["pixels_inside"] == 144


# ---------------------------------------------------------------- sizes from the headers

def _png_header_only(path, height, width):
    """A PNG that declares height x width 8-bit gray pixels and holds none: decoding it fails
    (truncated), reading its header does not; so a refusal that names its size came from the header."""
    import struct
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
                     + chunk(b"IEND", b""))


def test_a_huge_predicted_mask_is_refused_from_its_header_before_decoding(tmp_path):
    truth, pred = tmp_path / "truth", tmp_path / "pred"
    _png(truth / "a.png", TRUTH_3)
    _png_header_only(pred / names.mask_path("a"), 16000, 16000)        # another size than its truth
    _png(truth / "b.png", TRUTH_3)
    _png_header_only(pred / names.mask_path("b"), 3, 3)                # the truth's size: decoded, truncated
    _png(truth / "c.png", np.zeros((120, 100)))
    _png_header_only(pred / names.mask_path("c"), 120, 100)            # the truth's size, over --max-pixels
    _complete(pred)
    out = tmp_path / "report.json"
    assert evaluate.run(["--predictions", str(pred), "--truth", str(truth), "--output", str(out),
                         "--mask-values", "ids", "--max-pixels", "10000"]) == 1     # nothing evaluated
    rejected = {r["source"].split("/")[-1]: r for r in json.loads(out.read_text())["rejected"]}
    assert rejected["a.png"]["reason"] == "size_mismatch"
    assert rejected["a.png"]["detail"] == "truth (3, 3) vs prediction (16000, 16000) (from the headers; neither was decoded)"
    assert rejected["b.png"]["reason"] in ("truncated", "unreadable")   # the header agreed, so it was decoded
    assert rejected["c.png"]["reason"] == "too_large" and "12000 pixels is more than --max-pixels 10000" in \
        rejected["c.png"]["detail"]
    assert rejected["c.png"]["source"].endswith("truth/c.png")   # the truth is refused first, from its header


def test_probabilities_of_another_size_give_no_vrand_and_the_table_prints_no_row_of_n_a(tmp_path, capsys):
    truth, pred = tmp_path / "truth", tmp_path / "pred"
    _png(truth / "a.png", TRUTH_3)
    _png(pred / names.mask_path("a"), PRED_3)
    (pred / names.PROBABILITIES_DIR).mkdir()
    np.save(pred / names.probabilities_path("a"), np.full((30, 30, 2), 0.5, np.float16))   # not a's size
    pq.write_table(pa.table({"image_id": ["a"], "mask_path": [names.mask_path("a")],
                             "probabilities_path": [names.probabilities_path("a")]}), pred / names.PREDICTIONS_FILE)
    _complete(pred)
    out = tmp_path / "report.json"
    argv = ["--predictions", str(pred), "--truth", str(truth), "--output", str(out), "--mask-values", "ids"]
    assert evaluate.run(argv) == 0
    assert json.loads(out.read_text())["overall"]["micro"]["vrand_isbi"] is None
    printed = capsys.readouterr().out
    assert "dice" in printed and "vrand_isbi" not in printed and "n/a" not in printed
    foreground = np.where(TRUTH_3 == 1, 0.9, 0.1)
    np.save(pred / names.probabilities_path("a"), np.stack([1 - foreground, foreground], -1).astype(np.float16))
    assert evaluate.run(argv) == 0
    assert json.loads(out.read_text())["overall"]["micro"]["vrand_isbi"] is not None
    assert "vrand_isbi" in capsys.readouterr().out
    (pred / names.probabilities_path("a")).write_bytes(b"not an npy file")
    assert evaluate.run(argv) == 1
    assert json.loads(out.read_text())["rejected"][0]["reason"] == "unreadable"


def test_missing_predictions_directory_says_to_run_predict(tmp_path, capsys):
    assert evaluate.run(["--predictions", str(tmp_path / "nope"), "--truth", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"tessera evaluate: error: --predictions {tmp_path / 'nope'}: no such directory, or nothing in it; "
                   f"write it first with `tessera predict --model-dir MODEL --input IMAGES --output {tmp_path / 'nope'}`")
