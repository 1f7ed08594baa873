"""The U-Net border weight map: the term by hand, computed per tile in preprocess, stored,
moved by the static and the dynamic augmentation, and weighing the pixel losses."""
from __future__ import annotations

import json
import math
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from PIL import Image  # noqa: E402
from scipy import ndimage  # noqa: E402

from pipelines.core import weight_map  # noqa: E402
from pipelines.preprocess import job as preprocess  # noqa: E402
from pipelines.preprocess import static_augment  # noqa: E402
from schemas.example import IGNORE_LABEL  # noqa: E402


def test_the_border_term_by_hand():
    objects = np.zeros((10, 20), np.int32)
    objects[:, 0:5] = 1
    objects[:, 8:13] = 2               # a gap of three columns (5, 6, 7) between 1 and 2
    term = weight_map.border_term(objects, objects == 0, sigma=5.0)
    gap = math.exp(-(4.0 ** 2) / (2 * 25.0))          # d1 + d2 = 1 + 3 = 2 + 2 = 3 + 1 = 4 px
    assert np.allclose(term[:, 5:8], gap) and np.all(term[objects > 0] == 0)
    # column 15: 3 px from object 2, 11 px from object 1
    assert term[4, 15] == pytest.approx(math.exp(-(14.0 ** 2) / 50.0))
    assert weight_map.encode(term)[4, 6, 0] == round(255 * gap)
    one = np.zeros((10, 20), np.int32)
    one[2:5, 2:5] = 1
    assert not weight_map.border_term(one, one == 0, 5.0).any()      # one object: no second distance


def brute_force(objects: np.ndarray, sigma: float) -> np.ndarray:
    distances = np.sort(np.stack([ndimage.distance_transform_edt(objects != i)
                                  for i in range(1, objects.max() + 1)]), axis=0)
    term = np.exp(-np.square(distances[0] + distances[1]) / (2 * sigma * sigma))
    return np.where(objects == 0, term, 0.0)


@pytest.mark.parametrize("sigma", [2.0, 5.0])
def test_windowed_distances_equal_every_objects_full_distance_transform(sigma):
    rng = np.random.default_rng(3)
    blobs = ndimage.gaussian_filter(rng.normal(size=(96, 120)), 3) > 0.05
    objects, count = ndimage.label(blobs)
    assert count > 8
    exact, fast = brute_force(objects, sigma), weight_map.border_term(objects, objects == 0, sigma)
    stored = exact >= 0.5 / weight_map.STORED_MAX
    assert np.allclose(fast[stored], exact[stored], rtol=0, atol=1e-12)
    assert np.array_equal(weight_map.encode(fast), weight_map.encode(exact))


def test_components_fuse_touching_cells_where_instances_keep_them_apart():
    instances = np.zeros((24, 40), np.uint16)
    instances[4:20, 4:20] = 3
    instances[4:20, 20:36] = 8                  # touches 3 along a whole side
    instances[12, 19:21] = 0                    # but for a notch of background on their border
    mask = (instances > 0).astype(np.uint8)[..., None]
    assert weight_map.objects_of(mask[..., 0], IGNORE_LABEL).max() == 1       # one component
    from_components = weight_map.tile_weights(mask, None, 5.0, IGNORE_LABEL)
    from_instances = weight_map.tile_weights(mask, instances[..., None], 5.0, IGNORE_LABEL)
    # (12, 19): 1 px below object 3, sqrt(2) px from object 8's (11, 20)
    assert from_components[12, 19, 0] == 0
    assert from_instances[12, 19, 0] == round(255 * math.exp(-(1 + math.sqrt(2)) ** 2 / 50))
    membrane = mask.copy()
    membrane[:, 20] = 0                         # a background line between them: two components again
    assert weight_map.objects_of(membrane[..., 0], IGNORE_LABEL).max() == 2
    assert weight_map.tile_weights(membrane, None, 5.0, IGNORE_LABEL)[10, 20, 0] == round(255 * math.exp(-4 / 50))


def cells(h: int, w: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """An EM-like picture: bright cells, dark one-pixel membranes between them (the background)."""
    rng = np.random.default_rng(seed)
    seeds = np.zeros((h, w), np.int32)
    for i, (y, x) in enumerate(zip(rng.integers(0, h, 30), rng.integers(0, w, 30)), start=1):
        seeds[y, x] = i
    _, (iy, ix) = ndimage.distance_transform_edt(seeds == 0, return_indices=True)
    regions = seeds[iy, ix]
    membrane = ndimage.morphological_gradient(regions, size=2) > 0
    mask = np.where(membrane, 0, 255).astype(np.uint8)
    image = np.clip(mask * 0.7 + rng.normal(40, 10, (h, w)), 0, 255).astype(np.uint8)
    return image, mask


@pytest.fixture(scope="module")
def weighted(tmp_path_factory):
    root = tmp_path_factory.mktemp("em")
    for i, split in enumerate(("train", "train", "val")):
        for sub in ("images", "masks"):
            (root / "raw" / sub / split).mkdir(parents=True, exist_ok=True)
        image, mask = cells(96, 128, i)
        Image.fromarray(image).save(root / "raw" / "images" / split / f"s{i}.png")
        Image.fromarray(mask).save(root / "raw" / "masks" / split / f"s{i}.png")
    assert preprocess.run(["--input", str(root / "raw"), "--output", str(root / "ds"), "--tile-size", "32",
                           "--margin", "8", "--color-mode", "grayscale", "--augment-copies", "1",
                           "--weight-map", "unet", "--weight-map-sigma", "4", "--target", "classes",
                           "--direct_running_mode=in_memory"]) == 0
    return root / "ds"


def test_preprocess_stores_each_tiles_weights_and_the_static_copies_move_them(weighted):
    import tensorflow as tf

    from trainer import data

    info = data.with_weight_map(data.open_dataset(str(weighted)), "auto")
    assert info.weight_map and info.spec.weight_map == "unet" and info.spec.weight_map_sigma == 4.0
    assert json.loads(open(weighted / "current" / "tessera_dataset.json").read())["weight_map_w0"] == 10.0
    records = {}
    for path in info.split_files["train"]:
        for record in tf.data.TFRecordDataset(path):
            example = tf.train.Example.FromString(record.numpy()).features.feature
            image, target = data.parse_fn(info.spec, True)(record)
            records[example["id"].bytes_list.value[0].decode()] = (
                target.numpy(), json.loads(example["augmentation"].bytes_list.value[0]))
    originals = [k for k in records if k.endswith("#a0")]
    assert len(originals) > 10 and len(records) == 2 * len(originals)
    busy = 0
    for key in originals:
        target, _ = records[key]
        expected = weight_map.tile_weights(target[..., :1], None, 4.0, IGNORE_LABEL)
        assert np.array_equal(target[..., 1:], expected), key       # the tile's own map, from its mask
        busy += int(expected.max() > 200)
        moved, params = records[key[:-1] + "1"]
        assert params and np.array_equal(moved[..., 1:], static_augment.move_map(expected, params))
        assert np.array_equal(moved[..., :1], static_augment.move_labels(target[..., :1], params))
    assert busy > len(originals) // 2           # membranes between cells: high weights in most tiles


def test_the_dynamic_augmentation_moves_the_weights_with_the_mask():
    import tensorflow as tf

    from trainer.augment import augment
    from trainer.config import AugmentConfig

    rng = np.random.default_rng(0)
    weights = rng.integers(0, 256, (8, 16, 16, 1)).astype(np.uint8)
    classes = rng.integers(0, 2, (8, 16, 16, 1)).astype(np.uint8)
    images = np.concatenate([classes, weights], -1).astype(np.float32) / 255.0
    cfg = AugmentConfig(brightness=0, contrast=0, gamma=0, noise=0)
    out_images, out_masks = augment(tf.constant(images), tf.constant(np.concatenate([classes, weights], -1)),
                                    tf.constant([1, 2], tf.int64), cfg)
    assert out_masks.shape == (8, 16, 16, 2)
    assert not np.array_equal(out_masks.numpy(), np.concatenate([classes, weights], -1))    # something moved
    assert np.array_equal(np.rint(out_images.numpy() * 255).astype(np.uint8), out_masks.numpy())


def test_a_pixel_loss_weighs_each_pixel_by_its_class_weight_plus_w0_times_the_term():
    import tensorflow as tf

    from trainer.losses import LossSpec, loss_sums

    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, (2, 6, 6)).astype(np.uint8)
    labels[0, 0, 0] = IGNORE_LABEL
    term = rng.integers(0, 256, (2, 6, 6)).astype(np.uint8)
    logits = rng.normal(size=(2, 6, 6, 1)).astype(np.float32)
    spec = LossSpec.from_text("ce+dice", class_weights=(0.5, 2.0), border_w0=10.0)
    sums, counts = loss_sums(tf.constant(np.stack([labels, term], -1)), tf.constant(logits), spec)
    p = 1 / (1 + np.exp(-logits[..., 0]))
    valid = labels != IGNORE_LABEL
    y = np.where(valid, labels, 0)
    ce = -(y * np.log(p) + (1 - y) * np.log(1 - p))
    weight = np.where(y == 1, 2.0, 0.5) + 10.0 * term / 255.0
    assert float(sums[0]) == pytest.approx(float((ce * weight)[valid].sum()), rel=1e-5)
    assert float(counts[0]) == valid.sum()
    plain = loss_sums(tf.constant(labels[..., None]), tf.constant(logits), LossSpec.from_text("ce+dice"))[0]
    assert float(sums[1]) == pytest.approx(float(plain[1]))       # the region term is not weighted


def test_training_uses_the_weights_and_the_card_says_so(weighted, tmp_path):
    from trainer import calibrate, export
    from trainer.config import from_dict, resolve_paths
    from trainer.loop import train

    def config(model_dir, calibrate="fbeta", **loss):
        return resolve_paths(from_dict({
            "data": str(weighted), "model_dir": str(model_dir), "verbose": 0, "seed": 0, "batch_size": 4,
            "epochs": 1, "steps_per_epoch": 3, "image_summaries": 0, "mixed_precision": "off",
            "calibrate": calibrate, "model": {"depth": 1, "filters": 4}, "loss": {"loss": "ce", **loss}}), {})

    weighted_run = train(config(tmp_path / "w", calibrate="rand"))
    card = export.load_card(str(tmp_path / "w"))
    assert card.weight_map == "unet w0=10 sigma=4"
    # calibrated for objects: the rand rule's threshold, the pixel rule's kept beside it
    assert card.calibration["rule"] == "rand" and card.threshold == card.calibration["threshold"]
    assert card.threshold in calibrate.OBJECT_THRESHOLDS and 0 <= card.metrics["rand_fscore"] <= 1
    assert card.threshold_rule.startswith("max Rand F-score") and "pixel_threshold" in card.calibration
    plain_run = train(config(tmp_path / "p", weight_map="none"))
    plain = export.load_card(str(tmp_path / "p"))
    assert plain.weight_map == "none" and plain.calibration == {"rule": "fbeta", "threshold": plain.threshold}
    # same data, same initial weights: the weighted loss is larger from the first step on
    assert weighted_run.step_losses[0] > 1.2 * plain_run.step_losses[0]


def test_asking_for_weights_a_dataset_does_not_have_is_refused(tmp_path):
    from tessera import synthetic_dataset
    from trainer import data

    synthetic_dataset.segmentation_dataset(str(tmp_path), n_train=4, n_val=0, n_test=0, core=16, margin=4)
    info = data.open_dataset(str(tmp_path))
    assert not data.with_weight_map(info, "auto").weight_map
    with pytest.raises(ValueError, match="preprocess it with --weight-map unet"):
        data.with_weight_map(info, "unet")
