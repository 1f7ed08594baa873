"""Pixel arrays out: PNG encoding (8/16-bit, 1 or 3 channels), fitting to a square size, and
what a person looks at (16 -> 8-bit, RGB, class colours over an image).

The counterpart of ``images`` (which decodes and validates inputs); no Beam, no TF.
"""
from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from PIL import Image

from schemas.example import CLASS_COLOURS, IGNORE_LABEL

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PALETTE = np.array(CLASS_COLOURS, np.uint8)


def to_uint8(pixels: np.ndarray) -> np.ndarray:
    """uint16 -> uint8 as round(v * 255 / 65535) (the ``scale8`` policy); uint8 unchanged."""
    if pixels.dtype == np.uint8:
        return pixels
    return ((pixels.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)


def to_rgb8(pixels: np.ndarray) -> np.ndarray:
    """(h, w, 1|3) uint8/uint16 -> (h, w, 3) uint8 for display."""
    pixels = to_uint8(pixels)
    return np.repeat(pixels, 3, axis=2) if pixels.shape[2] == 1 else pixels


def overlay(image: np.ndarray, mask: np.ndarray | None, alpha: float = 0.45) -> np.ndarray:
    """(h, w, 3) uint8: ``image`` with classes > 0 of ``mask`` ((h, w) or (h, w, 1)) blended in
    their colour, and ignore pixels hatched grey."""
    rgb = to_rgb8(image).astype(np.float32)
    if mask is None:
        return rgb.astype(np.uint8)
    ids = mask[..., 0] if mask.ndim == 3 else mask
    tinted = (ids != IGNORE_LABEL) & (ids != 0)
    colours = PALETTE[(ids[tinted].astype(np.intp) - 1) % (len(PALETTE) - 1) + 1]
    rgb[tinted] = (1 - alpha) * rgb[tinted] + alpha * colours
    yy, xx = np.indices(ids.shape)
    rgb[(ids == IGNORE_LABEL) & ((yy + xx) % 6 < 2)] = 128
    return np.round(rgb).astype(np.uint8)


INTENSITY_MODES = ("fixed", "percentile", "zscore")
PERCENTILES = (1.0, 99.8)    # "percentile": these map to the bottom and top of the output range
ZSCORE_SPAN = 3.0            # "zscore": mean -/+ this many standard deviations do


def intensity_range(values: np.ndarray, mode: str) -> tuple[float, float]:
    """(low, high) native values that an image's ``mode`` normalisation maps to 0 and the top
    of the output range (all channels together, as CSBDeep / StarDist normalise)."""
    values = np.asarray(values)
    if mode == "percentile":
        low, high = np.percentile(values, PERCENTILES)
    elif mode == "zscore":
        mean, std = float(values.mean(dtype=np.float64)), float(values.std(dtype=np.float64))
        low, high = mean - ZSCORE_SPAN * std, mean + ZSCORE_SPAN * std
    else:
        raise ValueError(f"intensity must be one of {INTENSITY_MODES[1:]} here, got {mode!r}")
    return float(low), float(max(high, low + 1e-6))


def stretch(image: np.ndarray, low: float, high: float, dtype) -> np.ndarray:
    """``image`` with [low, high] mapped linearly onto the whole range of ``dtype`` (clipped,
    rounded): the same native value always gives the same output, whatever the region."""
    top = np.iinfo(dtype).max
    scaled = (image.astype(np.float32) - np.float32(low)) * np.float32(top / (high - low))
    return np.clip(np.rint(scaled), 0, top).astype(dtype)


GLASS_MIN, GLASS_SPREAD, PADDING_MAX = 215, 20, 8   # 8-bit levels of the tissue test below
TISSUE_MIN_FRACTION = 0.05


def tissue_fraction(image: np.ndarray, step: int = 4) -> float:
    """The fraction of ``image`` (h, w, C; every ``step``-th pixel each way: a low-resolution
    look) that is neither slide glass nor padding. Glass: bright and grey (every channel >=
    GLASS_MIN and channels within GLASS_SPREAD of each other); padding: black (every channel
    <= PADDING_MAX). Meant for brightfield slides; fluorescence has dark empty areas."""
    sample = to_uint8(image[::step, ::step]).astype(np.int16)
    low, high = sample.min(axis=-1), sample.max(axis=-1)
    empty = ((low >= GLASS_MIN) & (high - low <= GLASS_SPREAD)) | (high <= PADDING_MAX)
    return float(1.0 - empty.mean()) if empty.size else 0.0


def is_blank(image: np.ndarray) -> bool:
    """Whether a tile's core is empty glass or padding (tissue under TISSUE_MIN_FRACTION)."""
    return tissue_fraction(image) < TISSUE_MIN_FRACTION


def heat(values: np.ndarray) -> np.ndarray:
    """(h, w) uint8 -> (h, w, 3) uint8 heat colours: black, red, yellow, white as values rise."""
    t = values.astype(np.float32) / 255
    return np.round(np.clip(np.stack([3 * t, 3 * t - 1, 3 * t - 2], -1), 0, 1) * 255).astype(np.uint8)


def _resize(image: np.ndarray, h: int, w: int) -> np.ndarray:
    if image.dtype == np.uint8:
        pil = Image.fromarray(image[..., 0] if image.shape[2] == 1 else image)
        return np.asarray(pil.resize((w, h), Image.Resampling.LANCZOS)).reshape(h, w, -1)
    channels = [np.asarray(Image.fromarray(image[..., c].astype(np.float32), "F")
                           .resize((w, h), Image.Resampling.LANCZOS)) for c in range(image.shape[2])]
    hi = np.iinfo(image.dtype).max
    return np.clip(np.rint(np.stack(channels, axis=-1)), 0, hi).astype(image.dtype)


def _center(image: np.ndarray, size: int) -> np.ndarray:
    """Center-crop or zero-pad each spatial axis to ``size``."""
    out = np.zeros((size, size) + image.shape[2:], image.dtype)
    src, dst = [], []
    for n in image.shape[:2]:
        a = abs(n - size) // 2
        src.append(slice(a, a + size) if n >= size else slice(0, n))
        dst.append(slice(0, size) if n >= size else slice(a, a + n))
    out[tuple(dst)] = image[tuple(src)]
    return out


def fit_to_size(image: np.ndarray, size: int, mode: str = "resize") -> np.ndarray:
    """(size, size, C) for whole-image classification; dtype kept.

    "resize": scale the long side to ``size`` keeping the aspect ratio, zero-pad (letterbox);
    "pad": no scaling, zero-pad or center-crop; "crop": scale the short side, center-crop.
    """
    if mode not in ("resize", "pad", "crop"):
        raise ValueError(f"fit mode must be resize, pad or crop, got {mode!r}")
    squeeze = image.ndim == 2
    image = image[..., None] if squeeze else image
    h, w = image.shape[:2]
    if mode != "pad":
        scale = size / (max(h, w) if mode == "resize" else min(h, w))
        nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
        if (nh, nw) != (h, w):
            image = _resize(image, nh, nw)
    out = _center(image, size)
    return out[..., 0] if squeeze else out


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def encode_png(array: np.ndarray, compress_level: int = 1) -> bytes:
    """PNG bytes of (H, W) or (H, W, 1|3) uint8/uint16 pixels."""
    a = array[..., None] if array.ndim == 2 else array
    if a.ndim != 3 or a.shape[2] not in (1, 3) or a.dtype not in (np.uint8, np.uint16):
        raise ValueError(f"encode_png takes (H, W[, 1|3]) uint8/uint16, got {array.shape} {array.dtype}")
    if a.dtype == np.uint16 and a.shape[2] == 3:  # Pillow cannot write 16-bit RGB: filter-0 rows
        h, w, _ = a.shape
        rows = np.zeros((h, 1 + 6 * w), np.uint8)
        rows[:, 1:] = np.ascontiguousarray(a, ">u2").view(np.uint8).reshape(h, -1)
        ihdr = struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0)
        return (PNG_SIGNATURE + png_chunk(b"IHDR", ihdr)
                + png_chunk(b"IDAT", zlib.compress(rows.tobytes(), compress_level)) + png_chunk(b"IEND", b""))
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(a[..., 0] if a.shape[2] == 1 else a)).save(
        buf, "PNG", compress_level=compress_level)
    return buf.getvalue()
