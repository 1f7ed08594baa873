"""Training configuration: frozen dataclasses (the defaults live here and only here), the
``tessera train`` flags that override them, and the resolved JSON written beside the model.

Precedence: dataclass defaults < ``--config`` JSON file < command-line flags. Output
directories default to the ``AIP_MODEL_DIR`` / ``AIP_CHECKPOINT_DIR`` /
``AIP_TENSORBOARD_LOG_DIR`` variables that managed training services set.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
from typing import Any

from schemas import cli


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
    enabled: bool = True
    flips: bool = True          # horizontal and vertical, each with probability 1/2
    rot90: bool = True          # k * 90 degrees, k uniform in 0..3
    brightness: float = 0.1     # additive shift, uniform in [-b, b]
    contrast: float = 0.2       # factor around the mean, uniform in [1 - c, 1 + c]
    gamma: float = 0.2          # exponent uniform in [1 - g, 1 + g]
    noise: float = 0.02         # Gaussian sigma uniform in [0, noise]
    placement: str = "auto"     # "pipeline" (tf.data, CPU), "step" (in the training step, on the
                                # accelerator), "auto" = step when a GPU is present

    def __post_init__(self) -> None:
        if self.placement not in ("auto", "pipeline", "step"):
            raise ValueError(f"augmentation placement must be auto, pipeline or step, got {self.placement!r}")
        for name in ("brightness", "contrast", "gamma", "noise"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise ValueError(f"augment {name} must be in [0, 1), got {value}")


SEGMENTATION_MODELS = ("unet", "res-attention-unet")
CLASSIFICATION_MODELS = ("small-cnn", "transfer")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    name: str = ""                  # "" = unet for segmentation, small-cnn for classification
    depth: int = 4                  # poolings (U-Nets) or conv stages (small CNN)
    filters: int = 32               # filters of the first level, doubled per level
    batchnorm: bool = True
    dropout: float = 0.0
    padding: str = "same"           # "same" or "valid" (U-Net only: overlap-tile geometry)
    upsampling: str = "transpose"   # "transpose" or "bilinear"
    attention: str = "cbam"         # res-attention-unet: "se", "eca" or "cbam"
    deep_supervision: bool = False  # res-attention-unet: supervised side outputs, learned fusion
    backbone: str = "mobilenetv2"   # transfer: mobilenetv2, resnet50, efficientnetb0
    backbone_weights: str = ""      # transfer: local weights file; "" = random init (never downloads)
    distance_head: str = "auto"     # U-Nets: a second output regressing the dataset's distance map: auto (when
                                    # the dataset stores distance maps) | on (refused without them) | off


@dataclasses.dataclass(frozen=True)
class LossConfig:
    loss: str = ""                  # "" = "ce+dice" (segmentation) or "ce" (classification)
    class_weights: str = "auto"     # "auto" (balanced, from stats.json), "none" or "w0,w1,..."
    focal_gamma: float = 2.0
    tversky_alpha: float = 0.3      # weight of false positives
    tversky_beta: float = 0.7       # weight of false negatives (> alpha favours recall)
    smooth: float = 1.0             # dice / Tversky smoothing
    weight_map: str = "auto"        # the dataset's border weights in ce / focal: auto (when it has them) | unet | none
    distance_weight: float = 1.0    # distance head: loss = class loss + distance_weight * its mean absolute error


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    optimizer: str = "adam"         # adam, sgd (Nesterov momentum), rmsprop
    learning_rate: float = 1e-3
    momentum: float = 0.9
    schedule: str = "cosine"        # constant, cosine, step
    warmup_epochs: float = 0.0
    step_epochs: int = 10           # step schedule: multiply by step_factor every step_epochs
    step_factor: float = 0.1
    clipnorm: float = 0.0           # global gradient norm clip (0 = off)
    weight_decay: float = 0.0       # decoupled weight decay (0 = off)
    freeze_epochs: int = 0          # transfer: epochs with a frozen backbone before fine-tuning
    fine_tune_lr_factor: float = 0.1  # transfer: learning-rate factor once the backbone trains


_UNITS = {"": 1.0, "s": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0}


def parse_duration(text: str | float) -> float:
    """Seconds of "90", "90s", "25m", "1.5h" (0: no budget)."""
    if isinstance(text, (int, float)):
        return float(text)
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*(s|m|min|h)?\s*", str(text))
    if not match:
        raise ValueError(f"--time-budget: expected seconds or a number with s, m or h (e.g. 25m), got {text!r}")
    return float(match.group(1)) * _UNITS[match.group(2) or ""]


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    data: str = ""
    model_dir: str = ""
    checkpoint_dir: str = ""        # best-model checkpoint; "" = $AIP_CHECKPOINT_DIR or MODEL_DIR/checkpoints
    backup_dir: str = ""            # preemption backup; "" = CHECKPOINT_DIR/../backup or MODEL_DIR/backup
    log_dir: str = ""               # TensorBoard; "" = $AIP_TENSORBOARD_LOG_DIR or MODEL_DIR/logs
    keep_versions: int = 3          # exports kept in MODEL_DIR (schemas.versions); older ones deleted
    verify_digests: bool = False    # also check every shard's sha256 (reads the dataset once more)
    epochs: int = 10
    batch_size: int = 8             # per replica
    steps_per_epoch: int = 0        # 0 = train examples // global batch
    seed: int = 0
    mixed_precision: str = "auto"   # auto (float16 on a GPU, bfloat16 on a bf16 CPU), on/float16, bfloat16, off
    xla: bool = False
    checkpoint_every: int = 100     # steps between preemption backups (and every epoch end)
    patience: int = 0               # early stopping after this many epochs without improvement (0 = off)
    time_budget_s: float = 0.0      # train at most this long (schedule fitted after the first epoch; 0 = off)
    monitor: str = ""               # "" = val_dice / val_accuracy; or val_loss, val_iou, ...
    beta: float = 1.0               # F-beta for metrics and threshold calibration
    target_recall: float = 0.0      # > 0: calibrate the highest threshold whose val recall reaches it
    # the rule on val: auto (a boundary target's decoder: rand or objects as its validation truth
    # says, calibrate.DecoderCalibration; else fbeta) | fbeta | recall (--target-recall) | rand |
    # object-f1 | objects (calibrate.calibration_rule; resolved before the run's config is recorded)
    calibrate: str = "auto"
    export_bf16: bool = False       # also export a SavedModel computing in bfloat16 (predict --precision bfloat16)
    shuffle_buffer: int = 1024
    static_copies: bool = True      # train on the static augmentation copies too (False: originals only)
    image_summaries: int = 4        # validation tiles shown in TensorBoard (0 = none)
    verbose: int = 1                # 0 quiet, 1 progress bar, 2 one line per step
    model: ModelConfig = ModelConfig()
    loss: LossConfig = LossConfig()
    optim: OptimConfig = OptimConfig()
    augment: AugmentConfig = AugmentConfig()

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True)


SECTIONS = {"model": ModelConfig, "loss": LossConfig, "optim": OptimConfig, "augment": AugmentConfig}


def _described(unknown: set[str], known: set[str]) -> str:
    """``epoch (did you mean epochs?), zzz``"""
    return ", ".join(f"{key} (did you mean {hint}?)" if (hint := cli.closest(key, known)) else key
                     for key in sorted(unknown))


def from_dict(values: dict[str, Any]) -> TrainConfig:
    """Builds a TrainConfig from a (possibly partial) nested dict; unknown keys are an error."""
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = set(values) - known
    if unknown:
        raise ValueError(f"unknown config keys: {_described(unknown, known)}")
    top = dict(values)
    for section, cls in SECTIONS.items():
        sub = top.get(section, {})
        if isinstance(sub, cls):
            continue
        fields = {f.name for f in dataclasses.fields(cls)}
        bad = set(sub) - fields
        if bad:
            raise ValueError(f"unknown keys in config section {section!r}: {_described(bad, fields)}")
        top[section] = cls(**sub)
    return TrainConfig(**top)


# (flags, dest, type or action, help). Dest "section.field" addresses a nested field.
_FLAGS: list[tuple[tuple[str, ...], str, Any, str]] = [
    (("--data",), "data", str, "dataset directory written by `tessera preprocess` (local or gs://; required)"),
    (("--model-dir",), "model_dir", str, "output model directory (default $AIP_MODEL_DIR)"),
    (("--checkpoint-dir",), "checkpoint_dir", str, "best checkpoint (default $AIP_CHECKPOINT_DIR or MODEL_DIR/checkpoints)"),
    (("--backup-dir",), "backup_dir", str, "preemption backup (default MODEL_DIR/backup)"),
    (("--log-dir",), "log_dir", str, "TensorBoard logs (default $AIP_TENSORBOARD_LOG_DIR or MODEL_DIR/logs)"),
    (("--keep-versions",), "keep_versions", int, "exports kept in the model directory (newest first)"),
    (("--verify-digests",), "verify_digests", argparse.BooleanOptionalAction,
     "check every shard's sha256 against _SUCCESS at start and before export (sizes are always checked)"),
    (("--model",), "model.name", str, "unet | res-attention-unet | small-cnn | transfer (default: unet / small-cnn)"),
    (("--depth",), "model.depth", int, "U-Net poolings / CNN stages"),
    (("--filters",), "model.filters", int, "filters of the first level"),
    (("--batchnorm",), "model.batchnorm", argparse.BooleanOptionalAction, "batch normalisation"),
    (("--dropout",), "model.dropout", float, "dropout rate"),
    (("--padding",), "model.padding", str, "same | valid (U-Net overlap-tile geometry)"),
    (("--upsampling",), "model.upsampling", str, "transpose | bilinear"),
    (("--attention",), "model.attention", str, "se | eca | cbam"),
    (("--deep-supervision",), "model.deep_supervision", argparse.BooleanOptionalAction, "side outputs + learned fusion"),
    (("--backbone",), "model.backbone", str, "mobilenetv2 | resnet50 | efficientnetb0"),
    (("--backbone-weights",), "model.backbone_weights", str,
     "local weights file for the backbone (default: none, random initialisation; nothing is downloaded)"),
    (("--distance-head",), "model.distance_head", str,
     "auto | on | off: a second output (sigmoid, 1 channel) regressing each pixel's distance to its object's edge "
     "from the dataset's distance maps (preprocess --distance-map); auto = when the dataset has them"),
    (("--distance-weight",), "loss.distance_weight", float,
     "weight of the distance head's loss (mean absolute error of distance / distance_max) in the total"),
    (("--loss",), "loss.loss", str, "e.g. focal+dice, 0.5*ce+dice, tversky (default: ce+dice / ce)"),
    (("--class-weights",), "loss.class_weights", str, "auto | none | w0,w1,..."),
    (("--focal-gamma",), "loss.focal_gamma", float, "focal loss gamma"),
    (("--weight-map",), "loss.weight_map", str,
     "auto | unet | none: weight ce / focal per pixel by the dataset's border weights (preprocess --weight-map)"),
    (("--tversky-alpha",), "loss.tversky_alpha", float, "Tversky false-positive weight"),
    (("--tversky-beta",), "loss.tversky_beta", float, "Tversky false-negative weight"),
    (("--epochs",), "epochs", int, "epochs"),
    (("--batch-size",), "batch_size", int, "batch size per replica"),
    (("--steps-per-epoch",), "steps_per_epoch", int, "steps per epoch (0 = one pass over train)"),
    (("--optimizer",), "optim.optimizer", str, "adam | sgd | rmsprop"),
    (("--learning-rate",), "optim.learning_rate", float, "peak learning rate"),
    (("--momentum",), "optim.momentum", float, "SGD / RMSprop momentum"),
    (("--schedule",), "optim.schedule", str, "constant | cosine | step"),
    (("--warmup-epochs",), "optim.warmup_epochs", float, "linear warm-up epochs"),
    (("--step-epochs",), "optim.step_epochs", int, "step schedule period in epochs"),
    (("--step-factor",), "optim.step_factor", float, "step schedule factor"),
    (("--clipnorm",), "optim.clipnorm", float, "clip the global gradient norm (0 = off)"),
    (("--weight-decay",), "optim.weight_decay", float, "decoupled weight decay (0 = off)"),
    (("--freeze-epochs",), "optim.freeze_epochs", int, "transfer: epochs with a frozen backbone"),
    (("--fine-tune-lr-factor",), "optim.fine_tune_lr_factor", float, "transfer: learning-rate factor when fine-tuning"),
    (("--mixed-precision",), "mixed_precision", str,
     "auto (float16 on GPUs, bfloat16 on CPUs with AMX/AVX512-BF16) | on | float16 | bfloat16 | off"),
    (("--xla",), "xla", argparse.BooleanOptionalAction, "compile the step with XLA"),
    (("--seed",), "seed", int, "seed of initialisation, shuffling and augmentation"),
    (("--checkpoint-every",), "checkpoint_every", int, "steps between preemption backups"),
    (("--patience",), "patience", int, "early-stopping patience in epochs (0 = off)"),
    (("--time-budget",), "time_budget_s", parse_duration,
     "train at most this long, e.g. 25m or 1.5h; the epochs and schedule are fitted to it (0 = off)"),
    (("--monitor",), "monitor", str, "metric for best model / early stopping (default: val_loss for a "
     "boundary target or a weight map, else val_dice; val_accuracy for classification)"),
    (("--beta",), "beta", float, "F-beta"),
    (("--target-recall",), "target_recall", float, "calibrate the threshold to reach this validation recall"),
    (("--export-bf16",), "export_bf16", argparse.BooleanOptionalAction,
     "also export a bfloat16 SavedModel (predict --precision bfloat16: faster on CPUs with AMX / AVX512-BF16)"),
    (("--calibrate",), "calibrate", str,
     "the rule on val: auto (a boundary target's decoder, its thresholds and mode: rand where the truth's "
     "background only separates tiling objects (EM membranes), objects elsewhere; fbeta otherwise) | fbeta (max F-beta; recall with --target-recall) | recall | rand (Rand "
     "F-score) | object-f1 (object F1 at IoU 0.5) | objects (their mean) (binary models: the threshold; "
     "boundary targets: the decoder)"),
    (("--shuffle-buffer",), "shuffle_buffer", int, "shuffle buffer (records)"),
    (("--static-copies",), "static_copies", argparse.BooleanOptionalAction,
     "train on the static augmentation copies written by preprocess (--no-static-copies: originals only)"),
    (("--image-summaries",), "image_summaries", int, "validation tiles drawn in TensorBoard"),
    (("--progress",), "verbose", int, "0 quiet, 1 progress bar, 2 a line per step (also --verbose N)"),
    (("--augment",), "augment.enabled", argparse.BooleanOptionalAction, "dynamic augmentation"),
    (("--flips",), "augment.flips", argparse.BooleanOptionalAction, "random flips"),
    (("--rot90",), "augment.rot90", argparse.BooleanOptionalAction, "random 90 degree rotations"),
    (("--brightness",), "augment.brightness", float, "max brightness shift (normalised units)"),
    (("--contrast",), "augment.contrast", float, "max relative contrast change"),
    (("--gamma",), "augment.gamma", float, "max relative gamma change"),
    (("--noise",), "augment.noise", float, "max Gaussian noise sigma (normalised units)"),
    (("--augment-in",), "augment.placement", str, "auto | pipeline | step (on the accelerator)"),
]


def _get(obj: Any, dest: str) -> Any:
    for part in dest.split("."):
        obj = getattr(obj, part)
    return obj


def build_parser() -> argparse.ArgumentParser:
    parser = cli.ArgumentParser(
        prog="tessera train", allow_abbrev=False, description="Train a segmentation or classification model on a Tessera dataset.")
    parser.add_argument("--config", dest="config_file", default=argparse.SUPPRESS,
                        help="JSON or YAML file with (part of) a resolved config; flags override it (default: none)")
    for flags, dest, kind, help_ in _FLAGS:
        default = _get(TrainConfig(), dest)
        help_ = f"{help_} (default: {default!r})" if default != "" else help_
        if kind is argparse.BooleanOptionalAction:
            parser.add_argument(*flags, dest=dest, action=kind, default=argparse.SUPPRESS, help=help_)
        else:
            parser.add_argument(*flags, dest=dest, type=kind, default=argparse.SUPPRESS, help=help_,
                                metavar=flags[0][2:].upper().replace("-", "_"))
    # --verbose N is --progress N (Keras' name); a bare --verbose means what `tessera --verbose` does
    # (TensorFlow's start-up output, handled by tessera/cli.py), so it leaves the progress alone here
    parser.add_argument("--verbose", dest="verbose", nargs="?", type=int, const=None, default=argparse.SUPPRESS,
                        metavar="N", help="--verbose N: the same as --progress N; a bare --verbose (no number) "
                        "also shows TensorFlow's start-up output, as `tessera --verbose train` does (default: off)")
    return parser


def _set(values: dict[str, Any], dest: str, value: Any) -> None:
    *sections, name = dest.split(".")
    for section in sections:
        values = values.setdefault(section, {})
    values[name] = value


def parse_config(argv: list[str] | None = None, env: dict[str, str] | None = None) -> TrainConfig:
    """Flags (and ``--config``) -> TrainConfig with output paths resolved; validated."""
    env = os.environ if env is None else env
    given = vars(build_parser().parse_args(argv))
    if "verbose" in given and given["verbose"] is None:   # a bare --verbose: not the progress level
        del given["verbose"]
    values: dict[str, Any] = {}
    if "config_file" in given:
        import tensorflow as tf
        import yaml

        path = given.pop("config_file")
        try:
            with tf.io.gfile.GFile(path) as handle:
                values = yaml.safe_load(handle.read())  # JSON or YAML
        except (tf.errors.OpError, OSError, UnicodeDecodeError, yaml.YAMLError) as e:
            raise ValueError(f"--config {path}: cannot read it as JSON or YAML ({type(e).__name__}: "
                             f"{' '.join(str(e).split())})") from e
        if not isinstance(values, dict):
            raise ValueError(f"--config {path}: expected a mapping of config keys to values")
    for dest, value in given.items():
        _set(values, dest, value)
    cfg = from_dict(values)
    return validate(resolve_paths(cfg, env))


def resolve_paths(cfg: TrainConfig, env: dict[str, str]) -> TrainConfig:
    model_dir = cfg.model_dir or env.get("AIP_MODEL_DIR", "")
    if not model_dir:
        raise ValueError("--model-dir is required (or set AIP_MODEL_DIR)")
    model_dir = model_dir.rstrip("/")
    checkpoint_dir = cfg.checkpoint_dir or env.get("AIP_CHECKPOINT_DIR", "") or f"{model_dir}/checkpoints"
    backup_dir = cfg.backup_dir or (f"{env['AIP_CHECKPOINT_DIR'].rstrip('/')}/backup"
                                    if env.get("AIP_CHECKPOINT_DIR") and not cfg.checkpoint_dir
                                    else f"{model_dir}/backup")
    log_dir = cfg.log_dir or env.get("AIP_TENSORBOARD_LOG_DIR", "") or f"{model_dir}/logs"
    return dataclasses.replace(cfg, model_dir=model_dir, checkpoint_dir=checkpoint_dir.rstrip("/"),
                               backup_dir=backup_dir.rstrip("/"), log_dir=log_dir.rstrip("/"))


_CHOICES = {
    "mixed_precision": ("auto", "on", "float16", "bfloat16", "off"),
    "model.padding": ("same", "valid"),
    "model.upsampling": ("transpose", "bilinear"),
    "model.attention": ("se", "eca", "cbam"),
    "model.backbone": ("mobilenetv2", "resnet50", "efficientnetb0"),
    "model.name": ("",) + SEGMENTATION_MODELS + CLASSIFICATION_MODELS,
    "optim.optimizer": ("adam", "sgd", "rmsprop"),
    "optim.schedule": ("constant", "cosine", "step"),
    "loss.weight_map": ("auto", "unet", "none"),
    "model.distance_head": ("auto", "on", "off"),
    "calibrate": ("auto", "fbeta", "recall", "rand", "object-f1", "objects"),
}


def validate(cfg: TrainConfig) -> TrainConfig:
    if not cfg.data:
        raise ValueError("--data is required: the dataset directory that `tessera preprocess` wrote")
    for dest, choices in _CHOICES.items():
        value = _get(cfg, dest)
        if value not in choices:
            hint = cli.closest(str(value), [c for c in choices if c])
            flag = next(flags[0] for flags, flag_dest, _, _ in _FLAGS if flag_dest == dest)
            raise ValueError(f"{flag} must be one of "
                             f"{[c for c in choices if c]}, got {value!r}" + (f" (did you mean {hint}?)" if hint else ""))
    positive = {"epochs": cfg.epochs, "batch_size": cfg.batch_size, "checkpoint_every": cfg.checkpoint_every,
                "keep_versions": cfg.keep_versions,
                "depth": cfg.model.depth, "filters": cfg.model.filters, "learning_rate": cfg.optim.learning_rate}
    for name, value in positive.items():
        if value <= 0:
            raise ValueError(f"--{name.replace('_', '-')} must be > 0, got {value}")
    if isinstance(cfg.time_budget_s, str):     # "25m" in a config file
        cfg = dataclasses.replace(cfg, time_budget_s=parse_duration(cfg.time_budget_s))
    if cfg.time_budget_s < 0:
        raise ValueError(f"--time-budget must be >= 0, got {cfg.time_budget_s}")
    if not 0.0 <= cfg.target_recall < 1.0:
        raise ValueError(f"--target-recall must be in [0, 1), got {cfg.target_recall}")
    if cfg.calibrate == "recall" and not cfg.target_recall:
        raise ValueError("--calibrate recall needs --target-recall (e.g. 0.95)")
    if not cfg.loss.distance_weight > 0:
        raise ValueError(f"--distance-weight must be > 0, got {cfg.loss.distance_weight} "
                         "(--distance-head off trains without the distance head)")
    if not 0.0 <= cfg.model.dropout < 1.0:
        raise ValueError(f"--dropout must be in [0, 1), got {cfg.model.dropout}")
    return cfg


def for_task(cfg: TrainConfig, task: str, objects: bool = False) -> TrainConfig:
    """Fills the task-dependent defaults (model, loss, monitor) and checks the model fits the task.
    ``objects``: the dataset is made for objects (a boundary target or a border weight map), whose
    best checkpoint is the one of the lowest validation loss (Dice at 0.5 peaks early there)."""
    segmentation = task == "segmentation"
    name = cfg.model.name or ("unet" if segmentation else "small-cnn")
    allowed = SEGMENTATION_MODELS if segmentation else CLASSIFICATION_MODELS
    if name not in allowed:
        raise ValueError(f"model {name!r} does not fit a {task} dataset; choose one of {allowed}")
    loss = cfg.loss.loss or ("ce+dice" if segmentation else "ce")
    monitor = cfg.monitor or ("val_accuracy" if not segmentation else "val_loss" if objects else "val_dice")
    metrics = ("dice", "iou", "precision", "recall", "fbeta") if segmentation else ("accuracy", "macro_f1")
    monitors = ("loss", "val_loss") + tuple(f"val_{m}" for m in metrics)
    if monitor not in monitors:
        raise ValueError(f"--monitor {monitor!r} is not one of {monitors} for a {task} dataset")
    return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, name=name),
                               loss=dataclasses.replace(cfg.loss, loss=loss), monitor=monitor)
