"""Classification networks: a small CNN trained from scratch, and transfer learning from a
``keras.applications`` backbone (random init or a local weights file; nothing downloads).

The transfer model keeps its backbone as one nested layer named ``backbone``, so training
can freeze it for the first phase and fine-tune it afterwards.
"""
from __future__ import annotations

import keras
import tensorflow as tf
from keras import layers

from trainer.models.layers import BackbonePreprocess

BACKBONE_NAME = "backbone"

# name -> (constructor, preprocessing mode of BackbonePreprocess)
BACKBONES = {
    "mobilenetv2": (keras.applications.MobileNetV2, "tf"),
    "resnet50": (keras.applications.ResNet50, "caffe"),
    "efficientnetb0": (keras.applications.EfficientNetB0, "raw255"),
}


def build_small_cnn(input_shape: tuple[int, int, int], num_classes: int, depth: int = 3, filters: int = 32,
                    batchnorm: bool = True, dropout: float = 0.0, name: str = "small_cnn") -> keras.Model:
    """Stages of two 3x3 convolutions and a max-pool (filters doubling), global average
    pooling, dropout, and a dense layer to float32 class logits."""
    inputs = keras.Input(input_shape, name="image")
    x = inputs
    for stage in range(depth):
        for i in (1, 2):
            x = layers.Conv2D(filters * 2 ** stage, 3, padding="same", use_bias=not batchnorm,
                              kernel_initializer="he_normal", name=f"stage{stage}_conv{i}")(x)
            if batchnorm:
                x = layers.BatchNormalization(momentum=0.9, synchronized=True, name=f"stage{stage}_bn{i}")(x)
            x = layers.ReLU(name=f"stage{stage}_relu{i}")(x)
        x = layers.MaxPooling2D(2, name=f"stage{stage}_pool")(x)
    x = layers.GlobalAveragePooling2D(name="pool")(x)
    if dropout:
        x = layers.Dropout(dropout, name="dropout")(x)
    logits = layers.Dense(num_classes, dtype="float32", name="logits")(x)
    return keras.Model(inputs, logits, name=name)


def build_transfer(input_shape: tuple[int, int, int], num_classes: int, backbone: str = "mobilenetv2",
                   weights: str = "", dropout: float = 0.2, name: str = "transfer") -> keras.Model:
    """A keras.applications backbone (``weights``: "" for random init, or a local file) with
    global average pooling, dropout and a new dense head. Grayscale inputs are repeated to RGB."""
    if backbone not in BACKBONES:
        raise ValueError(f"backbone must be one of {sorted(BACKBONES)}, got {backbone!r}")
    if weights and not tf.io.gfile.exists(weights):
        raise FileNotFoundError(f"backbone weights file {weights!r} does not exist (nothing is downloaded)")
    constructor, mode = BACKBONES[backbone]
    size = input_shape[0]
    net = constructor(include_top=False, weights=weights or None, input_shape=(size, size, 3),
                      pooling="avg", name=BACKBONE_NAME)
    inputs = keras.Input(input_shape, name="image")
    x = inputs
    if input_shape[-1] == 1:
        x = layers.Concatenate(name="gray_to_rgb")([x, x, x])
    x = BackbonePreprocess(mode, name="backbone_preprocess")(x)
    x = net(x)
    if dropout:
        x = layers.Dropout(dropout, name="dropout")(x)
    logits = layers.Dense(num_classes, dtype="float32", name="logits")(x)
    return keras.Model(inputs, logits, name=name)
