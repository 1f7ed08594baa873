"""U-Net (Ronneberger et al. 2015) with 'same' or 'valid' convolutions.

With 'valid' convolutions every 3x3 convolution loses a pixel on each side and skip
connections are centre-cropped, so a 572x572 tile yields a 388x388 map at depth 4: the
overlap-tile geometry, where the output is exactly the tile's core.
"""
from __future__ import annotations

import keras
from keras import layers


def _output_or_none(input_size: int, depth: int) -> int | None:
    size = input_size
    for _ in range(depth):
        size -= 4
        if size <= 0 or size % 2:
            return None
        size //= 2
    size -= 4
    for _ in range(depth):
        size = size * 2 - 4
    return size if size > 0 else None


def valid_output_size(input_size: int, depth: int) -> int:
    """Output size of a valid-convolution U-Net of ``depth`` poolings; ValueError if the
    input does not pool evenly (the error names the nearest sizes that do)."""
    size = _output_or_none(input_size, depth)
    if size is None:
        fits = [s for s in range(max(8, input_size - 64), input_size + 65) if _output_or_none(s, depth)]
        near = sorted(sorted(fits, key=lambda s: abs(s - input_size))[:2])
        raise ValueError(f"a valid-convolution U-Net of depth {depth} cannot take {input_size}-pixel tiles; "
                         f"nearest input sizes that work: {near}")
    return size


def valid_input_size(output_size: int, depth: int) -> int:
    """The input size whose valid-convolution U-Net output is ``output_size``; ValueError if none."""
    size = output_size
    for _ in range(depth):
        size += 4
        if size % 2:
            raise ValueError(f"no valid-convolution U-Net of depth {depth} outputs {output_size} pixels "
                             f"(output sizes are 4 less than a multiple of {2 ** depth})")
        size //= 2
    size += 4
    for _ in range(depth):
        size = size * 2 + 4
    return size


def conv_block(x, filters: int, padding: str, batchnorm: bool, name: str):
    for i in (1, 2):
        x = layers.Conv2D(filters, 3, padding=padding, use_bias=not batchnorm,
                          kernel_initializer="he_normal", name=f"{name}_conv{i}")(x)
        if batchnorm:
            x = layers.BatchNormalization(momentum=0.9, synchronized=True, name=f"{name}_bn{i}")(x)
        x = layers.ReLU(name=f"{name}_relu{i}")(x)
    return x


def upsample(x, filters: int, mode: str, name: str):
    if mode == "transpose":
        return layers.Conv2DTranspose(filters, 2, strides=2, name=f"{name}_up")(x)
    if mode == "bilinear":
        x = layers.UpSampling2D(2, interpolation="bilinear", name=f"{name}_up")(x)
        return layers.Conv2D(filters, 1, name=f"{name}_up_proj")(x)
    raise ValueError(f"upsampling must be 'transpose' or 'bilinear', got {mode!r}")


def contracting_path(inputs, depth: int, filters: int, dropout: float, block):
    """Encoder shared by the U-Nets: ``block(x, filters, name)`` then 2x2 max pooling per level.

    Returns the bottom features and the skip connections (one per level, finest first).
    """
    x, skips = inputs, []
    for level in range(depth):
        x = block(x, filters * 2 ** level, f"down{level}")
        skips.append(x)
        x = layers.MaxPooling2D(2, name=f"down{level}_pool")(x)
    x = block(x, filters * 2 ** depth, "bottom")
    if dropout:
        x = layers.Dropout(dropout, name="bottom_dropout")(x)
    return x, skips


def crop_like(skip, target, name: str):
    """Centre-crops ``skip`` to the spatial size of ``target`` (no-op when equal)."""
    excess = skip.shape[1] - target.shape[1]
    if excess == 0:
        return skip
    return layers.Cropping2D(excess // 2, name=f"{name}_crop")(skip)


def build_unet(input_shape: tuple[int, int, int], num_outputs: int, depth: int = 4, filters: int = 64,
               batchnorm: bool = True, dropout: float = 0.0, padding: str = "same",
               upsampling: str = "transpose", distance: bool = False, name: str = "unet") -> keras.Model:
    """U-Net mapping normalised images [N, T, T, C] to float32 logits [N, O, O, num_outputs]; with
    ``distance`` to ``{"classes": logits, "distance": [N, O, O, 1]}`` (``distance_head``)."""
    size = input_shape[0]
    if padding == "valid":
        valid_output_size(size, depth)
    elif padding == "same":
        if size % (2 ** depth):
            raise ValueError(f"a 'same' U-Net of depth {depth} needs tiles divisible by {2 ** depth}, got {size}")
    else:
        raise ValueError(f"padding must be 'same' or 'valid', got {padding!r}")
    inputs = keras.Input(input_shape, name="image")
    x, skips = contracting_path(inputs, depth, filters, dropout,
                                lambda y, f, block_name: conv_block(y, f, padding, batchnorm, block_name))
    for level in reversed(range(depth)):
        x = upsample(x, filters * 2 ** level, upsampling, f"up{level}")
        x = layers.Concatenate(name=f"up{level}_concat")([crop_like(skips[level], x, f"up{level}"), x])
        x = conv_block(x, filters * 2 ** level, padding, batchnorm, f"up{level}")
    logits = layers.Conv2D(num_outputs, 1, dtype="float32", name="logits")(x)
    return keras.Model(inputs, with_distance_head(logits, x, distance), name=name)


def with_distance_head(classes, features, distance: bool):
    """The model's outputs: ``classes`` alone, or with ``distance`` ``{"classes": classes,
    "distance": d}``, d a float32 sigmoid channel from the final decoder ``features``: each
    pixel's distance to its object's edge over the dataset's ``distance_max`` (0 outside objects)."""
    if not distance:
        return classes
    return {"classes": classes,
            "distance": layers.Conv2D(1, 1, activation="sigmoid", dtype="float32", name="distance")(features)}
