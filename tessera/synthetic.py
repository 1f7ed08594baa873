"""Small synthetic datasets for the demo, the tests and the benchmarks.

Segmentation: textured, noisy backgrounds with brighter blobs (discs and rectangles) of
their own texture; the mask marks the blobs. Classification: one folder per class, each
class a different shape, at mixed sizes. Everything is seeded and deterministic.
"""
from __future__ import annotations

import pathlib

import numpy as np
from PIL import Image


def _texture(rng: np.random.Generator, h: int, w: int, scale: float) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    fy, fx, phase = rng.uniform(0.05, 0.3), rng.uniform(0.05, 0.3), rng.uniform(0, 2 * np.pi)
    return scale * np.sin(fy * yy + fx * xx + phase)


def segmentation_pair(rng: np.random.Generator, height: int, width: int, blobs: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """(RGB uint8 image, mask of {0, 1}) with ``blobs`` discs/rectangles as foreground."""
    yy, xx = np.mgrid[0:height, 0:width]
    mask = np.zeros((height, width), bool)
    for _ in range(blobs):
        cy, cx = rng.uniform(0, height), rng.uniform(0, width)
        r = rng.uniform(0.06, 0.16) * min(height, width) + 2
        if rng.random() < 0.5:
            mask |= (yy - cy) ** 2 + (xx - cx) ** 2 < r ** 2
        else:
            mask |= (abs(yy - cy) < r * 0.8) & (abs(xx - cx) < r * 1.2)
    base = 80 + _texture(rng, height, width, 25)
    fore = 140 + _texture(rng, height, width, 25)
    gray = np.where(mask, fore, base) + rng.normal(0, 30, (height, width))
    tint = rng.uniform(0.8, 1.2, 3)
    image = np.clip(gray[..., None] * tint, 0, 255).astype(np.uint8)
    return image, mask.astype(np.uint8)


def write_segmentation_folder(root: str | pathlib.Path, count: int = 12, size: tuple[int, int] = (96, 128),
                              seed: int = 0) -> list[str]:
    """``root/images/sample_XXX.png`` + ``root/masks/sample_XXX.png`` (0/255); returns the ids."""
    root = pathlib.Path(root)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    ids = []
    for i in range(count):
        h = int(size[0] * rng.uniform(0.8, 1.2))
        w = int(size[1] * rng.uniform(0.8, 1.2))
        image, mask = segmentation_pair(rng, h, w)
        name = f"sample_{i:03d}"
        Image.fromarray(image).save(root / "images" / f"{name}.png")
        Image.fromarray(mask * 255).save(root / "masks" / f"{name}.png")
        ids.append(name)
    return ids


SHAPES = ("disc", "square", "triangle", "ring", "cross")


def shape_image(rng: np.random.Generator, shape: str, height: int, width: int) -> np.ndarray:
    """RGB uint8 photo-like image of one ``shape`` on a textured background."""
    yy, xx = np.mgrid[0:height, 0:width]
    cy, cx = height * rng.uniform(0.4, 0.6), width * rng.uniform(0.4, 0.6)
    r = min(height, width) * rng.uniform(0.25, 0.35)
    dy, dx = (yy - cy) / r, (xx - cx) / r
    inside = {
        "disc": dy ** 2 + dx ** 2 < 1,
        "square": (abs(dy) < 0.8) & (abs(dx) < 0.8),
        "triangle": (dy < 0.8) & (dy > -0.9 + 1.7 * abs(dx)),
        "ring": (dy ** 2 + dx ** 2 < 1) & (dy ** 2 + dx ** 2 > 0.4),
        "cross": ((abs(dy) < 0.25) | (abs(dx) < 0.25)) & (abs(dy) < 1) & (abs(dx) < 1),
    }[shape]
    background = 90 + _texture(rng, height, width, 25) + rng.normal(0, 10, (height, width))
    gray = np.where(inside, 200 + rng.normal(0, 10, (height, width)), background)
    color = rng.uniform(0.7, 1.3, 3)
    return np.clip(gray[..., None] * color, 0, 255).astype(np.uint8)


def write_classification_folder(root: str | pathlib.Path, classes: tuple[str, ...] = ("disc", "square", "triangle"),
                                per_class: int = 20, seed: int = 0) -> dict[str, int]:
    """``root/<class>/img_XXX.jpg`` at mixed sizes, one shape per class."""
    root = pathlib.Path(root)
    rng = np.random.default_rng(seed)
    for index, name in enumerate(classes):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            h, w = int(rng.integers(48, 120)), int(rng.integers(48, 120))
            image = shape_image(rng, SHAPES[index % len(SHAPES)], h, w)
            Image.fromarray(image).save(root / name / f"img_{i:03d}.jpg", quality=92)
    return {name: per_class for name in classes}
