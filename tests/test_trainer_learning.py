"""Training end to end in process: a small U-Net learns the synthetic discs (val Dice >= 0.9),
writes the model directory, history and TensorBoard events, and a rerun resumes at the end."""
import json
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

from schemas import model_card as mc  # noqa: E402
from schemas import versions  # noqa: E402
from tessera import synthetic_dataset  # noqa: E402
from trainer.config import from_dict, resolve_paths  # noqa: E402
from trainer.data import open_dataset  # noqa: E402
from trainer.loop import NothingToExport, train  # noqa: E402
from trainer.steps import evaluate_split  # noqa: E402


def make_config(data, model_dir, **values):
    base = {"data": str(data), "model_dir": str(model_dir), "verbose": 0, "seed": 0}
    for key, value in values.items():
        if isinstance(value, dict):
            base.setdefault(key, {}).update(value)
        else:
            base[key] = value
    return resolve_paths(from_dict(base), {})


@pytest.fixture(scope="module")
def discs(tmp_path_factory):
    path = tmp_path_factory.mktemp("discs")
    synthetic_dataset.segmentation_dataset(str(path))
    return path


def event_tags(log_dir):
    tags = {}
    for root, _, files in os.walk(log_dir):
        for name in files:
            for record in tf.data.TFRecordDataset(os.path.join(root, name)):
                event = tf.compat.v1.Event.FromString(record.numpy())
                for value in event.summary.value:
                    tags.setdefault(value.tag, []).append((value.metadata.plugin_data.plugin_name, value.tensor))
    return tags


def test_unet_learns_discs_and_exports(discs, tmp_path):
    model_dir = tmp_path / "model"
    cfg = make_config(discs, model_dir, epochs=4, batch_size=8, model={"depth": 2, "filters": 8},
                      optim={"learning_rate": 0.01}, image_summaries=2)
    result = train(cfg)
    best = max(row["val_dice"] for row in result.history)
    assert best >= 0.9, result.history
    card = mc.ModelCard.from_json((model_dir / versions.CURRENT_LINK / mc.MODEL_CARD_FILE).read_text())
    assert card.metrics["dice"] >= 0.9 and card.metrics["best_epoch"] == result.best_epoch
    assert card.geometry() == (24, 4, 32, 32) and card.class_names == ("background", "disc")
    assert 0.0 < card.threshold < 1.0 and card.threshold_rule == "max F1 on val"
    with open(discs / "_SUCCESS") as handle:
        assert card.dataset_fingerprint == json.load(handle)["fingerprint"]
    assert card.config["model"]["name"] == "unet" and card.config["loss"]["loss"] == "ce+dice"
    for name in (mc.SAVED_MODEL_DIR, mc.KERAS_FILE):
        assert (model_dir / versions.CURRENT_LINK / name).exists(), name
    for name in ("config.json", "history.csv", "learning_curves.png", "checkpoints", "backup", "logs"):
        assert (model_dir / name).exists(), name
    from PIL import Image

    assert Image.open(model_dir / "learning_curves.png").size == (900, 380)
    assert len((model_dir / "history.csv").read_text().strip().splitlines()) == 1 + 4
    tags = event_tags(model_dir / "logs")
    assert {"loss", "learning_rate", "val_dice", "val_loss"} <= set(tags)
    assert len(tags["loss"]) == result.history[-1]["epoch"] * 24
    (plugin, tensor), *_ = tags["input | truth | prediction"]
    panels = tf.make_ndarray(tensor)
    assert plugin == "images" and panels[:2].tolist() == [b"96", b"32"] and len(panels) == 2 + 2
    assert tf.io.decode_png(panels[2]).shape == (32, 96, 3)

    again = train(cfg)   # same command after completion: nothing left to train, same export
    assert again.resumed_at == 4 * 24 and again.step_losses == []
    assert [r["epoch"] for r in again.history] == [1, 2, 3, 4]


def test_res_attention_unet_with_deep_supervision_exports_the_fused_output(tmp_path):
    data = tmp_path / "three"
    synthetic_dataset.segmentation_dataset(str(data), n_train=32, n_val=8, n_test=2, num_classes=3, channels=3)
    model_dir = tmp_path / "model"
    cfg = make_config(data, model_dir, epochs=2, steps_per_epoch=4, batch_size=4, loss={"loss": "focal+0.5*dice"},
                      model={"name": "res-attention-unet", "depth": 2, "filters": 4, "attention": "cbam",
                             "deep_supervision": True}, optim={"clipnorm": 1.0, "weight_decay": 1e-4},
                      image_summaries=1)
    result = train(cfg)
    assert np.isfinite(result.step_losses).all() and len(result.step_losses) == 8
    card = mc.ModelCard.from_json((model_dir / versions.CURRENT_LINK / mc.MODEL_CARD_FILE).read_text())
    assert card.threshold is None and card.threshold_rule == "argmax" and card.num_classes == 3
    loaded = tf.saved_model.load(str(model_dir / versions.CURRENT_LINK / mc.SAVED_MODEL_DIR))
    out = loaded.signatures["serving_default"](tiles=tf.zeros([2, 32, 32, 3], tf.uint8))
    assert list(out) == [mc.SERVING_OUTPUT] and out[mc.SERVING_OUTPUT].shape == (2, 32, 32, 3)
    np.testing.assert_allclose(out[mc.SERVING_OUTPUT].numpy().sum(-1), 1.0, rtol=1e-5)


@pytest.mark.parametrize("precision, dtype", [("on", "float16"), ("bfloat16", "bfloat16")])
def test_mixed_precision_xla_and_in_step_augmentation_train(discs, tmp_path, precision, dtype):
    cfg = make_config(discs, tmp_path / "m", epochs=1, steps_per_epoch=3, batch_size=4, mixed_precision=precision,
                      xla=True, model={"depth": 1, "filters": 4}, image_summaries=0, augment={"placement": "step"})
    result = train(cfg, export_model=False)
    assert len(result.step_losses) == 3 and np.isfinite(result.step_losses).all()
    assert result.compute_dtype == dtype and result.xla            # the policy and XLA were applied
    import keras

    assert keras.mixed_precision.global_policy().name == "float32"   # restored afterwards


def test_xla_really_compiles_the_step_and_is_refused_on_several_cpu_replicas(discs, tmp_path):
    import subprocess
    import sys

    argv = [sys.executable, "-m", "trainer.task", "--data", str(discs), "--epochs", "1", "--steps-per-epoch", "2",
            "--batch-size", "4", "--depth", "1", "--filters", "2", "--image-summaries", "0", "--verbose", "0"]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "0"}    # TensorFlow says when XLA compiled a cluster
    mirrored = ("import sys, tensorflow as tf; cpu = tf.config.list_physical_devices('CPU')[0]; "
                "tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2); "
                "from trainer.config import from_dict, resolve_paths; from trainer.loop import XlaRefused, train; "
                f"cfg = resolve_paths(from_dict({{'data': {str(discs)!r}, 'model_dir': {str(tmp_path / 'm2')!r}, "
                "'xla': True, 'epochs': 1, 'steps_per_epoch': 1, 'verbose': 0}), {}); "
                "strategy = tf.distribute.MirroredStrategy(['/cpu:0', '/cpu:1'])\n"
                "try:\n    train(cfg, strategy, export_model=False)\nexcept XlaRefused as e:\n    print(e); sys.exit(3)")
    jobs = {xla: subprocess.Popen([*argv, "--model-dir", str(tmp_path / xla), xla], stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True, env=env) for xla in ("--xla", "--no-xla")}
    jobs["mirrored"] = subprocess.Popen([sys.executable, "-c", mirrored], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                        text=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    outputs = {name: job.communicate(timeout=300) for name, job in jobs.items()}   # side by side: 3 start-ups at once
    for xla in ("--xla", "--no-xla"):
        assert jobs[xla].returncode == 0, outputs[xla][1][-2000:]
    assert "Compiled cluster using XLA" in outputs["--xla"][1] and "Compiled cluster using XLA" not in outputs["--no-xla"][1]
    done = subprocess.CompletedProcess(jobs["mirrored"].args, jobs["mirrored"].returncode, *outputs["mirrored"])
    assert done.returncode == 3 and "--xla is not supported with 2 CPU replicas" in done.stdout, done.stderr[-2000:]


def test_refuses_to_resume_a_backup_of_other_settings(discs, tmp_path):
    cfg = make_config(discs, tmp_path / "m", epochs=1, steps_per_epoch=1, batch_size=4,
                      model={"depth": 1, "filters": 2}, image_summaries=0)
    train(cfg, export_model=False)
    other = make_config(discs, tmp_path / "m", epochs=1, steps_per_epoch=1, batch_size=4,
                        model={"depth": 1, "filters": 4}, image_summaries=0)
    with pytest.raises(ValueError, match="different settings.*model"):
        train(other, export_model=False)


def test_a_backup_of_an_older_tessera_without_the_newer_settings_still_resumes(discs, tmp_path):
    cfg = make_config(discs, tmp_path / "m", epochs=2, steps_per_epoch=1, batch_size=4,
                      model={"depth": 1, "filters": 2}, image_summaries=0)
    first = train(make_config(discs, tmp_path / "m", epochs=1, steps_per_epoch=1, batch_size=4,
                              model={"depth": 1, "filters": 2}, image_summaries=0), export_model=False)
    recorded_path = tmp_path / "m" / "backup" / "config.json"
    recorded = json.loads(recorded_path.read_text())
    del recorded["export_bf16"], recorded["loss"]["weight_map"]     # settings an older Tessera did not have
    recorded_path.write_text(json.dumps(recorded))
    resumed = train(cfg, export_model=False)                        # at their defaults: the same run
    assert resumed.resumed_at == 1 and len(first.history) == 1


@pytest.mark.parametrize("empty_splits", [(), ("val",)], ids=["no-val-split", "val-split-of-0-examples"])
def test_a_dataset_without_validation_examples_trains_and_exports(tmp_path, empty_splits):
    # preprocess writes a val split of empty shards when it rejected every val source
    data = tmp_path / "trainonly"
    synthetic_dataset.segmentation_dataset(str(data), n_train=16, n_val=0, n_test=0, empty_splits=empty_splits)
    info = open_dataset(str(data))
    assert ("val" in info.split_files) == bool(empty_splits) and info.split_sizes.get("val", 0) == 0
    model_dir = tmp_path / "model"
    result = train(make_config(data, model_dir, epochs=2, batch_size=8, model={"depth": 1, "filters": 2}))
    assert result.best_epoch >= 1 and "val_loss" not in result.history[-1]
    card = mc.ModelCard.from_json((model_dir / versions.CURRENT_LINK / mc.MODEL_CARD_FILE).read_text())
    assert card.threshold == 0.5 and card.threshold_rule == "default 0.5 (no validation split)"
    if empty_splits:
        with pytest.raises(ValueError, match="'val' split of .* has no examples"):
            evaluate_split(tf.distribute.get_strategy(), None, info, 8)


def test_a_run_whose_monitored_metric_is_never_finite_says_so_instead_of_exporting(discs, tmp_path):
    # a learning rate this large overflows the weights on the first step: val_loss is NaN
    cfg = make_config(discs, tmp_path / "m", epochs=2, steps_per_epoch=1, batch_size=4, monitor="val_loss",
                      model={"depth": 1, "filters": 2, "batchnorm": False}, image_summaries=0,
                      optim={"optimizer": "sgd", "learning_rate": 1e30, "schedule": "constant"})
    with pytest.raises(NothingToExport, match=r"val_loss was never finite in 2 epochs.*the backup .*backup"):
        train(cfg)
    history = (tmp_path / "m" / "history.csv").read_text().lower()
    assert history.count("nan") >= 2
    assert not (tmp_path / "m" / versions.POINTER_FILE).exists() and not (tmp_path / "m" / mc.MODEL_CARD_FILE).exists()
    assert not (tmp_path / "m" / "checkpoints").exists() or not os.listdir(tmp_path / "m" / "checkpoints")


def test_early_stopping_and_its_state_survive_a_rerun(discs, tmp_path):
    # a learning rate this small leaves the weights (no batch norm) and so val_dice unchanged:
    # epoch 1 is the best, epoch 2 does not improve, patience 1 stops there
    cfg = make_config(discs, tmp_path / "m", epochs=5, steps_per_epoch=2, batch_size=4, patience=1,
                      model={"depth": 1, "filters": 2, "batchnorm": False}, image_summaries=0,
                      optim={"learning_rate": 1e-12, "schedule": "constant"})
    result = train(cfg, export_model=False)
    assert [row["epoch"] for row in result.history] == [1, 2] and result.best_epoch == 1
    assert result.history[1]["val_dice"] == result.history[0]["val_dice"]
    again = train(cfg, export_model=False)
    assert again.step_losses == [] and [row["epoch"] for row in again.history] == [1, 2]


def test_the_precision_policy_follows_the_hardware():
    from trainer import distribute

    amx = "processor\t: 0\nflags\t\t: fpu sse2 avx512f amx_bf16 amx_tile\n"
    avx512_bf16 = "flags\t\t: fpu avx512f avx512_bf16\n"
    plain = "flags\t\t: fpu sse2 avx2 avx512f\n"
    assert distribute.cpu_has_native_bf16(amx) and distribute.cpu_has_native_bf16(avx512_bf16)
    assert not distribute.cpu_has_native_bf16(plain) and not distribute.cpu_has_native_bf16("")
    policy = distribute.mixed_precision_policy
    assert policy("auto", gpu=True, native_bf16=True) == "mixed_float16"
    assert policy("auto", gpu=False, native_bf16=True) == "mixed_bfloat16"
    assert policy("auto", gpu=False, native_bf16=False) == "float32"
    assert [policy(s) for s in ("on", "float16", "bfloat16", "off")] == [
        "mixed_float16", "mixed_float16", "mixed_bfloat16", "float32"]
