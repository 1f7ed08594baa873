"""The tile example: the one definition that preprocessing writes and training reads.

A dataset holds examples of one task:

- ``segmentation``: ``image`` (T, T, C) and ``mask`` (T, T, 1) with class ids, 255 = ignore;
  with a weight map (``weight_map = "unet"``) also ``weight`` (T, T, 1) uint8, the U-Net
  border term scaled so 255 = 1 (``pipelines.core.weight_map``); with a boundary target and
  ``distance = "boundary"`` also ``distance`` (T, T, 1) uint8, each object pixel's distance to
  its object's edge scaled so 255 = ``distance_max`` px (``pipelines.core.targets``).
- ``classification``: ``image`` (T, T, C) and ``label`` (class index).

T is the network input size: ``core + 2 * margin`` for tiles, the set size for whole images.
Every example also carries where it came from, so it can be traced and stitched back.
"""
from __future__ import annotations

import dataclasses
import json
from typing import Any

IGNORE_LABEL = 255
# Class colours (RGB) of every picture Tessera draws: overlays, contact sheets, TensorBoard panels.
# Class 0 (background) is black / left untinted; classes past the list cycle through it from 1.
CLASS_COLOURS = ((0, 0, 0), (230, 25, 75), (60, 180, 75), (0, 130, 200), (255, 225, 25), (245, 130, 48),
                 (145, 30, 180), (70, 240, 240), (240, 50, 230), (210, 245, 60))
SEGMENTATION = "segmentation"
CLASSIFICATION = "classification"
TASKS = (SEGMENTATION, CLASSIFICATION)
# A boundary target's classes (``DatasetSpec.target == "boundary"``): what a model trained on it
# outputs and ``schemas.decoder`` turns into objects.
BOUNDARY_CLASSES = ("background", "boundary", "interior")
TARGETS = ("classes", "boundary")
DISTANCES = ("none", "boundary")

# Provenance carried by every example (name -> numpy dtype name).
PROVENANCE_FIELDS: dict[str, str] = {
    "id": "str",            # unique example id: "<source_id>#y<core_y>x<core_x>#a<copy>"
    "source_id": "str",     # relative path of the source image without extension
    "core_y": "int32",      # core origin in source pixel coordinates
    "core_x": "int32",
    "core_h": "int32",      # valid core size (smaller than `core` at the bottom/right edge)
    "core_w": "int32",
    "margin": "int32",      # context margin on every side of the core
    "source_h": "int32",    # source image size
    "source_w": "int32",
    "copy": "int32",        # 0 = original, 1..K = static augmentation copies
    "augmentation": "str",  # JSON description of the static transform ("{}" for copy 0)
    "fg_fraction": "float32",  # fraction of labelled pixels that are not class 0
}


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    """What a dataset's examples look like; written to ``tessera_dataset.json``."""

    task: str
    core: int                 # core size C (equals tile_size for whole-image classification)
    margin: int               # margin M
    channels: int             # 1 (grayscale) or 3 (RGB)
    dtype: str = "uint8"      # "uint8", or "uint16" when 16-bit inputs are kept
    class_names: tuple[str, ...] = ("background", "foreground")
    whole_image: bool = False  # classification of whole images resized/padded to core
    pixel_size_um: float | None = None   # µm/px of the examples, when known (the model card copies it)
    intensity: str = "fixed"             # per-image normalisation of the sources (images.ImagePolicy)
    weight_map: str = "none"             # "unet": each example carries the border term (core.weight_map)
    weight_map_w0: float = 10.0          # ...its weight w0 in the loss...
    weight_map_sigma: float = 5.0        # ...and its sigma (px), with which the term was computed
    # "boundary": the mask classes are BOUNDARY_CLASSES, derived from the objects of the source
    # masks (instance ids, or components) with a boundary band of border_thickness px
    target: str = "classes"
    border_thickness: int = 2
    object_class: str = ""               # target "boundary": the objects' class name (e.g. "foreground")
    distance: str = "none"               # "boundary": each example carries a distance-to-boundary map
    distance_max: float = 32.0           # ...as uint8 ``round(min(d, distance_max) / distance_max * 255)``, d in px

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {self.task!r}")
        if self.channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {self.channels}")
        if self.dtype not in ("uint8", "uint16"):
            raise ValueError(f"dtype must be uint8 or uint16, got {self.dtype}")
        if self.core < 1 or self.margin < 0:
            raise ValueError(f"need core >= 1 and margin >= 0, got {self.core}, {self.margin}")
        if len(self.class_names) < 2:
            raise ValueError("need at least two classes")
        if self.weight_map not in ("none", "unet"):
            raise ValueError(f"weight_map must be none or unet, got {self.weight_map!r}")
        if self.weight_map != "none" and (self.task != SEGMENTATION or self.weight_map_sigma <= 0
                                          or self.weight_map_w0 < 0):
            raise ValueError("a weight map needs a segmentation dataset, sigma > 0 and w0 >= 0")
        if self.target not in TARGETS or self.distance not in DISTANCES:
            raise ValueError(f"target must be one of {TARGETS} and distance one of {DISTANCES}, "
                             f"got {self.target!r}, {self.distance!r}")
        if self.target == "boundary" and (self.task != SEGMENTATION or tuple(self.class_names) != BOUNDARY_CLASSES
                                          or self.border_thickness < 1 or not self.object_class):
            raise ValueError(f"a boundary target needs a segmentation dataset with classes {BOUNDARY_CLASSES}, "
                             f"border_thickness >= 1 and the objects' class name")
        if self.distance != "none" and (self.target != "boundary" or self.distance_max <= 0):
            raise ValueError("a distance map needs the boundary target and distance_max > 0")

    @property
    def tile_size(self) -> int:
        return self.core + 2 * self.margin

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def to_json(self) -> str:
        d = dataclasses.asdict(self)
        d["tile_size"] = self.tile_size
        return json.dumps(d, indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "DatasetSpec":
        d = json.loads(text)
        d.pop("tile_size", None)
        d["class_names"] = tuple(d["class_names"])
        return cls(**d)


def tfds_features(spec: DatasetSpec):
    """The TFDS ``FeaturesDict`` for ``spec`` (imports tensorflow_datasets lazily)."""
    import numpy as np
    import tensorflow_datasets as tfds

    t = spec.tile_size
    feats: dict[str, Any] = {
        "image": tfds.features.Image(
            shape=(t, t, spec.channels), dtype=np.dtype(spec.dtype), encoding_format="png"
        ),
    }
    if spec.task == SEGMENTATION:
        feats["mask"] = tfds.features.Image(shape=(t, t, 1), dtype=np.uint8, encoding_format="png")
        if spec.weight_map != "none":
            feats["weight"] = tfds.features.Image(shape=(t, t, 1), dtype=np.uint8, encoding_format="png")
        if spec.distance == "boundary":
            feats["distance"] = tfds.features.Image(shape=(t, t, 1), dtype=np.uint8, encoding_format="png")
    else:
        feats["label"] = tfds.features.ClassLabel(names=list(spec.class_names))
    for name, dtype in PROVENANCE_FIELDS.items():
        feats[name] = tfds.features.Text() if dtype == "str" else tfds.features.Scalar(dtype=np.dtype(dtype))
    return tfds.features.FeaturesDict(feats)


def example_id(source_id: str, core_y: int, core_x: int, copy: int) -> str:
    return f"{source_id}#y{core_y}x{core_x}#a{copy}"
