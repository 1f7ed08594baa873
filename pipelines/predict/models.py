"""Exported models for prediction: cards, loading, TTA + ensemble combination, the RunInference handler.

A model directory follows ``schemas/model_card.py``. Several directories form an ensemble;
they must agree on task, geometry, channels, input dtype and class names.

``combine="mean"``: the mean of the models' (TTA-averaged) probabilities, decided by the
card threshold for binary models (the mean of the cards' thresholds; argmax when none
has one). ``combine="vote"``: each model decides on its own (its threshold or argmax),
the scores are the fraction of models voting for each class, and the majority wins
(ties go to the lower class id).
"""
from __future__ import annotations

import dataclasses
import os
import sys
import tempfile
from typing import Any, Iterable, Optional, Sequence

import numpy as np
from apache_beam.io.filesystems import FileSystems
from apache_beam.ml.inference.base import ModelHandler, PredictionResult

from pipelines.beam import quiet
from pipelines.beam.files import read_bytes
from pipelines.predict import tta as predict_tta
from pipelines.predict.decide import decide, one_hot
from pipelines.predict.plan import StripTask, task_tiles
from schemas import model_card
from schemas.model_card import (
    MODEL_CARD_FILE,
    SAVED_MODEL_DIR,
    SERVING_INPUT,
    SERVING_OUTPUT,
    ModelCard,
)

ENSEMBLES = ("mean", "vote")


def read_card(model_dir: str) -> tuple[ModelCard, str]:
    """(card, model id) of a model directory (local or any FileSystems scheme)."""
    path = f"{model_dir.rstrip('/')}/{MODEL_CARD_FILE}"
    if not FileSystems.exists(path):
        raise FileNotFoundError(f"{model_dir}: no {MODEL_CARD_FILE}; is this a `tessera train` model directory?")
    with FileSystems.open(path) as handle:
        raw = handle.read()
    card = model_card.read_card(raw, path)
    return card, model_card.model_id(card, raw)


def check_saved_model(model_dir: str, card: ModelCard, precision: str = "float32") -> None:
    """Refuse, before any worker loads it, a model directory without its SavedModel (of
    ``precision``), or whose card names another SavedModel (``saved_model_digest``): a card and
    a model from two different exports would predict with the wrong geometry or threshold."""
    saved = f"{model_dir.rstrip('/')}/{card.saved_model_dir(precision)}"
    if not FileSystems.exists(f"{saved}/saved_model.pb"):
        raise FileNotFoundError(f"{model_dir}: no {card.saved_model_dir(precision)}/saved_model.pb; "
                                "is this a complete `tessera train` model directory?")
    expected = card.saved_model_digest_of(precision)
    if not expected:
        print(f"tessera predict: warning: {model_dir}/{MODEL_CARD_FILE} names no SavedModel digest "
              "(exported by an older Tessera); the card and the model are not checked against each other",
              file=sys.stderr)
        return
    try:
        digest = model_card.saved_model_digest(lambda name: read_bytes(f"{saved}/{name}"))
    except OSError as e:
        raise ValueError(f"{model_dir}: the SavedModel is incomplete ({e})") from e
    if digest != expected:
        raise ValueError(f"{model_dir}: {MODEL_CARD_FILE} belongs to another SavedModel (digest "
                         f"{expected[:12]}, found {digest[:12]}): the model directory is damaged "
                         "or mixes two exports; export it again")


def check_signature(signatures, card: ModelCard, model_dir: str):
    """The serving function of a loaded SavedModel, once its signature matches the card."""
    import tensorflow as tf

    if "serving_default" not in signatures:
        raise ValueError(f"{model_dir}: the SavedModel has no 'serving_default' signature")
    serve = signatures["serving_default"]
    inputs = serve.structured_input_signature[1]
    outputs = serve.structured_outputs
    want_in = [None, card.input_size, card.input_size, card.channels]
    spec_in = inputs.get(SERVING_INPUT)
    if spec_in is None or spec_in.shape.as_list() != want_in or spec_in.dtype != tf.as_dtype(card.input_dtype):
        raise ValueError(f"{model_dir}: the SavedModel takes {spec_in} but its card says {card.input_dtype} "
                         f"tiles of {want_in}")
    spec_out = outputs.get(SERVING_OUTPUT) if isinstance(outputs, dict) else None
    want_out = ([None, card.output_size, card.output_size, card.num_classes] if card.task == "segmentation"
                else [None, card.num_classes])
    if spec_out is None or spec_out.shape.as_list() != want_out:
        raise ValueError(f"{model_dir}: the SavedModel returns {spec_out} but its card says {want_out}")
    return serve


def verify_model(model_dir: str, card: ModelCard, precision: str = "float32") -> None:
    """Load the SavedModel once in the launcher and check it against its card, so a damaged or
    mismatched model fails the job with a clear message (exit 2) instead of in every worker."""
    import tensorflow as tf

    try:
        loaded = tf.saved_model.load(local_model_dir(model_dir, card.saved_model_dir(precision)))
    except (tf.errors.OpError, OSError, ValueError, KeyError, RuntimeError) as e:
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise ValueError(f"{model_dir}: the SavedModel cannot be loaded ({type(e).__name__}: {first_line[:300]})") from e
    check_signature(loaded.signatures, card, model_dir)


def check_compatible(cards: Sequence[ModelCard], model_dirs: Sequence[str]) -> None:
    """Refuse an ensemble whose members disagree on what a tile and a prediction are."""
    first = cards[0]

    def key(c: ModelCard) -> tuple:
        return (c.task, c.geometry(), c.channels, c.input_dtype, c.class_names, c.intensity, c.object_class)

    for card, model_dir in zip(cards[1:], model_dirs[1:]):
        if key(card) != key(first):
            raise ValueError(
                f"models disagree and cannot form an ensemble: {model_dirs[0]} has (task, (core, margin, "
                f"input, output), channels, dtype, classes, intensity, object class) = {key(first)} "
                f"but {model_dir} has "
                f"{key(card)}")


def local_model_dir(model_dir: str, saved_model_dir: str = SAVED_MODEL_DIR) -> str:
    """A local path of the SavedModel: the directory itself, or a temp copy of a remote one.

    TensorFlow's own gs:// support cannot be redirected (emulators, other clouds), so
    remote SavedModels are copied through Beam's FileSystems once per worker.
    """
    saved = f"{model_dir.rstrip('/')}/{saved_model_dir}"
    if FileSystems.get_scheme(saved) in (None, "file"):
        return saved
    target = tempfile.mkdtemp(prefix="tessera-model-")
    files = FileSystems.match([f"{saved}/**"])[0].metadata_list
    if not files:
        raise FileNotFoundError(f"{saved}: no SavedModel files")
    for meta in files:
        relative = meta.path[len(saved) + 1:]
        local = os.path.join(target, *relative.split("/"))
        os.makedirs(os.path.dirname(local), exist_ok=True)
        with FileSystems.open(meta.path) as src, open(local, "wb") as dst:
            while chunk := src.read(1 << 24):
                dst.write(chunk)
    return target


def ensemble_threshold(cards: Sequence[ModelCard], combine: str) -> float | None:
    """The binary threshold applied to combined scores: mean of the cards' (0.5 for a card
    without one) under "mean"; None (majority of votes) under "vote" or when no card has one."""
    thresholds = [c.threshold for c in cards]
    if combine == "vote" or all(t is None for t in thresholds):
        return None
    return float(np.mean([0.5 if t is None else t for t in thresholds]))


@dataclasses.dataclass
class LoadedModel:
    card: ModelCard
    model_id: str
    signature: Any  # a concrete function: tiles -> {"probabilities": ...}

    def __call__(self, tiles: np.ndarray) -> np.ndarray:
        import tensorflow as tf

        out = self.signature(**{SERVING_INPUT: tf.constant(tiles)})[SERVING_OUTPUT].numpy()
        c = self.card
        if c.task == "segmentation" and c.output_size == c.input_size and c.margin:
            out = out[:, c.margin:c.margin + c.core, c.margin:c.margin + c.core]
        return out


class EnsemblePredictor:
    """Tiles (N, T, T, C) -> combined scores (N, core, core, K) or (N, K) and decisions."""

    def __init__(self, models: Sequence[LoadedModel], tta: str = "none", combine: str = "mean"):
        if combine not in ENSEMBLES:
            raise ValueError(f"ensemble must be one of {ENSEMBLES}, got {combine!r}")
        check_compatible([m.card for m in models], [m.model_id for m in models])
        self.models, self.combine, self.tta = list(models), combine, tta
        self.transforms = predict_tta.transforms(tta)
        self.card = models[0].card
        self.threshold = ensemble_threshold([m.card for m in models], combine)

    @property
    def spatial(self) -> bool:
        return self.card.task == "segmentation"

    @property
    def passes(self) -> int:
        """Forward passes per tile (TTA transforms x models)."""
        return len(self.transforms) * len(self.models)

    def predict(self, tiles: np.ndarray) -> np.ndarray:
        total = None
        for model in self.models:
            probs = predict_tta.augmented_mean(tiles, self.transforms, model, self.spatial)
            if self.combine == "vote":
                probs = one_hot(decide(probs, model.card.threshold), self.card.num_classes)
            total = probs if total is None else total + probs
        return total / np.float32(len(self.models))

    def decide(self, scores: np.ndarray) -> np.ndarray:
        return decide(scores, self.threshold if self.combine == "mean" else None)

    def model_ids(self) -> str:
        """A method, not an attribute: a model shared across processes is reached through a proxy."""
        return ",".join(m.model_id for m in self.models)


def load_predictor(model_dirs: Sequence[str], tta: str, combine: str, precision: str = "float32"
                   ) -> EnsemblePredictor:
    tf = quiet.tensorflow()  # in a fresh worker process, the first import of TensorFlow

    models = []
    for model_dir in model_dirs:
        card, model_id = read_card(model_dir)
        loaded = tf.saved_model.load(local_model_dir(model_dir, card.saved_model_dir(precision)))
        models.append(LoadedModel(card, model_id, check_signature(loaded.signatures, card, model_dir)))
    return EnsemblePredictor(models, tta, combine)


def predict_tasks(predictor: EnsemblePredictor, tasks: Sequence[StripTask], batch_size: int) -> list[np.ndarray]:
    """Scores of every tile of ``tasks``, in batches of ``batch_size`` tiles across tasks."""
    index = [(t, i) for t, task in enumerate(tasks) for i in range(task.num_tiles)]
    outputs: list[Optional[np.ndarray]] = [None] * len(tasks)
    for start in range(0, len(index), batch_size):
        chunk = index[start:start + batch_size]
        scores = predictor.predict(np.stack([tasks[t].tile(i) for t, i in chunk]))
        for (t, i), score in zip(chunk, scores):
            if outputs[t] is None:
                outputs[t] = np.empty((tasks[t].num_tiles,) + score.shape, np.float32)
            outputs[t][i] = score
    return outputs


class TileModelHandler(ModelHandler[StripTask, PredictionResult, EnsemblePredictor]):
    """Loads the model(s) once per worker and predicts the tiles of StripTasks in fixed-size batches.

    Batches are counted in tiles (``element_size_fn``), so small images share a batch and
    a large strip is cut into ``batch_size``-tile calls. ``model_copies`` > 0 loads that many
    copies per machine, shared by all its worker processes (Beam's large-model mode), instead
    of one per process: for models too big to hold once per process.
    """

    def __init__(self, model_dirs: Sequence[str], tta: str = "none", combine: str = "mean",
                 batch_size: int = 16, model_copies: int = 0, precision: str = "float32"):
        if batch_size < 1 or model_copies < 0:
            raise ValueError(f"batch size must be >= 1 and model copies >= 0, got {batch_size}, {model_copies}")
        super().__init__(min_batch_size=batch_size, max_batch_size=batch_size, element_size_fn=task_tiles)
        self.model_dirs, self.tta, self.combine, self.batch_size = list(model_dirs), tta, combine, batch_size
        self.copies, self.precision = model_copies, precision

    def share_model_across_processes(self) -> bool:
        return self.copies > 0

    def model_copies(self) -> int:
        return max(1, self.copies)

    def load_model(self) -> EnsemblePredictor:
        return load_predictor(self.model_dirs, self.tta, self.combine, self.precision)

    def run_inference(self, batch: Sequence[StripTask], model: EnsemblePredictor,
                      inference_args: Optional[dict[str, Any]] = None) -> Iterable[PredictionResult]:
        scores = predict_tasks(model, batch, self.batch_size)
        return [PredictionResult(task, score, model_id=model.model_ids())
                for task, score in zip(batch, scores)]

    def get_num_bytes(self, batch: Sequence[StripTask]) -> int:
        return sum(task.nbytes for task in batch)

    def get_metrics_namespace(self) -> str:
        return "tessera.predict.inference"
