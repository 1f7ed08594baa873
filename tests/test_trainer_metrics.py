"""Metrics and threshold calibration against hand-computed numbers; ignore-aware."""
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from trainer import calibrate, metrics  # noqa: E402

# truth and binary predictions (as logits) over 8 labelled pixels + 2 ignored
TRUTH = np.array([[1, 1, 1, 0, 0, 0, 0, 1, 255, 255]], np.uint8).reshape(1, 1, 10, 1)
PRED = np.array([1, 1, 0, 1, 0, 0, 0, 1, 1, 0])
LOGITS = np.where(PRED == 1, 3.0, -3.0).astype(np.float32).reshape(1, 1, 10, 1)


def test_confusion_matrix_skips_ignored_pixels():
    cm = metrics.confusion_matrix(TRUTH, LOGITS, 2).numpy()
    # tp = 3 (pixels 0, 1, 7), fn = 1 (pixel 2), fp = 1 (pixel 3), tn = 3
    np.testing.assert_array_equal(cm, [[3, 1], [1, 3]])


def test_segmentation_scores_by_hand():
    scores = metrics.segmentation_scores([[3, 1], [1, 3]], beta=2.0)
    assert scores["dice"] == pytest.approx(6 / 8)
    assert scores["iou"] == pytest.approx(3 / 5)
    assert scores["precision"] == pytest.approx(3 / 4)
    assert scores["recall"] == pytest.approx(3 / 4)
    assert scores["fbeta"] == pytest.approx(5 * 3 / (5 * 3 + 4 * 1 + 1))
    # three classes: class 2 absent from truth and prediction -> not averaged in
    cm = np.array([[5, 1, 0], [2, 4, 0], [0, 0, 0]])
    assert metrics.segmentation_scores(cm)["dice"] == pytest.approx(8 / (8 + 1 + 2))
    # nothing in truth nor prediction: perfect by convention
    assert metrics.segmentation_scores([[9, 0], [0, 0]])["dice"] == 1.0
    # foreground in truth, none predicted: precision 0 (not 1)
    assert metrics.segmentation_scores([[9, 0], [3, 0]])["precision"] == 0.0


def test_iou_agrees_with_keras_iou_with_ignore_class():
    keras_iou = keras.metrics.IoU(num_classes=2, target_class_ids=[1], ignore_class=255, sparse_y_pred=True)
    keras_iou.update_state(TRUTH[..., 0].astype(np.int32), PRED.reshape(1, 1, 10))
    cm = metrics.confusion_matrix(TRUTH, LOGITS, 2).numpy()
    assert metrics.segmentation_scores(cm)["iou"] == pytest.approx(float(keras_iou.result()), rel=1e-6)


def test_classification_scores_by_hand():
    # rows truth, columns prediction
    cm = np.array([[4, 1, 0], [0, 3, 2], [0, 0, 0]])
    scores = metrics.classification_scores(cm)
    assert scores["accuracy"] == pytest.approx(7 / 10)
    f1 = [2 * 4 / (2 * 4 + 1), 2 * 3 / (2 * 3 + 1 + 2), 0.0]   # class 2 predicted but never true
    assert scores["macro_f1"] == pytest.approx(np.mean(f1))
    logits = np.array([[5.0, 0, 0], [0, 5.0, 0], [0, 0, 5.0]], np.float32)
    np.testing.assert_array_equal(metrics.confusion_matrix(np.array([0, 2, 2]), logits, 3).numpy(),
                                  [[1, 0, 0], [0, 0, 0], [0, 1, 1]])


def test_segmentation_score_keras_metric_round_trips():
    metric = metrics.SegmentationScore("iou", num_classes=2)
    metric.update_state(TRUTH, LOGITS)
    assert float(metric.result()) == pytest.approx(3 / 5)
    clone = metrics.SegmentationScore.from_config(metric.get_config())
    assert clone.get_config() == metric.get_config()
    clone.update_state(TRUTH, LOGITS)
    assert float(clone.result()) == pytest.approx(3 / 5)
    with pytest.raises(ValueError):
        metrics.SegmentationScore("accuracy")


def test_foreground_histograms_count_labelled_pixels():
    hist = metrics.foreground_histograms(TRUTH, LOGITS, bins=10).numpy()
    assert hist.sum() == 8
    # P(fg) = sigmoid(+-3) = 0.953 / 0.047 -> bins 9 / 0
    np.testing.assert_array_equal(hist[1], [1, 0, 0, 0, 0, 0, 0, 0, 0, 3])
    np.testing.assert_array_equal(hist[0], [3, 0, 0, 0, 0, 0, 0, 0, 0, 1])
    # a diverged network (NaN logits) is counted in bin 0, like argmax counts it as class 0
    diverged = metrics.foreground_histograms(TRUTH, np.full_like(LOGITS, np.nan), bins=10).numpy()
    np.testing.assert_array_equal(diverged[:, 0], [4, 4])
    assert diverged.sum() == 8


# bins of 0.1: background at 0.1 (5), 0.3 (3), 0.6 (2); foreground at 0.4 (1), 0.7 (3), 0.9 (4)
HIST = np.zeros((2, 10))
HIST[0, [1, 3, 6]] = [5, 3, 2]
HIST[1, [4, 7, 9]] = [1, 3, 4]


def test_threshold_of_maximum_f_beta():
    # t=0.7: tp 7, fp 0, fn 1 -> F1 14/15; t=0.4: tp 8, fp 2 -> 16/18; t=0.8: 8/12
    threshold, rule = calibrate.calibrate_threshold(HIST, beta=1.0)
    assert threshold == pytest.approx(0.7) and rule == "max F1 on val"
    assert calibrate.scores_at(HIST, threshold)["fbeta"] == pytest.approx(14 / 15)
    # F2 prefers recall: t=0.4 gives 40/42 > 35/39 at 0.7
    assert calibrate.calibrate_threshold(HIST, beta=2.0)[0] == pytest.approx(0.4)


def test_threshold_for_a_target_recall():
    threshold, rule = calibrate.calibrate_threshold(HIST, target_recall=0.8)
    assert threshold == pytest.approx(0.7) and rule == "recall >= 0.8 on val"   # recall 7/8
    assert calibrate.calibrate_threshold(HIST, target_recall=0.9)[0] == pytest.approx(0.4)
    scores = calibrate.scores_at(HIST, 0.4)
    assert scores["recall"] == 1.0 and scores["precision"] == pytest.approx(8 / 10)
    assert calibrate.calibrate_threshold(np.zeros((2, 10)), target_recall=0.9)[0] == 0.0
