"""Residual attention U-Net (U-CARFnet style): residual blocks whose residual branch is
gated by SE, ECA or CBAM attention, and optional deep supervision — a side output at
every decoder level, upsampled to full resolution and fused with learned weights (HED).

With deep supervision the model returns ``[fused, side_1, ..., side_L]`` (coarse to fine);
every output is supervised in training, and only ``fused`` is exported. With a distance head
the class outputs are ``{"classes": ..., "distance": d}``'s first entry (``unet.with_distance_head``).
"""
from __future__ import annotations

import keras
from keras import layers

from trainer.models.layers import ATTENTION, WeightedFusion
from trainer.models.unet import contracting_path, upsample, with_distance_head


def residual_block(x, filters: int, batchnorm: bool, attention: str, name: str):
    shortcut = x
    if x.shape[-1] != filters:
        shortcut = layers.Conv2D(filters, 1, use_bias=not batchnorm, name=f"{name}_proj")(x)
        if batchnorm:
            shortcut = layers.BatchNormalization(momentum=0.9, synchronized=True, name=f"{name}_proj_bn")(shortcut)
    y = x
    for i in (1, 2):
        y = layers.Conv2D(filters, 3, padding="same", use_bias=not batchnorm,
                          kernel_initializer="he_normal", name=f"{name}_conv{i}")(y)
        if batchnorm:
            y = layers.BatchNormalization(momentum=0.9, synchronized=True, name=f"{name}_bn{i}")(y)
        if i == 1:
            y = layers.ReLU(name=f"{name}_relu{i}")(y)
    y = ATTENTION[attention](name=f"{name}_{attention}")(y)
    return layers.ReLU(name=f"{name}_out")(layers.Add(name=f"{name}_add")([shortcut, y]))


def build_res_attention_unet(input_shape: tuple[int, int, int], num_outputs: int, depth: int = 4,
                             filters: int = 32, batchnorm: bool = True, dropout: float = 0.0,
                             attention: str = "cbam", deep_supervision: bool = False,
                             upsampling: str = "transpose", distance: bool = False,
                             name: str = "res_attention_unet") -> keras.Model:
    if attention not in ATTENTION:
        raise ValueError(f"attention must be one of {sorted(ATTENTION)}, got {attention!r}")
    if input_shape[0] % (2 ** depth):
        raise ValueError(f"a U-Net of depth {depth} needs tiles divisible by {2 ** depth}, got {input_shape[0]}")
    inputs = keras.Input(input_shape, name="image")
    x, skips = contracting_path(inputs, depth, filters, dropout,
                                lambda y, f, block_name: residual_block(y, f, batchnorm, attention, block_name))
    sides = []
    for level in reversed(range(depth)):
        x = upsample(x, filters * 2 ** level, upsampling, f"up{level}")
        x = layers.Concatenate(name=f"up{level}_concat")([skips[level], x])
        x = residual_block(x, filters * 2 ** level, batchnorm, attention, f"up{level}")
        if deep_supervision:
            side = layers.Conv2D(num_outputs, 1, dtype="float32", name=f"side{level}_logits")(x)
            if level:
                side = layers.UpSampling2D(2 ** level, interpolation="bilinear", dtype="float32",
                                           name=f"side{level}_up")(side)
            sides.append(side)
    if not deep_supervision:
        logits = layers.Conv2D(num_outputs, 1, dtype="float32", name="logits")(x)
        return keras.Model(inputs, with_distance_head(logits, x, distance), name=name)
    fused = WeightedFusion(dtype="float32", name="fused_logits")(sides)
    return keras.Model(inputs, with_distance_head([fused, *sides], x, distance), name=name)
