"""Export a trained network as the model directory ``tessera predict`` reads
(``schemas/model_card.py``): SavedModel with the serving signature, ``model.keras``, and
the model card with the decision threshold calibrated on validation. The pieces are written
into a staging directory inside the model directory and moved into place, the card last.

The exported network takes raw pixel values, normalises them itself, and returns
per-class probabilities; under deep supervision only the fused output is kept.
"""
from __future__ import annotations

import json
import uuid

import keras
import tensorflow as tf

from schemas import model_card as mc
from schemas.example import SEGMENTATION
from trainer import calibrate, metrics
from trainer.config import TrainConfig
from trainer.data import DatasetInfo, has_examples
from trainer.losses import LossSpec, combine
from trainer.models import build_model, output_size, primary_output
from trainer.models.layers import ToProbabilities
from trainer.steps import evaluate_split, make_eval_step


def restore_network(cfg: TrainConfig, info: DatasetInfo, checkpoint: str) -> keras.Model:
    """A float32 copy of the network, outside any distribution strategy, with the weights of
    ``checkpoint`` (the primary output only)."""
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("float32")
    try:
        net = build_model(cfg.model, info.spec)
    finally:
        keras.mixed_precision.set_global_policy(previous)
    tf.train.Checkpoint(model=net).restore(checkpoint).expect_partial().assert_existing_objects_matched()
    if isinstance(net.output, (list, tuple)):
        net = keras.Model(net.input, net.outputs[0], name=net.name)
    return net


def inference_model(net: keras.Model, normalization: dict[str, float]) -> keras.Model:
    """Raw pixel values (float) -> normalisation -> network -> probabilities."""
    inputs = keras.Input(net.input_shape[1:], name="pixels")
    x = keras.layers.Rescaling(normalization["scale"], normalization["offset"], name="normalize")(inputs)
    outputs = ToProbabilities(name="probabilities")(primary_output(net(x)))
    return keras.Model(inputs, outputs, name=f"{net.name}_inference")


def evaluate(net: keras.Model, info: DatasetInfo, loss_spec: LossSpec, batch_size: int, split: str = "val"):
    """(loss, confusion [K, K], histograms [2, bins] or None) of ``net`` on ``split``."""
    spec = info.spec
    binary = spec.task == SEGMENTATION and spec.num_classes == 2
    size = output_size(net) if spec.task == SEGMENTATION else None
    strategy = tf.distribute.get_strategy()
    step = make_eval_step(strategy, net, loss_spec, spec.num_classes, size, binary)
    sums, counts, confusion, hist = evaluate_split(strategy, step, info, batch_size, split)
    return float(combine(sums, counts, loss_spec)), confusion, (hist if binary else None)


def card_metrics(info: DatasetInfo, loss: float, confusion, histograms, beta: float,
                 target_recall: float) -> tuple[dict, float | None, str]:
    """(metrics, threshold, rule): binary segmentation metrics are taken at the calibrated threshold."""
    if info.spec.task != SEGMENTATION:
        return {"loss": loss, **metrics.classification_scores(confusion)}, None, ""
    if histograms is None:
        return {"loss": loss, **metrics.segmentation_scores(confusion, beta)}, None, "argmax"
    threshold, rule = calibrate.calibrate_threshold(histograms, beta, target_recall)
    return {"loss": loss, **calibrate.scores_at(histograms, threshold, beta)}, threshold, rule


def write_saved_model(model: keras.Model, path: str, input_dtype: str) -> None:
    """SavedModel whose "serving_default" maps "tiles" (integer pixels) to "probabilities"."""
    archive = keras.export.ExportArchive()
    archive.track(model)

    def serve(tiles):
        return {mc.SERVING_OUTPUT: model(tf.cast(tiles, tf.float32), training=False)}

    shape = [None, *model.input_shape[1:]]
    archive.add_endpoint("serving_default", serve,
                         input_signature=[tf.TensorSpec(shape, tf.as_dtype(input_dtype), name=mc.SERVING_INPUT)])
    archive.write_out(path, verbose=False)


def export(cfg: TrainConfig, info: DatasetInfo, checkpoint: str, loss_spec: LossSpec,
           extra_metrics: dict | None = None) -> mc.ModelCard:
    """Restores ``checkpoint``, calibrates and scores on validation, writes the model directory
    (staged, then ``publish``ed)."""
    spec = info.spec
    net = restore_network(cfg, info, checkpoint)
    metrics_, threshold, rule = {}, None, ""
    if has_examples(info, "val"):
        loss, confusion, hist = evaluate(net, info, loss_spec, cfg.batch_size)
        metrics_, threshold, rule = card_metrics(info, loss, confusion, hist, cfg.beta, cfg.target_recall)
    elif spec.task == SEGMENTATION and spec.num_classes == 2:
        threshold, rule = 0.5, "default 0.5 (no validation split)"
    metrics_.update(extra_metrics or {})
    out = output_size(net) if spec.task == SEGMENTATION else spec.tile_size
    card = mc.ModelCard(
        task=spec.task, model_name=cfg.model.name, core=spec.core, margin=spec.margin, input_size=spec.tile_size,
        output_size=out, channels=spec.channels, class_names=spec.class_names, input_dtype=spec.dtype,
        normalization=info.normalization, threshold=threshold, threshold_rule=rule,
        metrics={k: float(v) for k, v in metrics_.items()}, config=json.loads(cfg.to_json()),
        dataset_fingerprint=info.fingerprint, whole_image=spec.whole_image, fit=info.fit)
    model = inference_model(net, info.normalization)
    staging = f"{cfg.model_dir}/.export-{uuid.uuid4().hex}"
    try:
        write_saved_model(model, f"{staging}/{mc.SAVED_MODEL_DIR}", spec.dtype)
        model.save(f"{staging}/{mc.KERAS_FILE}")
        with tf.io.gfile.GFile(f"{staging}/{mc.MODEL_CARD_FILE}", "w") as handle:
            handle.write(card.to_json())
        publish(staging, cfg.model_dir)
    finally:
        if tf.io.gfile.exists(staging):
            tf.io.gfile.rmtree(staging)
    return card


def publish(staging: str, model_dir: str) -> None:
    """Moves a complete export from ``staging`` into ``model_dir``, the model card last: a
    reader that finds the new card finds the new SavedModel and Keras file beside it.

    Locally each move is a rename, atomic (the previous saved_model/ is renamed away into
    ``staging`` first and deleted with it). On gs:// a directory "rename" copies and deletes
    object by object, so saved_model/ is briefly incomplete there; the card still comes last.
    """
    target = f"{model_dir}/{mc.SAVED_MODEL_DIR}"
    if tf.io.gfile.exists(target):
        tf.io.gfile.rename(target, f"{staging}/previous-{mc.SAVED_MODEL_DIR}")
    tf.io.gfile.rename(f"{staging}/{mc.SAVED_MODEL_DIR}", target)
    for name in (mc.KERAS_FILE, mc.MODEL_CARD_FILE):
        tf.io.gfile.rename(f"{staging}/{name}", f"{model_dir}/{name}", overwrite=True)


def load_card(model_dir: str) -> mc.ModelCard:
    path = f"{model_dir}/{mc.MODEL_CARD_FILE}"
    with tf.io.gfile.GFile(path, "rb") as handle:
        return mc.read_card(handle.read(), path)

