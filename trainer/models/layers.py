"""Custom Keras layers: channel/spatial attention (SE, ECA, CBAM), learned fusion of deep
supervision side outputs, logits -> probabilities, and backbone input preprocessing.

Each is registered under the "tessera" package so a saved ``.keras`` model loads once this
module is imported (``CUSTOM_OBJECTS`` lists them for ``custom_objects=`` as well).
"""
from __future__ import annotations

import math

import keras
from keras import layers, ops

register = keras.saving.register_keras_serializable(package="tessera")


@register
class SqueezeExcite(layers.Layer):
    """Squeeze-and-excitation (Hu et al. 2018): channel gates from global average pooling."""

    def __init__(self, ratio: int = 8, **kwargs):
        super().__init__(**kwargs)
        self.ratio = ratio

    def build(self, input_shape):
        channels = input_shape[-1]
        self.reduce = layers.Dense(max(1, channels // self.ratio), activation="relu", dtype=self.dtype_policy)
        self.expand = layers.Dense(channels, activation="sigmoid", dtype=self.dtype_policy)
        self.reduce.build((None, channels))
        self.expand.build((None, max(1, channels // self.ratio)))

    def call(self, x):
        gate = self.expand(self.reduce(ops.mean(x, axis=(1, 2))))
        return x * gate[:, None, None, :]

    def get_config(self):
        return {**super().get_config(), "ratio": self.ratio}


def eca_kernel_size(channels: int, gamma: float = 2.0, b: float = 1.0) -> int:
    """ECA's adaptive 1-D kernel size: the odd number nearest |log2(C) + b| / gamma."""
    t = int(abs((math.log2(channels) + b) / gamma))
    return t if t % 2 else t + 1


@register
class EfficientChannelAttention(layers.Layer):
    """ECA (Wang et al. 2020): channel gates from a 1-D convolution across pooled channels."""

    def __init__(self, kernel_size: int = 0, **kwargs):
        super().__init__(**kwargs)
        self.kernel_size = kernel_size

    def build(self, input_shape):
        size = self.kernel_size or eca_kernel_size(input_shape[-1])
        self.conv = layers.Conv1D(1, size, padding="same", use_bias=False, dtype=self.dtype_policy)
        self.conv.build((None, input_shape[-1], 1))

    def call(self, x):
        pooled = ops.mean(x, axis=(1, 2))[:, :, None]
        gate = ops.sigmoid(self.conv(pooled))[:, :, 0]
        return x * gate[:, None, None, :]

    def get_config(self):
        return {**super().get_config(), "kernel_size": self.kernel_size}


@register
class CBAM(layers.Layer):
    """Convolutional block attention (Woo et al. 2018): channel gates from average- and
    max-pooled features through a shared MLP, then a spatial gate from a 7x7 convolution."""

    def __init__(self, ratio: int = 8, spatial_kernel: int = 7, **kwargs):
        super().__init__(**kwargs)
        self.ratio, self.spatial_kernel = ratio, spatial_kernel

    def build(self, input_shape):
        channels = input_shape[-1]
        hidden = max(1, channels // self.ratio)
        self.hidden = layers.Dense(hidden, activation="relu", dtype=self.dtype_policy)
        self.out = layers.Dense(channels, dtype=self.dtype_policy)
        self.spatial = layers.Conv2D(1, self.spatial_kernel, padding="same", activation="sigmoid",
                                     dtype=self.dtype_policy)
        self.hidden.build((None, channels))
        self.out.build((None, hidden))
        self.spatial.build((None, None, None, 2))

    def _mlp(self, pooled):
        return self.out(self.hidden(pooled))

    def call(self, x):
        gate = ops.sigmoid(self._mlp(ops.mean(x, axis=(1, 2))) + self._mlp(ops.max(x, axis=(1, 2))))
        x = x * gate[:, None, None, :]
        pooled = ops.concatenate([ops.mean(x, axis=-1, keepdims=True), ops.max(x, axis=-1, keepdims=True)], axis=-1)
        return x * self.spatial(pooled)

    def get_config(self):
        return {**super().get_config(), "ratio": self.ratio, "spatial_kernel": self.spatial_kernel}


ATTENTION = {"se": SqueezeExcite, "eca": EfficientChannelAttention, "cbam": CBAM}


@register
class WeightedFusion(layers.Layer):
    """HED-style fusion: sum_i w_i * side_i with one learned weight per side output (init 1/L)."""

    def build(self, input_shape):
        count = len(input_shape)
        self.side_weights = self.add_weight(
            name="side_weights", shape=(count,), initializer=keras.initializers.Constant(1.0 / count))

    def call(self, sides):
        weights = ops.cast(self.side_weights, sides[0].dtype)
        return sum(weights[i] * side for i, side in enumerate(sides))


@register
class ToProbabilities(layers.Layer):
    """Logits -> per-class probabilities: softmax for K > 1 channels; one sigmoid channel
    (binary) becomes the two channels [1 - p, p]."""

    def call(self, logits):
        logits = ops.cast(logits, "float32")
        if logits.shape[-1] == 1:
            p = ops.sigmoid(logits)
            return ops.concatenate([1.0 - p, p], axis=-1)
        return ops.softmax(logits, axis=-1)


@register
class BackbonePreprocess(layers.Layer):
    """[0, 1] images -> the input convention of a keras.applications backbone
    ("tf": [-1, 1], "caffe": BGR minus ImageNet mean, "raw255": [0, 255])."""

    def __init__(self, mode: str = "tf", **kwargs):
        super().__init__(**kwargs)
        if mode not in ("tf", "caffe", "raw255"):
            raise ValueError(f"unknown backbone preprocessing mode {mode!r}")
        self.mode = mode

    def call(self, x):
        x = x * 255.0
        if self.mode == "raw255":
            return x
        return keras.applications.imagenet_utils.preprocess_input(x, mode=self.mode)

    def get_config(self):
        return {**super().get_config(), "mode": self.mode}


CUSTOM_OBJECTS = {cls.__name__: cls for cls in (
    SqueezeExcite, EfficientChannelAttention, CBAM, WeightedFusion, ToProbabilities, BackbonePreprocess)}
