"""The distance head (issue 18): a dataset preprocessed with --distance-map trains a second output
(sigmoid, 1 channel) on the stored distance-to-boundary map beside the class output, with a loss
per head; augmentation moves the map with the labels; the export's signature returns the distance
in px beside the probabilities, the card lists both heads, and predict runs the model. Without
maps (or with --distance-head off) nothing changes: one output, one loss."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

from pipelines.preprocess import job as preprocess  # noqa: E402
from schemas import model_card as mc  # noqa: E402
from tessera.nuclei import write_nuclei_folder  # noqa: E402
from trainer.augment import augment_example_batch  # noqa: E402
from trainer.config import AugmentConfig, ModelConfig, from_dict, resolve_paths  # noqa: E402
from trainer.losses import LossSpec, combine, distance_sums, head_losses  # noqa: E402


def _preprocess(raw, out, *extra):
    assert preprocess.run(["--input", str(raw), "--output", str(out), "--tile-size", "32", "--margin", "8",
                           "--color-mode", "grayscale", "--mask-values", "instances", "--target", "boundary",
                           "--split-fractions", "0.67,0.33,0", "--direct_running_mode=in_memory", *extra]) == 0
    return out


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    root = tmp_path_factory.mktemp("nuclei-distance")
    write_nuclei_folder(root / "raw", count=4, size=(64, 64), seed=3)
    return root / "raw"


@pytest.fixture(scope="module")
def distance_dataset(raw):
    return _preprocess(raw, raw.parent / "ds-distance", "--distance-map", "--distance-max", "16")


@pytest.fixture(scope="module")
def plain_dataset(raw):
    return _preprocess(raw, raw.parent / "ds-plain")


def _config(data, model_dir, **overrides):
    values = {"data": str(data), "model_dir": str(model_dir), "verbose": 0, "seed": 0, "batch_size": 4, "epochs": 1,
              "steps_per_epoch": 3, "image_summaries": 0, "mixed_precision": "off",
              "model": {"depth": 2, "filters": 4}, "optim": {"learning_rate": 3e-3}}
    for key, value in overrides.items():
        values[key] = {**values.get(key, {}), **value} if isinstance(value, dict) else value
    return resolve_paths(from_dict(values), {})


def test_the_distance_loss_is_the_mean_absolute_error_over_labelled_pixels():
    # [1, 2, 2, 2]: class ids (one pixel ignored) and the stored distance map (255 = distance_max)
    y = tf.constant([[[[2, 255], [1, 51]], [[0, 0], [255, 200]]]], tf.uint8)
    truth = np.array([[1.0, 0.2], [0.0, 200 / 255]])
    perfect = tf.constant(truth[None, ..., None], tf.float32)
    total, count = distance_sums(y, perfect)
    assert float(total) == pytest.approx(0.0, abs=1e-7) and float(count) == 3.0
    guess = tf.constant([[[[0.5], [0.2]], [[0.3], [0.9]]]], tf.float32)   # the ignored pixel's 0.9 counts nothing
    total, count = distance_sums(y, guess)
    assert float(total) / float(count) == pytest.approx((0.5 + 0.0 + 0.3) / 3, rel=1e-6)
    # combined: loss = class terms + distance_weight * distance; each head's loss apart for the logs
    spec = LossSpec.from_text("ce+dice", distance_weight=0.5)
    sums, counts = tf.constant([3.0, 1.0, 0.8]), tf.constant([6.0, 2.0, 3.0])
    assert float(combine(sums, counts, spec)) == pytest.approx(0.5 + 0.5 + 0.5 * 0.8 / 3)
    heads = head_losses(sums, counts, spec)
    assert float(heads["classes"]) == pytest.approx(1.0) and float(heads["distance"]) == pytest.approx(0.8 / 3)
    assert head_losses(sums[:2], counts[:2], LossSpec.from_text("ce+dice")) == {}


@pytest.mark.parametrize("in_dataset", [False, True])
def test_augmentation_moves_the_distance_map_exactly_with_the_labels(in_dataset):
    size, batch = 8, 16
    codes = np.arange(size * size, dtype=np.uint8).reshape(size, size)        # every pixel its own distance code
    masks = np.stack([codes % 3, codes], axis=-1)[None].repeat(batch, axis=0)  # class ids, distance map
    images = masks[..., 1:].astype(np.float32) / 255.0                         # the image: the same codes
    cfg = AugmentConfig(brightness=0.0, contrast=0.0, gamma=0.0, noise=0.0)
    seed = tf.constant([7, 11], tf.int64)
    if in_dataset:
        ds = tf.data.Dataset.from_tensors((images, masks))
        ds = ds.map(lambda x, y: augment_example_batch(x, y, seed, cfg, True))
        out_images, out_masks = next(iter(ds))
    else:
        out_images, out_masks = augment_example_batch(tf.constant(images), tf.constant(masks), seed, cfg, True)
    out_images, out_masks = out_images.numpy(), out_masks.numpy()
    assert out_masks.dtype == np.uint8
    moved = out_masks[..., 1]
    assert (moved == np.round(out_images[..., 0] * 255)).all()      # the map moved as the image did
    assert (out_masks[..., 0] == moved % 3).all()                    # and as the class ids did
    dihedral = [np.rot90(t, k) for t in (codes, codes.T) for k in range(4)]
    assert all(any((m == d).all() for d in dihedral) for m in moved)  # a flip / rotation, nothing else
    assert sum(not (m == codes).all() for m in moved) >= batch // 2   # and most examples did move


def test_the_u_nets_get_a_second_output_and_the_step_a_loss_per_head():
    from schemas.example import BOUNDARY_CLASSES, DatasetSpec
    from trainer import export
    from trainer.models import build_model, output_size, primary_output, split_outputs
    from trainer.steps import output_loss_sums

    spec = DatasetSpec(task="segmentation", core=16, margin=0, channels=1, class_names=BOUNDARY_CLASSES,
                       target="boundary", object_class="nucleus", distance="boundary", distance_max=16.0)
    x = tf.random.stateless_uniform([2, 16, 16, 1], [1, 2])
    y = tf.concat([tf.fill([2, 16, 16, 1], tf.constant(2, tf.uint8)),      # interior
                   tf.fill([2, 16, 16, 1], tf.constant(51, tf.uint8))], axis=-1)   # distance 51/255 = 0.2
    loss_spec = LossSpec.from_text("ce+dice", distance_weight=1.0)
    for model_cfg in (ModelConfig(name="unet", depth=2, filters=4),
                      ModelConfig(name="res-attention-unet", depth=2, filters=4, deep_supervision=True)):
        net = build_model(model_cfg, spec, distance=True)
        outputs = net(x)
        classes, distance = split_outputs(outputs)
        assert distance.shape == (2, 16, 16, 1) and distance.dtype == tf.float32
        assert float(tf.reduce_min(distance)) >= 0.0 and float(tf.reduce_max(distance)) <= 1.0
        assert primary_output(outputs).shape == (2, 16, 16, 3) and output_size(net) == 16
        sums, counts = output_loss_sums(y, outputs, loss_spec)
        assert sums.shape == (3,) and float(counts[-1]) == 2 * 16 * 16
        assert float(sums[-1]) == pytest.approx(float(tf.reduce_sum(tf.abs(distance - 0.2))), rel=1e-5)
        served = export.inference_model(export.exported_outputs(net), {"scale": 1 / 255, "offset": 0.0}, 16.0)
        out = served(x * 255.0)
        assert sorted(out) == ["distance", "probabilities"]            # deep supervision's sides are not exported
        assert np.allclose(out["distance"].numpy(), distance.numpy() * 16.0, atol=1e-5)
        plain = build_model(model_cfg, spec)                            # without the head: what it always was
        assert not isinstance(plain(x), dict)
    with pytest.raises(ValueError, match="distance head needs a segmentation U-Net"):
        build_model(ModelConfig(name="small-cnn"), DatasetSpec(task="classification", core=16, margin=0, channels=1,
                                                               class_names=("a", "b")), distance=True)


def test_a_distance_dataset_trains_both_heads_exports_them_and_predict_runs(distance_dataset, raw, tmp_path):
    from pipelines.predict import job as predict
    from trainer import export
    from trainer.loop import train

    run = train(_config(distance_dataset, tmp_path / "m", loss={"distance_weight": 0.5}))
    row = run.history[-1]
    for key in ("loss_classes", "loss_distance", "val_loss_classes", "val_loss_distance"):
        assert np.isfinite(row[key]) and row[key] > 0, key
    assert row["loss"] == pytest.approx(row["loss_classes"] + 0.5 * row["loss_distance"], rel=1e-4)
    assert row["val_loss"] == pytest.approx(row["val_loss_classes"] + 0.5 * row["val_loss_distance"], rel=1e-4)
    history = (tmp_path / "m" / "history.csv").read_text().splitlines()[0].split(",")
    assert {"loss_classes", "loss_distance", "val_loss_classes", "val_loss_distance"} <= set(history)

    card = export.load_card(str(tmp_path / "m"))
    assert sorted(card.heads) == ["distance", "probabilities"]
    assert card.heads["distance"]["unit"] == "px" and card.heads["distance"]["max"] == 16.0
    assert card.heads["probabilities"]["classes"] == ["background", "boundary", "interior"]
    assert 0 <= card.metrics["distance_mae_px"] <= 16.0 and card.decoder["mode"] in ("seeded", "partition")
    serve = tf.saved_model.load(f"{export.current_export(str(tmp_path / 'm'))}/{mc.SAVED_MODEL_DIR}")
    serve = serve.signatures["serving_default"]
    tiles = np.random.default_rng(0).integers(0, 256, (2, card.input_size, card.input_size, 1), dtype=np.uint8)
    out = serve(**{mc.SERVING_INPUT: tf.constant(tiles)})
    assert sorted(out) == ["distance", "probabilities"]
    assert out["distance"].shape == (2, card.output_size, card.output_size, 1) and out["distance"].dtype == tf.float32
    assert 0.0 <= float(tf.reduce_min(out["distance"])) and float(tf.reduce_max(out["distance"])) <= 16.0
    assert out["probabilities"].shape == (2, card.output_size, card.output_size, 3)

    assert predict.run(["--model-dir", str(tmp_path / "m"), "--input", str(raw / "images"),
                        "--output", str(tmp_path / "pred")]) == 0
    rows = [json.loads(p.read_text()) for p in sorted((tmp_path / "pred").rglob("*.json"))
            if "image_id" in p.read_text()]
    assert len({r["image_id"] for r in rows}) == 4


def test_distance_head_on_without_maps_is_refused_in_one_line(plain_dataset, tmp_path, capsys):
    from trainer import task

    assert task.run(["--data", str(plain_dataset), "--model-dir", str(tmp_path / "m"), "--distance-head", "on"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--distance-head on" in err and "--distance-map" in err
    assert not (tmp_path / "m").exists()


def test_without_maps_or_with_the_head_off_training_is_unchanged(plain_dataset, distance_dataset, tmp_path):
    from trainer import data, export
    from trainer.config import for_task
    from trainer.loop import train
    from trainer.models import build_model
    from trainer.steps import loss_spec_for

    cfg = for_task(_config(distance_dataset, tmp_path / "off", model={"distance_head": "off"}), "segmentation", True)
    off = data.with_distance_head(data.open_dataset(str(distance_dataset)), "off")      # maps there, left out
    assert not off.distance and data.sample(off, 1, "train")[1].shape[-1] == 1
    assert loss_spec_for(cfg, off).distance_weight == 0
    assert not isinstance(build_model(cfg.model, off.spec, off.distance).output, dict)
    run = train(_config(plain_dataset, tmp_path / "plain"))
    assert not {"loss_classes", "loss_distance", "val_loss_distance"} & set(run.history[-1])
    card = export.load_card(str(tmp_path / "plain"))
    assert list(card.heads) == ["probabilities"] and "distance_mae_px" not in card.metrics
    serve = tf.saved_model.load(f"{export.current_export(str(tmp_path / 'plain'))}/{mc.SAVED_MODEL_DIR}")
    assert list(serve.signatures["serving_default"].structured_outputs) == ["probabilities"]


# One process, two logical CPU devices: MirroredStrategy (2 per replica) takes the same steps as the
# default strategy (batch 4), both heads' losses included (augmentation off: it draws per replica batch).
MIRRORED = textwrap.dedent("""
    import json, sys
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    from trainer.config import from_dict, resolve_paths
    from trainer.loop import train
    data, out = sys.argv[1:]
    def config(name, batch):
        return resolve_paths(from_dict({
            "data": data, "model_dir": f"{out}/{name}", "epochs": 1, "steps_per_epoch": 2, "batch_size": batch,
            "verbose": 0, "image_summaries": 0, "model": {"depth": 2, "filters": 4}, "augment": {"enabled": False},
            "mixed_precision": "off"}), {})
    one = train(config("one", 4), export_model=False)
    two = train(config("two", 2), tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]), export_model=False)
    print(json.dumps({"one": one.history[-1], "two": two.history[-1], "steps": [one.step_losses, two.step_losses]}))
""")


def test_mirrored_strategy_trains_the_distance_head_as_one_device_does(distance_dataset, tmp_path):
    run = subprocess.run([sys.executable, "-c", MIRRORED, str(distance_dataset), str(tmp_path)], capture_output=True,
                         text=True, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"), timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result["steps"][1] == pytest.approx(result["steps"][0], rel=1e-4)
    for key in ("loss", "loss_classes", "loss_distance", "val_loss", "val_loss_distance"):
        assert result["two"][key] == pytest.approx(result["one"][key], rel=1e-4), key
