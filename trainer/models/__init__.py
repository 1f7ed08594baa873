"""Model builders chosen by name from the plain dict ``MODELS``.

Every builder takes (input shape, output channels, ModelConfig) and returns a Keras model
from normalised images to float32 logits. Binary segmentation uses one sigmoid channel;
everything else one channel per class (see ``output_channels``). With ``distance`` (the
segmentation U-Nets only) the model returns ``{"classes": <what it returns without>, "distance":
[N, O, O, 1] sigmoid}``; ``split_outputs`` and ``primary_output`` take them apart.
"""
from __future__ import annotations

from typing import Callable

import keras

from schemas.example import SEGMENTATION, DatasetSpec
from trainer.config import ModelConfig
from trainer.models.classify import BACKBONE_NAME, build_small_cnn, build_transfer
from trainer.models.layers import CUSTOM_OBJECTS
from trainer.models.res_attention_unet import build_res_attention_unet
from trainer.models.unet import build_unet, valid_input_size, valid_output_size


def _unet(shape, channels: int, cfg: ModelConfig, distance: bool = False) -> keras.Model:
    return build_unet(shape, channels, depth=cfg.depth, filters=cfg.filters, batchnorm=cfg.batchnorm,
                      dropout=cfg.dropout, padding=cfg.padding, upsampling=cfg.upsampling, distance=distance)


def _res_attention_unet(shape, channels: int, cfg: ModelConfig, distance: bool = False) -> keras.Model:
    if cfg.padding != "same":
        raise ValueError("res-attention-unet supports only --padding same")
    return build_res_attention_unet(shape, channels, depth=cfg.depth, filters=cfg.filters,
                                    batchnorm=cfg.batchnorm, dropout=cfg.dropout, attention=cfg.attention,
                                    deep_supervision=cfg.deep_supervision, upsampling=cfg.upsampling,
                                    distance=distance)


def _small_cnn(shape, channels: int, cfg: ModelConfig) -> keras.Model:
    return build_small_cnn(shape, channels, depth=cfg.depth, filters=cfg.filters, batchnorm=cfg.batchnorm,
                           dropout=cfg.dropout)


def _transfer(shape, channels: int, cfg: ModelConfig) -> keras.Model:
    return build_transfer(shape, channels, backbone=cfg.backbone, weights=cfg.backbone_weights,
                          dropout=cfg.dropout)


MODELS: dict[str, Callable[..., keras.Model]] = {
    "unet": _unet,
    "res-attention-unet": _res_attention_unet,
    "small-cnn": _small_cnn,
    "transfer": _transfer,
}


def output_channels(spec: DatasetSpec) -> int:
    return 1 if spec.task == SEGMENTATION and spec.num_classes == 2 else spec.num_classes


DISTANCE_MODELS = ("unet", "res-attention-unet")   # the builders that take a distance head


def build_model(cfg: ModelConfig, spec: DatasetSpec, distance: bool = False) -> keras.Model:
    """The network of ``cfg`` for ``spec``; ``distance``: with the distance head (``DatasetInfo.distance``)."""
    if cfg.name not in MODELS:
        raise ValueError(f"unknown model {cfg.name!r}; choose one of {sorted(MODELS)}")
    shape = (spec.tile_size, spec.tile_size, spec.channels)
    if not distance:
        return MODELS[cfg.name](shape, output_channels(spec), cfg)
    if cfg.name not in DISTANCE_MODELS or spec.task != SEGMENTATION:
        raise ValueError(f"a distance head needs a segmentation U-Net ({DISTANCE_MODELS}), not {cfg.name!r}")
    return MODELS[cfg.name](shape, output_channels(spec), cfg, distance=True)


def split_outputs(outputs):
    """(class outputs — logits, or [fused, *sides] under deep supervision —, distance or None)."""
    if isinstance(outputs, dict):
        return outputs["classes"], outputs["distance"]
    return outputs, None


def primary_output(outputs):
    """The class logits that are evaluated and exported (the fused ones under deep supervision)."""
    outputs = split_outputs(outputs)[0]
    return outputs[0] if isinstance(outputs, (list, tuple)) else outputs


def output_size(model: keras.Model) -> int:
    """Spatial size of the primary output (segmentation models)."""
    shape = model.outputs[0].shape
    return int(shape[1])


def check_geometry(model: keras.Model, spec: DatasetSpec, cfg: ModelConfig) -> None:
    """A segmentation model must output the whole tile ('same') or exactly its core ('valid')."""
    if spec.task != SEGMENTATION:
        return
    size = output_size(model)
    if size not in (spec.core, spec.tile_size):
        try:
            hint = (f"; preprocess with --tile-size {spec.core} --margin "
                    f"{(valid_input_size(spec.core, cfg.depth) - spec.core) // 2}")
        except ValueError as error:
            hint = f" ({error})"
        raise ValueError(f"{cfg.name} maps {spec.tile_size}-pixel tiles to {size} pixels, but the dataset's core is "
                         f"{spec.core} pixels{hint}")


__all__ = ["check_geometry", "MODELS", "CUSTOM_OBJECTS", "BACKBONE_NAME", "build_model", "output_channels", "primary_output",
           "split_outputs", "DISTANCE_MODELS", "output_size", "valid_input_size", "valid_output_size"]
