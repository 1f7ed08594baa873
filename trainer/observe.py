"""What a person watching training sees: progress (Keras' Progbar or a line per step), the
history CSV, and TensorBoard scalars and images (input | truth | prediction)."""
from __future__ import annotations

import csv
import io
import sys

import keras
import numpy as np
import tensorflow as tf

from schemas.example import CLASS_COLOURS, IGNORE_LABEL

PALETTE = np.array(CLASS_COLOURS, np.uint8)  # class id -> RGB for truth/prediction panels; ignore grey


def log(message: str) -> None:
    print(message, flush=True)


def epoch_header(epoch: int, epochs: int, planned: int = 0, budget: bool = False) -> str:
    """``Epoch 3/10``; under ``--time-budget`` the epochs planned to fit it (refitted after every
    epoch from the second on), with ``--epochs`` as the most: ``Epoch 3/~12 (time budget, at most 20)``."""
    if not budget:
        return f"Epoch {epoch + 1}/{epochs}"
    if not planned:
        return f"Epoch {epoch + 1}/{epochs} at most (time budget: the epochs that fit are planned once two are timed)"
    return f"Epoch {epoch + 1}/~{planned} (time budget, at most {epochs})"


class Progress:
    """verbose 0: nothing; 1: a Keras Progbar per epoch on a terminal (in a log: the epoch
    lines only, no bar redrawn into it); 2: one line per step."""

    def __init__(self, verbose: int, enabled: bool = True):
        self.verbose = verbose if enabled else 0
        self.bar = None
        self.interactive = sys.stdout.isatty()

    def start_epoch(self, epoch: int, epochs: int, steps: int, first_step: int, planned: int = 0,
                    budget: bool = False) -> None:
        if self.verbose:
            resuming = f" (resuming at step {first_step})" if first_step else ""
            log(epoch_header(epoch, epochs, planned, budget) + resuming)
        if self.verbose == 1 and self.interactive:
            self.bar = keras.utils.Progbar(steps, stateful_metrics=["loss", "lr"])
            if first_step:
                self.bar.update(first_step)

    def step(self, epoch: int, step: int, global_step: int, loss: float, lr: float) -> None:
        if self.bar is not None:
            self.bar.update(step + 1, [("loss", loss), ("lr", lr)])
        elif self.verbose == 2:
            log(f"step {global_step} epoch {epoch + 1} batch {step + 1} loss {loss:.5f} lr {lr:.3g}")

    def end_epoch(self, row: dict) -> None:
        if self.verbose:
            log("  " + " ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()))


class History:
    """history.csv: one row per finished epoch; a resumed run keeps the earlier rows. "loss"
    is the mean training loss over the steps this process ran in that epoch (for an epoch
    resumed midway, the steps after the resume)."""

    def __init__(self, path: str, start_epoch: int, enabled: bool):
        self.path, self.enabled, self.rows = path, enabled, []
        if enabled and tf.io.gfile.exists(path):
            with tf.io.gfile.GFile(path) as handle:
                self.rows = [_numbers(r) for r in csv.DictReader(handle) if int(r["epoch"]) <= start_epoch]

    def append(self, row: dict) -> None:
        self.rows.append(row)
        if not self.enabled:
            return
        columns = list(dict.fromkeys(k for r in self.rows for k in r))
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, columns)
        writer.writeheader()
        writer.writerows(self.rows)
        with tf.io.gfile.GFile(self.path, "w") as handle:
            handle.write(buffer.getvalue())


def _numbers(row: dict) -> dict:
    out = {}
    for key, value in row.items():
        try:
            out[key] = int(value) if key == "epoch" else float(value)
        except (TypeError, ValueError):
            out[key] = value
    return out


def colorize(ids: np.ndarray) -> np.ndarray:
    """[..., H, W] class ids -> RGB uint8 (ignore grey)."""
    ids = np.asarray(ids)
    rgb = PALETTE[np.where((ids == IGNORE_LABEL) | (ids == 0), 0, (ids.astype(np.int64) - 1) % (len(PALETTE) - 1) + 1)]
    rgb[ids == IGNORE_LABEL] = 128
    return rgb


def _pad_to(panel: np.ndarray, size: int) -> np.ndarray:
    pad = (size - panel.shape[1]) // 2
    if pad <= 0:
        return panel
    return np.pad(panel, ((0, 0), (pad, size - panel.shape[1] - pad), (pad, size - panel.shape[2] - pad), (0, 0)))


def triptych(images: np.ndarray, truth: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """[N, T, T, C] images in [0, 1], [N, O, O, 1] truth ids, [N, O, O, K] probabilities ->
    [N, T, 3T, 3] uint8: input | truth | prediction (P(foreground) as grey for binary)."""
    size = images.shape[1]
    image = np.round(np.clip(images, 0, 1) * 255).astype(np.uint8)
    if image.shape[-1] == 1:
        image = np.repeat(image, 3, axis=-1)
    truth_rgb = _pad_to(colorize(truth[..., 0]), size)
    if probs.shape[-1] == 2:
        pred_rgb = np.repeat(np.round(probs[..., 1:] * 255).astype(np.uint8), 3, axis=-1)
    else:
        pred_rgb = colorize(np.argmax(probs, axis=-1))
    return np.concatenate([image, truth_rgb, _pad_to(pred_rgb, size)], axis=2)


def _metadata(plugin: str):
    from tensorflow.core.framework import summary_pb2

    data_class = {"scalars": summary_pb2.DATA_CLASS_SCALAR, "images": summary_pb2.DATA_CLASS_BLOB_SEQUENCE}[plugin]
    return summary_pb2.SummaryMetadata(plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name=plugin),
                                       data_class=data_class)


class Board:
    """TensorBoard event files (chief only; no-ops elsewhere), written with TensorFlow's own
    ``tf.summary.write`` in the formats of TensorBoard's scalar and image plugins, so the
    ``tensorboard`` package is needed only to view them."""

    def __init__(self, log_dir: str, enabled: bool):
        self.enabled = enabled
        if enabled:
            self.train = tf.summary.create_file_writer(f"{log_dir}/train")
            self.val = tf.summary.create_file_writer(f"{log_dir}/validation")

    def scalars(self, which: str, values: dict, step: int) -> None:
        if not self.enabled:
            return
        with getattr(self, which).as_default(step=step):
            for name, value in values.items():
                tf.summary.write(name, tf.constant(value, tf.float32), metadata=_metadata("scalars"))

    def images(self, name: str, panels: np.ndarray, step: int) -> None:
        if self.enabled:
            height, width = panels.shape[1:3]
            encoded = [tf.io.encode_png(p).numpy() for p in panels]
            with self.val.as_default(step=step):
                tf.summary.write(name, tf.constant([str(width).encode(), str(height).encode(), *encoded]),
                                 metadata=_metadata("images"))

    def flush(self) -> None:
        if self.enabled:
            self.train.flush()
            self.val.flush()
