"""Export a trained network as the model directory ``tessera predict`` reads
(``schemas/model_card.py``): SavedModel with the serving signature, ``model.keras``, and
the model card with the decision threshold calibrated on validation. The pieces are written
into a staging directory inside the model directory, published as one new version of it
(``schemas.versions``): predict reads the previous export or this one, never a mix.

The exported network takes raw pixel values, normalises them itself, and returns
per-class probabilities (``probabilities``) and, with a distance head, each pixel's distance
to its object's edge in px (``distance``); under deep supervision only the fused output is
kept. The card lists those outputs (``heads``) and the decoder predict turns it into objects with: a boundary
target's calibrated on the validation images (``calibrate.DecoderCalibration``), connected
components for other segmentation models.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import sys
import time
import uuid

import keras
import tensorflow as tf

from schemas import model_card as mc
from schemas import versions
from schemas.crashpoints import crashpoint
from schemas.example import SEGMENTATION
from trainer import calibrate, metrics
from trainer.card_summary import calibration_summary
from trainer.config import TrainConfig
from trainer.data import DatasetInfo, crop_to, has_examples, placed_eval_dataset, read_if_exists
from trainer.losses import LossSpec, combine, head_losses, probabilities
from trainer.models import build_model, output_size, primary_output, split_outputs
from trainer.models.layers import ToProbabilities
from trainer.steps import evaluate_split, make_eval_step


@contextlib.contextmanager
def precision_policy(name: str = "float32"):
    """Keras layers built inside compute in ``name``'s precision, whatever the training's policy."""
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(name)
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy(previous)


def exported_outputs(net: keras.Model) -> keras.Model:
    """``net`` without its deep supervision side outputs: the class logits (the fused ones), or
    ``{"classes": logits, "distance": d}`` with a distance head."""
    classes, distance = split_outputs(net.output)
    if not isinstance(classes, (list, tuple)):
        return net
    return keras.Model(net.input, classes[0] if distance is None else {"classes": classes[0], "distance": distance},
                       name=net.name)


def restore_network(cfg: TrainConfig, info: DatasetInfo, checkpoint: str) -> keras.Model:
    """A float32 copy of the network, outside any distribution strategy, with the weights of
    ``checkpoint`` (the primary output only, and the distance head's when it has one)."""
    with precision_policy():
        net = build_model(cfg.model, info.spec, info.distance)
    tf.train.Checkpoint(model=net).restore(checkpoint).expect_partial().assert_existing_objects_matched()
    return exported_outputs(net)


def inference_model(net: keras.Model, normalization: dict[str, float], distance_max: float = 0.0) -> keras.Model:
    """Raw pixel values (float) -> normalisation -> network -> probabilities (float32); with a
    distance head ``{"probabilities": ..., "distance": sigmoid * distance_max}`` (px, float32)."""
    inputs = keras.Input(net.input_shape[1:], name="pixels")
    x = keras.layers.Rescaling(normalization["scale"], normalization["offset"], name="normalize")(inputs)
    outputs = net(x)
    probs = ToProbabilities(name=mc.SERVING_OUTPUT, dtype="float32")(primary_output(outputs))
    distance = split_outputs(outputs)[1]
    if distance is not None:
        if not distance_max > 0:
            raise ValueError(f"a distance head's export needs the dataset's distance_max > 0, got {distance_max}")
        distance = keras.layers.Rescaling(distance_max, name=mc.DISTANCE_OUTPUT, dtype="float32")(distance)
        probs = {mc.SERVING_OUTPUT: probs, mc.DISTANCE_OUTPUT: distance}
    return keras.Model(inputs, probs, name=f"{net.name}_inference")


def bfloat16_twin(cfg: TrainConfig, info: DatasetInfo, net: keras.Model) -> keras.Model:
    """The inference model of ``net``'s weights computing in bfloat16 (mixed_bfloat16: variables
    float32, the probabilities float32)."""
    with precision_policy("mixed_bfloat16"):
        twin = exported_outputs(build_model(cfg.model, info.spec, info.distance))
        twin.set_weights(net.get_weights())
        return inference_model(twin, info.normalization, info.spec.distance_max)


def evaluate(net: keras.Model, info: DatasetInfo, loss_spec: LossSpec, batch_size: int, split: str = "val",
             heads: dict | None = None):
    """(loss, confusion [K, K], histograms [2, bins] or None) of ``net`` on ``split``; with a
    distance head ``heads`` (a dict given) receives each head's loss (``losses.head_losses``)."""
    spec = info.spec
    binary = spec.task == SEGMENTATION and spec.num_classes == 2
    size = output_size(net) if spec.task == SEGMENTATION else None
    strategy = tf.distribute.get_strategy()
    step = make_eval_step(strategy, net, loss_spec, spec.num_classes, size, binary)
    sums, counts, confusion, hist = evaluate_split(strategy, step, info, batch_size, split)
    if heads is not None:
        heads.update({k: float(v) for k, v in head_losses(sums, counts, loss_spec).items()})
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


def object_threshold(net: keras.Model, info: DatasetInfo, metric: str, batch_size: int) -> tuple[float, float, str]:
    """``calibrate.ObjectCalibration`` over the validation images: (threshold, value, rule)."""
    core = info.spec.core
    found, canvas = calibrate.ObjectCalibration(metric), calibrate.SourceCanvas(core)
    for x, y, source_ids, placements in placed_eval_dataset(info, batch_size):
        foreground = crop_to(probabilities(primary_output(net(x, training=False)))[..., 1:], core).numpy()[..., 0]
        truths = crop_to(y, core).numpy()[..., 0]
        for source_id, placement, p, truth in zip(source_ids.numpy(), placements.numpy(), foreground, truths):
            for image in canvas.add(source_id, placement, p, truth):
                found.add(*image)
    for image in canvas.rest():
        found.add(*image)
    return found.best()


def calibrated_decoder(net: keras.Model, info: DatasetInfo, metric: str, batch_size: int):
    """``calibrate.DecoderCalibration`` over the validation images of a boundary target:
    (DecoderParams, value, rule, the metric scored: ``auto`` resolved)."""
    spec = info.spec
    found = calibrate.DecoderCalibration(metric, spec.border_thickness)
    canvas = calibrate.SourceCanvas(spec.core)
    for x, y, source_ids, placements in placed_eval_dataset(info, batch_size):
        scores = crop_to(probabilities(primary_output(net(x, training=False))), spec.core).numpy()
        truths = crop_to(y, spec.core).numpy()[..., 0]
        for source_id, placement, p, truth in zip(source_ids.numpy(), placements.numpy(), scores, truths):
            for image in canvas.add(source_id, placement, p, truth):
                found.add(*image)
    for image in canvas.rest():
        found.add(*image)
    return (*found.best(), found.chosen_metric())


def card_heads(spec, distance: bool = False) -> dict:
    """The SavedModel's named outputs and what they mean (the card's ``heads``)."""
    if spec.target == "boundary":
        meaning = (f"per-pixel probabilities of background / boundary (a band of {spec.border_thickness} px inside "
                   f"each object's outline) / interior of the {spec.object_class!r} objects")
    elif spec.task == SEGMENTATION:
        meaning = "per-pixel class probabilities"
    else:
        meaning = "per-image class probabilities"
    heads = {mc.SERVING_OUTPUT: {"meaning": meaning, "classes": list(spec.class_names)}}
    if distance:
        heads[mc.DISTANCE_OUTPUT] = {
            "meaning": (f"per-pixel distance to the edge of the {spec.object_class!r} object it lies in (0 outside "
                        f"objects), regressed from the dataset's distance maps; saturates at {spec.distance_max:g} px"),
            "unit": "px", "max": float(spec.distance_max), "channels": 1}
    return heads


def card_decoder(cfg: TrainConfig, info: DatasetInfo, net: keras.Model, has_val: bool) -> tuple[dict, dict]:
    """(the card's decoder, metrics to add): a boundary target's calibrated on validation (the
    seeded decoder at 0.5 without a validation split), connected components for other
    segmentation models, none for classifiers."""
    from schemas.decoder import DecoderParams

    spec = info.spec
    if spec.target != "boundary":
        return (DecoderParams("components").to_dict() if spec.task == SEGMENTATION else {}), {}
    if not has_val:
        return {**DecoderParams("seeded").to_dict(), "rule": "default (no validation split)"}, {}
    params, value, rule, metric = calibrated_decoder(net, info, cfg.calibrate, cfg.batch_size)
    return {**params.to_dict(), "rule": rule, "value": value, "metric": metric}, {calibrate.OBJECT_RULE_KEYS[metric]: value}


def write_saved_model(model: keras.Model, path: str, input_dtype: str) -> None:
    """SavedModel whose "serving_default" maps "tiles" (integer pixels) to "probabilities" (and
    "distance" with a distance head)."""
    archive = keras.export.ExportArchive()
    archive.track(model)

    def serve(tiles):
        outputs = model(tf.cast(tiles, tf.float32), training=False)
        return dict(outputs) if isinstance(outputs, dict) else {mc.SERVING_OUTPUT: outputs}

    shape = [None, *model.input_shape[1:]]
    archive.add_endpoint("serving_default", serve,
                         input_signature=[tf.TensorSpec(shape, tf.as_dtype(input_dtype), name=mc.SERVING_INPUT)])
    archive.write_out(path, verbose=False)


def export(cfg: TrainConfig, info: DatasetInfo, checkpoint: str, loss_spec: LossSpec,
           extra_metrics: dict | None = None) -> mc.ModelCard:
    """Restores ``checkpoint``, calibrates and scores on validation, writes the model directory
    (staged, then ``publish``ed); all in float32, however the network was trained."""
    with precision_policy():
        return _export(cfg, info, checkpoint, loss_spec, extra_metrics)


def _export(cfg: TrainConfig, info: DatasetInfo, checkpoint: str, loss_spec: LossSpec,
            extra_metrics: dict | None) -> mc.ModelCard:
    spec = info.spec
    net = restore_network(cfg, info, checkpoint)
    metrics_, threshold, rule = {}, None, ""
    calibration = {}
    has_val = has_examples(info, "val")
    if has_val:
        heads = {}
        loss, confusion, hist = evaluate(net, info, loss_spec, cfg.batch_size, heads=heads)
        metrics_, threshold, rule = card_metrics(info, loss, confusion, hist, cfg.beta, cfg.target_recall)
        if "distance" in heads:     # the distance head's mean absolute error on val, in px
            metrics_["distance_mae_px"] = heads["distance"] * spec.distance_max
        if threshold is not None and cfg.calibrate in calibrate.OBJECT_RULES and spec.target != "boundary":
            calibration = {"pixel_threshold": threshold, "pixel_rule": rule}
            threshold, value, rule = object_threshold(net, info, cfg.calibrate, cfg.batch_size)
            metrics_.update(calibrate.scores_at(hist, threshold, cfg.beta))
            metrics_[calibrate.OBJECT_RULE_KEYS[cfg.calibrate]] = value
        if threshold is not None:
            calibration.update(rule=cfg.calibrate, threshold=threshold)
    elif spec.task == SEGMENTATION and spec.num_classes == 2:
        threshold, rule = 0.5, "default 0.5 (no validation split)"
    decoder, decoder_metrics = card_decoder(cfg, info, net, has_val)
    if "value" in decoder:
        metric = decoder.pop("metric")
        calibration = {"rule": metric, "requested": cfg.calibrate,
                       "decoder": {k: v for k, v in decoder.items() if k != "rule"}}
    metrics_.update(decoder_metrics)
    metrics_.update(extra_metrics or {})
    out = output_size(net) if spec.task == SEGMENTATION else spec.tile_size
    card = mc.ModelCard(
        task=spec.task, model_name=cfg.model.name, core=spec.core, margin=spec.margin, input_size=spec.tile_size,
        output_size=out, channels=spec.channels, class_names=spec.class_names, input_dtype=spec.dtype,
        normalization=info.normalization, threshold=threshold, threshold_rule=rule,
        metrics={k: float(v) for k, v in metrics_.items()}, config=json.loads(cfg.to_json()),
        dataset_fingerprint=info.fingerprint, whole_image=spec.whole_image, fit=info.fit,
        calibration=calibration, pixel_size_um=spec.pixel_size_um, intensity=spec.intensity,
        weight_map=f"unet w0={spec.weight_map_w0:g} sigma={spec.weight_map_sigma:g}" if info.weight_map else "none",
        heads=card_heads(spec, info.distance), decoder=decoder,
        object_class=spec.object_class if spec.target == "boundary" else "")
    model = inference_model(net, info.normalization, spec.distance_max)
    staging = f"{cfg.model_dir}/{versions.STAGING_MARK}export-{uuid.uuid4().hex[:12]}"
    try:
        write_saved_model(model, f"{staging}/{mc.SAVED_MODEL_DIR}", spec.dtype)
        card = dataclasses.replace(card, saved_model_digest=saved_model_digest(f"{staging}/{mc.SAVED_MODEL_DIR}"),
                                   versions=library_versions())
        if cfg.export_bf16:
            variant = mc.VARIANT_DIRS["bfloat16"]
            write_saved_model(bfloat16_twin(cfg, info, net), f"{staging}/{variant}", spec.dtype)
            card = dataclasses.replace(card, variants={"bfloat16": {
                "dir": variant, "digest": saved_model_digest(f"{staging}/{variant}")}})
        model.save(f"{staging}/{mc.KERAS_FILE}")
        with tf.io.gfile.GFile(f"{staging}/{mc.MODEL_CARD_FILE}", "w") as handle:
            handle.write(card.to_json())
        crashpoint("train:export-staged")
        publish(staging, cfg.model_dir, card.saved_model_digest, cfg.keep_versions)
    finally:
        if tf.io.gfile.exists(staging):
            tf.io.gfile.rmtree(staging)
    for line in calibration_summary(card):
        print(line, flush=True)
    return card


def saved_model_digest(saved_model_dir: str) -> str:
    def read(name: str) -> bytes:
        with tf.io.gfile.GFile(f"{saved_model_dir}/{name}", "rb") as handle:
            return handle.read()
    return mc.saved_model_digest(read)


def library_versions() -> dict[str, str]:
    """The versions of what exported a model (recorded in its card)."""
    from importlib import metadata

    found = {"tensorflow": tf.__version__, "keras": keras.__version__}
    for name in ("tessera", "apache-beam"):
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "unknown"
    return found


def publish(staging: str, model_dir: str, digest: str, keep: int = versions.DEFAULT_KEEP) -> str:
    """Publishes the complete export in ``staging`` as a new version of ``model_dir``: the
    version directory first, then the one-file ``CURRENT`` pointer (``schemas.versions``), so a
    reader finds the previous export or this one, never a mix. Returns the version."""
    pointer_path = f"{model_dir}/{versions.POINTER_FILE}"
    old = read_if_exists(pointer_path)
    old_pointer = None if old is None else versions.read_pointer(old, pointer_path)
    legacy = tf.io.gfile.exists(f"{model_dir}/{mc.MODEL_CARD_FILE}")  # an export of Tessera before versions
    previous = versions.next_previous(old_pointer, legacy, keep)
    version = versions.version_name(digest)
    tf.io.gfile.rename(staging, f"{model_dir}/{version}")
    crashpoint("train:before-pointer")
    temporary = f"{pointer_path}{versions.STAGING_MARK}{uuid.uuid4().hex[:12]}"
    with tf.io.gfile.GFile(temporary, "wb") as handle:
        handle.write(versions.pointer(version, previous))
    tf.io.gfile.rename(temporary, pointer_path, overwrite=True)
    if "://" not in model_dir:
        link = os.path.join(model_dir, versions.CURRENT_LINK)
        temporary_link = f"{link}{versions.STAGING_MARK}{uuid.uuid4().hex[:12]}"
        os.symlink(version, temporary_link)
        os.replace(temporary_link, link)  # atomic: the link always names a complete export
    names = tf.io.gfile.listdir(model_dir)
    doomed = versions.to_prune((n.rstrip("/") for n in names), version, previous)
    if legacy and versions.LEGACY not in previous:
        doomed += [n for n in (mc.SAVED_MODEL_DIR, mc.KERAS_FILE, mc.MODEL_CARD_FILE) if n in {x.rstrip("/") for x in names}]
    for name in doomed:
        path = f"{model_dir}/{name}"
        tf.io.gfile.rmtree(path) if tf.io.gfile.isdir(path) else tf.io.gfile.remove(path)
    return version


def clean_leftovers(model_dir: str, now: float | None = None) -> list[str]:
    """Reports the staging directories crashed exports left in ``model_dir`` and removes those
    older than ``versions.LEFTOVER_AGE_S``. Returns the removed ones."""
    if not tf.io.gfile.isdir(model_dir):
        return []
    now, removed = now or time.time(), []
    for name in sorted(tf.io.gfile.listdir(model_dir)):
        name = name.rstrip("/")
        if not name.startswith((versions.STAGING_MARK, ".export-")):
            continue
        path = f"{model_dir}/{name}"
        age = now - newest_mtime(path)
        if age > versions.LEFTOVER_AGE_S:
            tf.io.gfile.rmtree(path) if tf.io.gfile.isdir(path) else tf.io.gfile.remove(path)
            removed.append(path)
            print(f"tessera train: removed {path}, left by an export that stopped {age / 3600:.1f} h ago",
                  file=sys.stderr)
        else:
            print(f"tessera train: {path} was written {age / 60:.0f} min ago by another export (running, or "
                  f"crashed: it is removed once older than {versions.LEFTOVER_AGE_S // 3600} h)", file=sys.stderr)
    return removed


def newest_mtime(path: str) -> float:
    stamps = [tf.io.gfile.stat(path).mtime_nsec]
    if tf.io.gfile.isdir(path):
        for root, _, files in tf.io.gfile.walk(path):
            stamps += [tf.io.gfile.stat(f"{root}/{f}").mtime_nsec for f in files]
    return max(stamps) / 1e9


def current_export(model_dir: str) -> str:
    """The directory of the current export of ``model_dir`` (``schemas.versions``)."""
    return versions.resolve(model_dir, read_if_exists)


def load_card(model_dir: str) -> mc.ModelCard:
    """The card of the current export of ``model_dir``."""
    path = f"{current_export(model_dir)}/{mc.MODEL_CARD_FILE}"
    with tf.io.gfile.GFile(path, "rb") as handle:
        return mc.read_card(handle.read(), path)

