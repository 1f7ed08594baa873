"""A boundary-target dataset (preprocess --target boundary) trains end to end: tf.data reads its
three classes (and its distance map when it has one), each loss with class weights from its
stats runs, and the model learns the boundary / interior split of touching nuclei."""
from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from pipelines.core import targets  # noqa: E402
from pipelines.preprocess import job as preprocess  # noqa: E402
from tessera.nuclei import write_nuclei_folder  # noqa: E402


@pytest.fixture(scope="module")
def boundary_dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("nuclei")
    write_nuclei_folder(root / "raw", count=6, size=(96, 96), seed=1)
    assert preprocess.run(["--input", str(root / "raw"), "--output", str(root / "ds"), "--tile-size", "32",
                           "--margin", "8", "--color-mode", "grayscale", "--mask-values", "instances",
                           "--target", "boundary", "--distance-map", "--split-fractions", "0.67,0.33,0",
                           "--direct_running_mode=in_memory"]) == 0
    return root / "ds"


def test_the_trainer_reads_three_classes_and_the_class_weights_follow_them(boundary_dataset):
    from trainer import data, losses

    info = data.open_dataset(str(boundary_dataset))
    assert info.spec.num_classes == 3 and info.spec.distance == "boundary"
    counts = info.stats["class_pixels"]
    assert list(counts) == ["background", "boundary", "interior"] and min(counts.values()) > 0
    weights = losses.class_weights_from_setting("auto", info.stats, info.spec.class_names, info.spec.task)
    assert len(weights) == 3 and weights[1] > weights[0]          # the thin band is the rare class
    images, masks = data.sample(info, 4, "train")
    assert images.shape[1:] == (48, 48, 1) and masks.shape[1:] == (48, 48, 1)
    assert set(np.unique(masks)) <= {0, 1, 2, 255} and {1, 2} <= set(np.unique(masks))


@pytest.mark.parametrize("loss", ["ce+dice", "focal"])
def test_tessera_train_trains_a_boundary_dataset(boundary_dataset, tmp_path, loss):
    from trainer import export
    from trainer.config import from_dict, resolve_paths
    from trainer.loop import train

    config = resolve_paths(from_dict({
        "data": str(boundary_dataset), "model_dir": str(tmp_path / "m"), "verbose": 0, "seed": 0,
        "batch_size": 4, "epochs": 2, "steps_per_epoch": 6, "image_summaries": 0, "mixed_precision": "off",
        "model": {"depth": 2, "filters": 8}, "optim": {"learning_rate": 3e-3},
        "loss": {"loss": loss, "class_weights": "auto"}}), {})
    run = train(config)
    assert np.isfinite(run.step_losses).all() and run.step_losses[-1] < run.step_losses[0]
    card = export.load_card(str(tmp_path / "m"))
    assert tuple(card.class_names) == ("background", "boundary", "interior") and card.is_boundary_model


def test_the_stored_distance_map_reads_back_in_pixels(boundary_dataset):
    import tensorflow as tf

    from trainer import data

    info = data.open_dataset(str(boundary_dataset))
    features = __import__("schemas.example", fromlist=["tfds_features"]).tfds_features(info.spec)
    seen = 0
    for record in tf.data.TFRecordDataset(list(info.split_files["train"])):
        decoded = features.deserialize_example(record)
        mask, distance = decoded["mask"].numpy()[..., 0], decoded["distance"].numpy()[..., 0]
        assert ((distance > 0) <= ((mask == 1) | (mask == 2))).all()       # distances only inside objects
        if not (mask == 2).any():
            continue
        seen += 1
        pixels = targets.decode_distance(distance, info.spec.distance_max)
        step = info.spec.distance_max / 255 / 2 + 1e-6                      # the stored rounding
        assert pixels[mask == 1].max() <= 2.0 + step and pixels[mask == 2].min() > 2.0 - step
    assert seen > 3
