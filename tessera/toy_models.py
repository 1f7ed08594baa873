"""Tiny exported models honouring the model-card contract, for the prediction tests and bench.

Each is a ``tf.Module`` with fixed random weights, saved with ``tf.saved_model.save`` and a
``serving_default`` signature taking uint8 ``tiles`` [N, T, T, C] and returning float32
``probabilities`` [N, O, O, K] (segmentation) or [N, K] (classification), beside a
``model_card.json``. ``forward`` runs the same network on an image of any size, which is
what the seamlessness tests compare tiled prediction with.

Kinds:
- ``same``: ``layers`` 3x3 'SAME' convolutions (receptive-field radius = layers), O = T;
- ``valid``: the same with 'VALID' convolutions, so margin = layers and O = core;
- ``pixel``: one 1x1 convolution (per-pixel, hence equivariant to every flip and turn);
- ``classify``: global mean of the normalised pixels through a dense layer;
- ``bright``: P(foreground) = brightness (a mask is whatever the image draws);
- ``boundary``: a boundary model (classes background / boundary / interior, card with an
  ``object_class`` and a seeded decoder), per pixel of brightness b: P(interior) =
  clip(2b - 1), P(background) = clip(1 - 2b), P(boundary) the rest: objects drawn bright
  with a mid-grey rim (also where they touch) decode to one object each.
"""
from __future__ import annotations

import os

import numpy as np
import tensorflow as tf

from schemas.decoder import DecoderParams
from schemas.example import BOUNDARY_CLASSES
from schemas.model_card import ModelCard, saved_model_digest


def read_file(folder: str):
    def read(name: str) -> bytes:
        with open(os.path.join(folder, name), "rb") as handle:
            return handle.read()
    return read


class ToyModel(tf.Module):
    def __init__(self, kind: str, channels: int, classes: int, layers: int, width: int, seed: int,
                 scale: float, offset: float):
        super().__init__()
        rng = np.random.default_rng(seed)
        self.kind, self.scale, self.offset = kind, scale, offset
        self.padding = "VALID" if kind == "valid" else "SAME"
        if kind == "classify":
            self.dense = tf.Variable(rng.normal(0, 2.0, (channels, classes)).astype(np.float32))
            self.kernels = []
            return
        if kind in ("bright", "boundary"):   # probabilities from brightness: a mask is whatever the image draws
            self.kernels = []
            return
        sizes = [channels] + [width] * (layers if kind in ("same", "valid") else 0)
        self.kernels = [tf.Variable(rng.normal(0, 0.5, (3, 3, a, b)).astype(np.float32))
                        for a, b in zip(sizes[:-1], sizes[1:])]
        self.head = tf.Variable(rng.normal(0, 1.0, (1, 1, sizes[-1], classes)).astype(np.float32))

    def forward(self, pixels):
        x = tf.cast(pixels, tf.float32) * self.scale + self.offset
        if self.kind == "classify":
            return tf.nn.softmax(tf.reduce_mean(x, axis=(1, 2)) @ self.dense)
        if self.kind == "bright":
            bright = tf.reduce_mean(tf.cast(pixels, tf.float32), axis=-1, keepdims=True) / 255.0
            return tf.concat([1.0 - bright, bright], axis=-1)
        if self.kind == "boundary":
            bright = tf.reduce_mean(tf.cast(pixels, tf.float32), axis=-1, keepdims=True) / 255.0
            interior = tf.clip_by_value(2.0 * bright - 1.0, 0.0, 1.0)
            background = tf.clip_by_value(1.0 - 2.0 * bright, 0.0, 1.0)
            return tf.concat([background, 1.0 - interior - background, interior], axis=-1)
        for kernel in self.kernels:
            x = tf.tanh(tf.nn.conv2d(x, kernel, 1, self.padding))
        return tf.nn.softmax(tf.nn.conv2d(x, self.head, 1, "SAME"))


def export_model(directory: str, kind: str = "same", core: int = 8, margin: int = 3, channels: int = 3,
                 classes: int = 2, layers: int = 3, width: int = 4, seed: int = 0,
                 threshold: float | None = None, name: str | None = None,
                 input_size: int | None = None, whole_image: bool = True, fit: str = "resize",
                 intensity: str = "fixed", decoder: dict | None = None, object_class: str = "cell") -> ToyModel:
    """Write a model directory (saved_model/ + model_card.json); returns the module.

    A ``classify`` model is a whole-image classifier of ``input_size`` (its card's ``fit``),
    or with ``whole_image=False`` a tile classifier of tiles ``core + 2 * margin``. A
    ``boundary`` model's card names ``object_class`` and ``decoder`` (default: seeded at 0.5).
    """
    if kind == "boundary":
        classes = len(BOUNDARY_CLASSES)
    scale, offset = 1.0 / 255.0, -0.5
    model = ToyModel(kind, channels, classes, layers, width, seed, scale, offset)
    task = "classification" if kind == "classify" else "segmentation"
    whole_image = task == "classification" and whole_image
    tile = input_size or core + 2 * margin
    if kind == "valid":
        assert margin == layers, "a valid-conv model's margin is its receptive-field radius"
    output_size = core if kind == "valid" else tile
    signature = tf.function(lambda tiles: {"probabilities": model.forward(tiles)},
                            input_signature=[tf.TensorSpec([None, tile, tile, channels], tf.uint8, name="tiles")])
    os.makedirs(directory, exist_ok=True)
    tf.saved_model.save(model, os.path.join(directory, "saved_model"), signatures={"serving_default": signature})
    names = ("background", "foreground") if classes == 2 else tuple(f"class{i}" for i in range(classes))
    boundary = kind == "boundary"
    names = BOUNDARY_CLASSES if boundary else names
    heads = {"probabilities": {"meaning": "boundary target" if boundary else "class probabilities",
                               "classes": list(names)}}
    card = ModelCard(task=task, model_name=name or f"toy-{kind}", core=tile if whole_image else core,
                     margin=0 if whole_image else margin, input_size=tile,
                     output_size=output_size, channels=channels,
                     class_names=names, normalization={"scale": scale, "offset": offset}, threshold=threshold,
                     config={"seed": seed}, whole_image=whole_image, fit=fit, intensity=intensity, heads=heads,
                     object_class=object_class if boundary else "",
                     decoder=(DecoderParams("seeded").to_dict() if decoder is None else decoder) if boundary else {},
                     saved_model_digest=saved_model_digest(read_file(os.path.join(directory, "saved_model"))))
    with open(os.path.join(directory, "model_card.json"), "w") as f:
        f.write(card.to_json())
    return model


def whole_image_probabilities(model: ToyModel, image: np.ndarray, pad: int) -> np.ndarray:
    """The network on the whole image mirror-padded by ``pad`` (repeated reflection), cropped back."""
    from pipelines.core.tiling import mirror_index

    h, w = image.shape[:2]
    rows = mirror_index(np.arange(-pad, h + pad), h)
    cols = mirror_index(np.arange(-pad, w + pad), w)
    padded = image[np.ix_(rows, cols)]
    out = model.forward(padded[None]).numpy()[0]
    if model.padding == "VALID":
        return out
    return out[pad:pad + h, pad:pad + w]


def write_images(folder, sizes: dict, seed: int = 0, channels: int = 3) -> dict:
    """PNG images named by id (may contain '/') of the given (h, w); returns {id: array}."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    arrays = {}
    for image_id, (h, w) in sizes.items():
        pixels = rng.integers(0, 256, (h, w, channels), dtype=np.uint8)
        path = os.path.join(str(folder), *image_id.split("/")) + ".png"
        os.makedirs(os.path.dirname(path), exist_ok=True)
        Image.fromarray(pixels[..., 0] if channels == 1 else pixels).save(path)
        arrays[image_id] = pixels
    return arrays
