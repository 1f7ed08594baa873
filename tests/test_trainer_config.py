"""`tessera train` flags -> frozen config: precedence, AIP_* defaults, validation."""
import dataclasses
import json
import subprocess
import sys

import pytest

from trainer import config, task
from trainer.config import TrainConfig, for_task, from_dict, parse_config


def test_flags_override_defaults_and_nested_sections():
    cfg = parse_config(["--data", "d", "--model-dir", "m/", "--model", "res-attention-unet", "--attention", "eca",
                        "--deep-supervision", "--loss", "focal+dice", "--epochs", "3", "--batch-size", "16",
                        "--optimizer", "sgd", "--learning-rate", "0.1", "--schedule", "step", "--warmup-epochs", "1",
                        "--mixed-precision", "off", "--xla", "--no-batchnorm", "--no-flips", "--noise", "0"], env={})
    assert (cfg.model.name, cfg.model.attention, cfg.model.deep_supervision, cfg.model.batchnorm) == (
        "res-attention-unet", "eca", True, False)
    assert (cfg.loss.loss, cfg.epochs, cfg.batch_size, cfg.xla, cfg.mixed_precision) == ("focal+dice", 3, 16, True, "off")
    assert (cfg.optim.optimizer, cfg.optim.learning_rate, cfg.optim.schedule, cfg.optim.warmup_epochs) == (
        "sgd", 0.1, "step", 1.0)
    assert (cfg.augment.flips, cfg.augment.noise, cfg.augment.rot90) == (False, 0.0, True)
    assert (cfg.model_dir, cfg.checkpoint_dir, cfg.backup_dir, cfg.log_dir) == ("m", "m/checkpoints", "m/backup", "m/logs")
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.epochs = 5


def test_config_file_is_overridden_by_flags(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"epochs": 7, "seed": 3, "model": {"filters": 8}, "optim": {"learning_rate": 0.5}}))
    cfg = parse_config(["--config", str(path), "--data", "d", "--model-dir", "m", "--seed", "4"], env={})
    assert (cfg.epochs, cfg.seed, cfg.model.filters, cfg.optim.learning_rate) == (7, 4, 8, 0.5)
    # the resolved config written beside a model reads back as the same config
    assert from_dict(json.loads(cfg.to_json())) == cfg


def test_managed_training_environment_variables():
    env = {"AIP_MODEL_DIR": "gs://b/model", "AIP_CHECKPOINT_DIR": "gs://b/ckpt", "AIP_TENSORBOARD_LOG_DIR": "gs://b/tb"}
    cfg = parse_config(["--data", "gs://b/data"], env=env)
    assert (cfg.model_dir, cfg.checkpoint_dir, cfg.backup_dir, cfg.log_dir) == (
        "gs://b/model", "gs://b/ckpt", "gs://b/ckpt/backup", "gs://b/tb")
    explicit = parse_config(["--data", "d", "--model-dir", "m", "--log-dir", "l"], env=env)
    assert (explicit.model_dir, explicit.log_dir) == ("m", "l")


@pytest.mark.parametrize("argv, message", [
    (["--data", "d"], "--model-dir is required"),
    (["--model-dir", "m"], "--data is required"),
    (["--data", "d", "--model-dir", "m", "--optimizer", "lamb"], "optimizer"),
    (["--data", "d", "--model-dir", "m", "--epochs", "0"], "--epochs must be > 0"),
    (["--data", "d", "--model-dir", "m", "--target-recall", "1.5"], "--target-recall"),
    (["--data", "d", "--model-dir", "m", "--padding", "full"], "padding"),
])
def test_bad_settings_are_clear_errors(argv, message):
    with pytest.raises(ValueError, match=message):
        parse_config(argv, env={})


def test_unknown_config_keys_are_rejected():
    with pytest.raises(ValueError, match="unknown config keys"):
        from_dict({"epochz": 3})
    with pytest.raises(ValueError, match="section 'model'"):
        from_dict({"model": {"deepth": 3}})


def test_task_defaults_and_model_task_mismatch():
    cfg = TrainConfig(data="d", model_dir="m")
    seg, cls = for_task(cfg, "segmentation"), for_task(cfg, "classification")
    assert (seg.model.name, seg.loss.loss, seg.monitor) == ("unet", "ce+dice", "val_dice")
    assert (cls.model.name, cls.loss.loss, cls.monitor) == ("small-cnn", "ce", "val_accuracy")
    # made for objects (a boundary target or a border weight map): the lowest validation loss
    assert for_task(cfg, "segmentation", objects=True).monitor == "val_loss"
    assert for_task(dataclasses.replace(cfg, monitor="val_dice"), "segmentation", objects=True).monitor == "val_dice"
    with pytest.raises(ValueError, match="does not fit a classification dataset"):
        for_task(dataclasses.replace(cfg, model=config.ModelConfig(name="unet")), "classification")


def test_command_line_entry_points(capsys):
    assert task.run(["--data", "d"]) == 2
    assert "--model-dir is required" in capsys.readouterr().err
    out = subprocess.run([sys.executable, "-m", "trainer.task", "--help"], capture_output=True, text=True, check=True)
    for flag in ("--data", "--model-dir", "--checkpoint-dir", "--log-dir", "--model", "--attention",
                 "--deep-supervision", "--loss", "--epochs", "--batch-size", "--optimizer", "--learning-rate",
                 "--schedule", "--warmup-epochs", "--mixed-precision", "--xla", "--steps-per-epoch", "--seed",
                 "--config"):
        assert flag in out.stdout


def test_monitor_must_be_a_metric_of_the_task():
    with pytest.raises(ValueError, match="--monitor 'val_accuracy'"):
        for_task(TrainConfig(data="d", model_dir="m", monitor="val_accuracy"), "segmentation")
    assert for_task(TrainConfig(data="d", model_dir="m", monitor="val_loss"), "classification").monitor == "val_loss"
