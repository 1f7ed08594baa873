"""The model card: what ``tessera train`` exports and ``tessera predict`` reads.

Model directory (``tessera train`` publishes each export as a version, ``schemas.versions``)::

    model/
      CURRENT, current -> v-...   the export predict reads (pointer; local symlink)
      v-<time>-<digest>/          one export, complete:
        model_card.json           ModelCard below; names its SavedModel by digest
        saved_model/              SavedModel, signature "serving_default":
                            input  "tiles": uint8 [N, input_size, input_size, channels]
                            output "probabilities": float32 [N, output_size, output_size, K]
                                    (segmentation) or [N, K] (classification)
                                   "distance" (models with a distance head): float32
                                    [N, output_size, output_size, 1], px to the object's edge
        model.keras               the Keras model
      config.json                 resolved training configuration
      history.csv                 per-epoch metrics
      checkpoints/ backup/ logs/  best checkpoint, preemption backup, TensorBoard

A directory without ``CURRENT`` holding ``model_card.json`` directly is read as one export.

Geometry: a tile is ``core + 2 * margin`` pixels (``input_size``). A model with 'valid'
convolutions outputs only the core (``output_size == core``); one with 'same'
convolutions outputs the whole tile (``output_size == input_size``) and predict crops it.
Normalisation: the network sees ``pixels * scale + offset`` (done inside the SavedModel;
recorded here so other consumers can reproduce it).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any, Callable

from schemas.example import TASKS

MODEL_CARD_FILE = "model_card.json"
SAVED_MODEL_DIR = "saved_model"
PRECISIONS = ("float32", "bfloat16")     # what a SavedModel of an export computes in
VARIANT_DIRS = {"bfloat16": "saved_model_bf16"}
KERAS_FILE = "model.keras"
SERVING_INPUT = "tiles"
SERVING_OUTPUT = "probabilities"
DISTANCE_OUTPUT = "distance"          # a distance head's output, beside SERVING_OUTPUT (heads["distance"])
FORMAT_VERSION = 1
# The files whose bytes name a SavedModel: its graph and the index of its variables (which
# holds a checksum of every variable, verified by TensorFlow when it restores them).
SAVED_MODEL_DIGEST_FILES = ("saved_model.pb", "variables/variables.index")


@dataclasses.dataclass(frozen=True)
class ModelCard:
    task: str
    model_name: str
    core: int
    margin: int
    input_size: int
    output_size: int
    channels: int
    class_names: tuple[str, ...]
    input_dtype: str = "uint8"
    normalization: dict[str, float] = dataclasses.field(
        default_factory=lambda: {"scale": 1.0 / 255.0, "offset": 0.0})
    threshold: float | None = None        # binary decision threshold on P(foreground)
    threshold_rule: str = ""              # e.g. "max F1 on val" or "recall >= 0.95 on val"
    # --calibrate: the rule, its threshold and (object rules) the pixel rule's threshold beside it
    calibration: dict[str, Any] = dataclasses.field(default_factory=dict)
    metrics: dict[str, float] = dataclasses.field(default_factory=dict)
    config: dict[str, Any] = dataclasses.field(default_factory=dict)
    dataset_fingerprint: str = ""
    # classification: how the dataset turned photos into inputs (DatasetSpec.whole_image and
    # the preprocess --fit); predict must do the same
    whole_image: bool = False
    fit: str = "resize"
    saved_model_digest: str = ""          # saved_model_digest() of the SavedModel it belongs to
    pixel_size_um: float | None = None    # of the training data, when known: predict reads the matching level
    intensity: str = "fixed"              # the dataset's per-image normalisation: predict applies the same
    weight_map: str = "none"              # the border weights the loss used, e.g. "unet w0=10 sigma=5"
    # other exports of the same weights, by compute precision: {"bfloat16": {"dir": ..., "digest": ...}}
    variants: dict[str, dict[str, str]] = dataclasses.field(default_factory=dict)
    versions: dict[str, str] = dataclasses.field(default_factory=dict)  # libraries that exported it
    # the SavedModel's named outputs and what they mean, e.g. {"probabilities": {"meaning": "...",
    # "classes": [...]}, "distance": {...}}; empty on older cards (then: class probabilities)
    heads: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    # how predict turns the outputs into objects: schemas.decoder.DecoderParams as a dict, plus
    # "rule" / "value" when calibrated on validation images; empty: connected components
    decoder: dict[str, Any] = dataclasses.field(default_factory=dict)
    object_class: str = ""                # boundary models: the objects' class name in masks and tables
    format_version: int = FORMAT_VERSION

    def saved_model_dir(self, precision: str = "float32") -> str:
        """The SavedModel directory (relative to the export) that computes in ``precision``."""
        if precision == "float32":
            return SAVED_MODEL_DIR
        if precision not in self.variants:
            raise ValueError(f"this model has no {precision} export (it has {['float32', *self.variants]}); "
                             f"train it with --export-bf16 to get one")
        return self.variants[precision]["dir"]

    def saved_model_digest_of(self, precision: str = "float32") -> str:
        return self.saved_model_digest if precision == "float32" else self.variants[precision]["digest"]

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {self.task!r}")
        if self.input_size != self.core + 2 * self.margin:
            raise ValueError(
                f"input_size {self.input_size} != core {self.core} + 2 * margin {self.margin}")
        if self.task == "segmentation" and self.output_size not in (self.core, self.input_size):
            raise ValueError(
                f"output_size {self.output_size} must equal core ({self.core}) or input_size ({self.input_size})")

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def is_boundary_model(self) -> bool:
        """Trained on a boundary target: its classes are background / boundary / interior."""
        return bool(self.object_class)

    @property
    def output_class_names(self) -> tuple[str, ...]:
        """The classes of predicted masks and object tables: a boundary model's objects are one class."""
        return ("background", self.object_class) if self.is_boundary_model else self.class_names

    def decoder_params(self):
        """The card's decoder (``schemas.decoder.DecoderParams``; connected components when none)."""
        from schemas.decoder import DecoderParams

        return DecoderParams.from_dict(self.decoder)

    def geometry(self) -> tuple[int, int, int, int]:
        """(core, margin, input_size, output_size): what ensembles must agree on."""
        return (self.core, self.margin, self.input_size, self.output_size)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "ModelCard":
        d = json.loads(text)
        if d.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"unsupported model card format_version {d.get('format_version')}")
        d["class_names"] = tuple(d["class_names"])
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


def read_card(raw: bytes, where: str) -> ModelCard:
    """The card in ``raw`` (the bytes of a ``model_card.json``); a ValueError naming ``where`` if invalid.

    The one reader: the trainer (resuming, exporting) and predict both read cards with it.
    """
    try:
        return ModelCard.from_json(raw.decode("utf-8"))
    except (KeyError, TypeError, ValueError) as e:  # not UTF-8 or JSON, fields missing or wrong
        raise ValueError(f"{where}: not a valid model card ({type(e).__name__}: {e})") from e


def model_id(card: ModelCard, raw: bytes) -> str:
    """A short id of one exported model: its name and a digest of its card."""
    return f"{card.model_name}-{hashlib.sha256(raw).hexdigest()[:12]}"


def saved_model_digest(read: Callable[[str], bytes]) -> str:
    """sha256 over the SAVED_MODEL_DIGEST_FILES of a SavedModel; ``read(relative path)`` gives
    a file's bytes (relative to the ``saved_model/`` directory)."""
    digest = hashlib.sha256()
    for name in SAVED_MODEL_DIGEST_FILES:
        data = read(name)
        digest.update(f"{name}\0{len(data)}\0".encode() + data)
    return digest.hexdigest()
