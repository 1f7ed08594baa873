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
    for metric in ("rand", "object-f1", "objects"):
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
    assert rule.startswith("max mean of Rand F-score, object F1 at IoU 0.5 and foreground Dice")


def tiling_cells(side: int = 48, cell: int = 12):
    """EM-like truth: square cells tiling the image, one-pixel membranes (the background) between."""
    ids = np.zeros((side, side), np.int32)
    for i, y in enumerate(range(0, side, cell)):
        for j, x in enumerate(range(0, side, cell)):
            ids[y + 1:y + cell, x + 1:x + cell] = 1 + i * (side // cell) + j
    return ids


def test_auto_scores_rand_where_the_background_only_separates_tiling_objects_else_objects():
    tiles = boundary_target(tiling_cells())
    p = np.eye(3, dtype=np.float32)[tiles]
    for truth, probabilities, metric in ((tiles, p, "rand"), (*constructed_case()[1::-1], "objects")):
        auto = DecoderCalibration("auto", border_thickness=1)
        auto.add(probabilities, truth)
        explicit = DecoderCalibration(metric, border_thickness=1)
        explicit.add(probabilities, truth)
        assert auto.chosen_metric() == metric
        np.testing.assert_array_equal(auto.values(), explicit.values())
        params, value, rule = auto.best()
        assert (params, value) == explicit.best()[:2]
        assert rule.startswith(explicit.best()[2]) and "(auto: " in rule
        assert ("100% of the truth's background within 8 px" in rule) == (metric == "rand")


def test_objects_is_the_mean_of_rand_object_f1_and_dice_so_a_background_blob_costs_its_pixels():
    from trainer.calibrate import ObjectScoreboard

    truth = np.zeros((20, 30), np.int64)
    truth[2:6, 2:6], truth[10:14, 10:14] = 1, 2                   # two cells of 16 px
    blob = truth.copy()
    blob[16:20, :] = 3                                            # + the background as one object (120 px)
    board = ObjectScoreboard("objects", 2)
    board.score(0, truth, truth)
    board.score(1, truth, blob)
    # Rand F ignores the truth's background (1.0 both); object F1 2/2.5 = 0.8 with the blob; Dice 64 / (64 + 120)
    np.testing.assert_allclose(board.values(), [1.0, (1.0 + 0.8 + 64 / 184) / 3])


def test_the_candidates_are_the_grid_and_partition_grows_by_twice_the_border():
    candidates = decoder_candidates(3)
    assert len(candidates) == 2 * 6 * 7 * 4 and {c.min_size for c in candidates} == {0, 16, 64, 256}
    assert {c.seed for c in candidates} == {0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9}
    assert {c.expand for c in candidates if c.mode == "partition"} == {6}
    assert {c.expand for c in candidates if c.mode == "seeded"} == {0}


def test_sharing_one_watershed_per_threshold_pair_scores_what_each_decoder_alone_gives():
    from schemas import object_scores
    from schemas.decoder import decode
    from trainer.calibrate import ObjectScoreboard

    rng = np.random.default_rng(4)
    ids = np.zeros((64, 64), np.int32)
    for k in range(1, 12):                     # overlapping squares: touching objects of varied size
        y, x, side = rng.integers(0, 52), rng.integers(0, 52), rng.integers(3, 18)
        ids[y:y + side, x:x + side] = k
    truth = boundary_target(ids)
    probabilities = np.eye(3, dtype=np.float32)[truth] * 0.6 + rng.uniform(0, 0.4, (64, 64, 3)).astype(np.float32)
    probabilities /= probabilities.sum(axis=-1, keepdims=True)
    shared = DecoderCalibration("objects", 2)
    shared.add(probabilities, truth)
    alone = ObjectScoreboard("objects", len(shared.candidates))
    truth_ids = object_scores.objects_of(truth_objects(truth), truth == IGNORE_LABEL, instances=True)
    for i, params in enumerate(shared.candidates):
        alone.score(i, truth_ids, decode(params, probabilities=probabilities).astype(np.int64))
    for metric in ("rand", "object-f1", "objects"):
        np.testing.assert_array_equal(shared.values(metric), alone.values(metric))
    assert len(np.unique(shared.values("objects"))) > 10        # the candidates really differ


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
    assert calibration_rule("auto", boundary) == "auto" and calibration_rule("auto", binary) == "fbeta"
    assert calibration_rule("object-f1", boundary) == "object-f1" and calibration_rule("rand", binary) == "rand"
    assert calibration_rule("auto", three) == "fbeta"
    for rule in ("fbeta", "recall"):
        with pytest.raises(ValueError, match="boundary target.*--calibrate auto"):
            calibration_rule(rule, boundary, "d")
    with pytest.raises(ValueError, match="binary segmentation"):
        calibration_rule("rand", three)


def boundary_dataset(path, n_train: int = 16, n_val: int = 4, core: int = 24, margin: int = 4):
    """Touching discs as a boundary-target dataset (each example its own source, core = source)."""
    from pipelines.core.targets import boundary_target as target_of
    from schemas.example import BOUNDARY_CLASSES
    from tessera import synthetic_dataset as sd

    spec = DatasetSpec(task="segmentation", core=core, margin=margin, channels=1, class_names=BOUNDARY_CLASSES,
                       target="boundary", border_thickness=1, object_class="cell")
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:spec.tile_size, :spec.tile_size]
    splits = {}
    for split, n in (("train", n_train), ("val", n_val)):
        examples = []
        for i in range(n):
            ids = np.zeros((spec.tile_size, spec.tile_size), np.int32)
            cy, cx = rng.uniform(10, spec.tile_size - 10, 2)
            for k, dx in enumerate((-5.0, 5.0)):            # two discs touching
                ids[((yy - cy) ** 2 + (xx - cx - dx) ** 2 < 36) & (ids == 0)] = k + 1
            image = np.where(ids > 0, 200, 40) + rng.normal(0, 5, ids.shape)
            mask = target_of(ids, 1)
            example = sd._provenance(f"{split}/img{i:04d}", spec, float(np.mean(ids > 0)))
            example.update(image=sd._as_channels(image, 1), mask=mask[..., None], source_h=spec.core,
                           source_w=spec.core)
            examples.append(example)
        splits[split] = examples
    sd.write_dataset(str(path), spec, splits)
    return spec


def test_a_boundary_dataset_gets_its_decoder_calibrated_into_the_card(tmp_path):
    from tests.test_trainer_learning import make_config
    from trainer import export
    from trainer.loop import train

    boundary_dataset(tmp_path / "data")
    small = {"model": {"depth": 1, "filters": 4}, "epochs": 1, "steps_per_epoch": 2, "batch_size": 4,
             "image_summaries": 0, "mixed_precision": "off"}
    with pytest.raises(ValueError, match="boundary target.*--calibrate auto"):
        train(make_config(tmp_path / "data", tmp_path / "refused", calibrate="fbeta", **small))
    train(make_config(tmp_path / "data", tmp_path / "model", **small))          # --calibrate auto: objects here
    card = export.load_card(str(tmp_path / "model"))
    assert card.is_boundary_model and card.object_class == "cell"
    assert card.output_class_names == ("background", "cell")
    assert card.heads["probabilities"]["classes"] == ["background", "boundary", "interior"]
    decoder = card.decoder_params()
    assert decoder in decoder_candidates(1) and card.decoder["rule"].startswith("max mean of Rand F-score, object F1 at IoU 0.5 and foreground Dice")
    assert card.metrics["objects_score"] == card.decoder["value"] and 0 <= card.decoder["value"] <= 1
    assert card.calibration["rule"] == "objects" and card.config["calibrate"] == card.calibration["requested"] == "auto"
    assert "(auto: " in card.decoder["rule"] and "open background: objects" in card.decoder["rule"]
    plain = tmp_path / "plain"
    from tessera import synthetic_dataset

    synthetic_dataset.segmentation_dataset(str(plain), n_train=8, n_val=2, n_test=0, core=16, margin=4)
    train(make_config(plain, tmp_path / "plain-model", **small))
    plain_card = export.load_card(str(tmp_path / "plain-model"))
    assert plain_card.decoder == DecoderParams("components").to_dict() and not plain_card.is_boundary_model
    assert plain_card.heads["probabilities"]["classes"] == ["background", "disc"]
    assert plain_card.calibration["rule"] == "fbeta" and plain_card.config["calibrate"] == "fbeta"
