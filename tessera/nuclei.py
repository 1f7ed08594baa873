"""A nuclei-like blob dataset with instance masks, for the instance benchmark and tests.

Fluorescence-style grayscale images: a dark, uneven background and bright elliptical
nuclei of varied size, brightness and texture, many of them in clusters that touch (and
overlap a little: the later nucleus covers the earlier one, as in a projection), blurred
by an optical point spread and with shot and read noise. The masks hold an id per nucleus
(uint16, 0 background), the way nuclei annotations (DSB 2018, StarDist's data) are shipped.
Everything is seeded and deterministic.
"""
from __future__ import annotations

import pathlib

import numpy as np
from PIL import Image
from scipy import ndimage


def nuclei_pair(rng: np.random.Generator, height: int = 256, width: int = 256, clusters: int = 6,
                per_cluster: tuple[int, int] = (2, 6), radius: tuple[float, float] = (7.0, 14.0)
                ) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 image, uint16 instance ids) of touching nuclei in ``clusters`` groups."""
    yy, xx = np.mgrid[0:height, 0:width]
    labels = np.zeros((height, width), np.uint16)
    brightness = np.zeros((height, width), np.float32)
    next_id = 1
    for _ in range(clusters):
        cy, cx = rng.uniform(0, height), rng.uniform(0, width)
        for _ in range(int(rng.integers(per_cluster[0], per_cluster[1] + 1))):
            a = rng.uniform(*radius)
            b = a * rng.uniform(0.6, 1.0)
            theta = rng.uniform(0, np.pi)
            dy, dx = yy - cy, xx - cx
            u = dx * np.cos(theta) + dy * np.sin(theta)
            v = -dx * np.sin(theta) + dy * np.cos(theta)
            inside = (u / a) ** 2 + (v / b) ** 2 < 1.0
            if inside.sum() < 20:
                continue
            labels[inside] = next_id
            brightness[inside] = rng.uniform(0.45, 1.0) * (1 + 0.15 * np.sin(u[inside] / 2.5 + rng.uniform(0, 6)))
            next_id += 1
            step = rng.uniform(1.5, 1.9) * a          # the next nucleus of the cluster touches this one
            angle = rng.uniform(0, 2 * np.pi)
            cy, cx = cy + step * np.sin(angle), cx + step * np.cos(angle)
    labels = _renumbered_visible(labels)
    background = 0.08 + 0.05 * np.sin(yy / 37.0 + rng.uniform(0, 6)) * np.cos(xx / 53.0)
    signal = ndimage.gaussian_filter(brightness + background.astype(np.float32), 1.2)
    counts = rng.poisson(np.clip(signal, 0, None) * 120.0) + rng.normal(0, 3.0, signal.shape)
    image = np.clip(counts * (255.0 / 140.0), 0, 255).astype(np.uint8)
    return image, labels


def _renumbered_visible(labels: np.ndarray) -> np.ndarray:
    """Ids 1..n of the nuclei still visible (a covered one is gone; a split one keeps its largest
    part: an annotator draws one outline per nucleus)."""
    out = np.zeros_like(labels)
    next_id = 1
    for value in np.unique(labels[labels > 0]):
        parts, n = ndimage.label(labels == value)
        if n == 0:
            continue
        sizes = np.bincount(parts.ravel())[1:]
        keep = parts == (1 + int(np.argmax(sizes)))
        if keep.sum() >= 20:
            out[keep] = next_id
            next_id += 1
    return out


def write_nuclei_folder(root: str | pathlib.Path, count: int = 24, size: tuple[int, int] = (256, 256),
                        seed: int = 0, prefix: str = "nuclei") -> list[str]:
    """``root/images/<prefix>_XXX.png`` + ``root/masks/<prefix>_XXX.png`` (uint16 ids); the ids."""
    root = pathlib.Path(root)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    ids = []
    for i in range(count):
        image, labels = nuclei_pair(rng, *size)
        name = f"{prefix}_{i:03d}"
        Image.fromarray(image).save(root / "images" / f"{name}.png")
        Image.fromarray(labels).save(root / "masks" / f"{name}.png")
        ids.append(name)
    return ids
