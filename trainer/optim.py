"""Optimiser and learning-rate schedule.

One schedule covers constant / cosine / step decay, a linear warm-up, and the lower
fine-tuning rate of the second phase of transfer learning (a factor from a given step
on), so a single optimiser serves both phases and resumes with the right rate.
"""
from __future__ import annotations

import math

import keras
import tensorflow as tf

from trainer.config import OptimConfig


@keras.saving.register_keras_serializable(package="tessera")
class TesseraSchedule(keras.optimizers.schedules.LearningRateSchedule):
    def __init__(self, kind: str, learning_rate: float, total_steps: int, warmup_steps: int = 0,
                 step_size: int = 1, step_factor: float = 0.1, fine_tune_step: int = -1,
                 fine_tune_factor: float = 1.0):
        if kind not in ("constant", "cosine", "step"):
            raise ValueError(f"schedule must be constant, cosine or step, got {kind!r}")
        self.kind, self.learning_rate, self.total_steps = kind, learning_rate, max(1, total_steps)
        self.warmup_steps, self.step_size, self.step_factor = warmup_steps, max(1, step_size), step_factor
        self.fine_tune_step, self.fine_tune_factor = fine_tune_step, fine_tune_factor
        # the cosine's length, changeable while training (--time-budget) without retracing the step
        self.horizon = tf.Variable(float(self.total_steps), trainable=False, name="schedule_horizon")

    def set_total_steps(self, total_steps: int) -> None:
        self.total_steps = max(1, int(total_steps))
        self.horizon.assign(float(self.total_steps))

    def __call__(self, step):
        step = tf.cast(step, tf.float32)
        lr = tf.constant(self.learning_rate, tf.float32)
        if self.kind == "cosine":
            decay_steps = tf.maximum(1.0, self.horizon - self.warmup_steps)
            progress = tf.clip_by_value((step - self.warmup_steps) / decay_steps, 0.0, 1.0)
            lr = lr * 0.5 * (1.0 + tf.cos(math.pi * progress))
        elif self.kind == "step":
            lr = lr * tf.pow(self.step_factor, tf.floor(step / self.step_size))
        if self.warmup_steps > 0:
            lr = lr * tf.minimum(1.0, (step + 1.0) / self.warmup_steps)
        if self.fine_tune_step >= 0:
            lr = tf.where(step >= self.fine_tune_step, lr * self.fine_tune_factor, lr)
        return lr

    def get_config(self):
        return {"kind": self.kind, "learning_rate": self.learning_rate, "total_steps": self.total_steps,
                "warmup_steps": self.warmup_steps, "step_size": self.step_size, "step_factor": self.step_factor,
                "fine_tune_step": self.fine_tune_step, "fine_tune_factor": self.fine_tune_factor}


def make_schedule(cfg: OptimConfig, steps_per_epoch: int, epochs: int, fine_tune: bool = False) -> TesseraSchedule:
    return TesseraSchedule(
        cfg.schedule, cfg.learning_rate, steps_per_epoch * epochs,
        warmup_steps=int(round(cfg.warmup_epochs * steps_per_epoch)), step_size=cfg.step_epochs * steps_per_epoch,
        step_factor=cfg.step_factor,
        fine_tune_step=cfg.freeze_epochs * steps_per_epoch if fine_tune and cfg.freeze_epochs > 0 else -1,
        fine_tune_factor=cfg.fine_tune_lr_factor)


def build_optimizer(cfg: OptimConfig, schedule, mixed_precision: bool) -> keras.optimizers.Optimizer:
    """Adam / SGD with Nesterov momentum / RMSprop, decoupled weight decay (not on biases
    and normalisation parameters), wrapped for dynamic loss scaling under mixed precision.
    Gradient clipping is applied by the training step after the cross-replica sum."""
    decay = cfg.weight_decay or None
    if cfg.optimizer == "adam":
        optimizer = keras.optimizers.Adam(schedule, weight_decay=decay)
    elif cfg.optimizer == "sgd":
        optimizer = keras.optimizers.SGD(schedule, momentum=cfg.momentum, nesterov=True, weight_decay=decay)
    elif cfg.optimizer == "rmsprop":
        optimizer = keras.optimizers.RMSprop(schedule, momentum=cfg.momentum, weight_decay=decay)
    else:
        raise ValueError(f"optimizer must be adam, sgd or rmsprop, got {cfg.optimizer!r}")
    if decay:
        optimizer.exclude_from_weight_decay(var_names=["bias", "gamma", "beta"])
    return keras.optimizers.LossScaleOptimizer(optimizer) if mixed_precision else optimizer
