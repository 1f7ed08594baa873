"""Static (offline, expensive, deterministic) augmentation of tiles as pure numpy.

Each augmented copy is seeded from (source id, core origin, copy) with a stable hash, so a
rerun writes byte-identical tiles. A transform is a JSON-serialisable dict of parameters
(:func:`sample_transform`), applied by :func:`apply_transform`; the record alone reproduces it.

Geometry (applied identically to image and mask, in one resampling): an elastic deformation
as in the U-Net paper (random displacements on a coarse grid, upsampled bicubically to a
dense field) combined with a small rotation about the tile centre, then an exact rot90/flip.
The image is interpolated linearly; the mask by nearest neighbour, so it keeps only its own
values (class ids and 255 = ignore). Intensity changes touch the image only.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
from typing import Any

import numpy as np
from scipy import ndimage


@dataclasses.dataclass(frozen=True)
class StaticAugmentConfig:
    elastic: bool = True
    elastic_grid: int = 3          # coarse grid points per side (U-Net: 3 x 3)
    elastic_sigma: float = 10.0    # std of the coarse displacements, pixels
    rotate90: bool = True          # random multiple of 90 degrees
    flip: bool = True              # random left-right flip (with rotate90: all 8 symmetries)
    max_rotation: float = 15.0     # small rotation, uniform in +-degrees; 0 disables
    brightness: float = 0.1        # additive shift, uniform in +-fraction of the dtype max
    contrast: float = 0.2          # factor about the channel mean, uniform in 1 +- contrast
    gamma: float = 0.2             # exponent, uniform in 1 +- gamma
    noise: float = 0.02            # Gaussian noise std, fraction of the dtype max

    def __post_init__(self) -> None:
        if self.elastic_grid < 2:
            raise ValueError(f"elastic_grid must be >= 2, got {self.elastic_grid}")
        for name in ("elastic_sigma", "max_rotation", "brightness", "contrast", "noise"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not 0 <= self.gamma < 1:
            raise ValueError(f"gamma must be in [0, 1), got {self.gamma}")


def seed_for(source_id: str, core_y: int, core_x: int, copy: int) -> int:
    """A stable 64-bit seed for one augmented copy of one tile (same on every machine and run)."""
    key = f"{source_id}\x00{int(core_y)}\x00{int(core_x)}\x00{int(copy)}".encode("utf-8")
    return int.from_bytes(hashlib.sha256(key).digest()[:8], "big")


def sample_transform(rng: np.random.Generator, config: StaticAugmentConfig) -> dict[str, Any]:
    """Random transform parameters as plain JSON types; an empty dict is the identity."""
    params: dict[str, Any] = {}
    if config.elastic and config.elastic_sigma > 0:
        grid = rng.normal(0.0, config.elastic_sigma, size=(2, config.elastic_grid, config.elastic_grid))
        params["elastic"] = grid.tolist()  # (dy, dx) displacement grids, pixels
    if config.max_rotation > 0:
        params["angle"] = float(rng.uniform(-config.max_rotation, config.max_rotation))
    if config.rotate90:
        params["rot90"] = int(rng.integers(0, 4))
    if config.flip:
        params["flip"] = bool(rng.integers(0, 2))
    if config.contrast > 0:
        params["contrast"] = float(rng.uniform(1 - config.contrast, 1 + config.contrast))
    if config.brightness > 0:
        params["brightness"] = float(rng.uniform(-config.brightness, config.brightness))
    if config.gamma > 0:
        params["gamma"] = float(rng.uniform(1 - config.gamma, 1 + config.gamma))
    if config.noise > 0:
        params["noise_std"] = float(config.noise)
        params["noise_seed"] = int(rng.integers(0, 2**63))
    return params


def _source_coordinates(shape: tuple[int, int], params: dict[str, Any]) -> np.ndarray | None:
    """(2, H, W) source coordinates of every output pixel, or None for the identity."""
    angle = float(params.get("angle", 0.0))
    elastic = params.get("elastic")
    if angle == 0.0 and elastic is None:
        return None
    h, w = shape
    yy, xx = np.meshgrid(np.arange(h, dtype=np.float64), np.arange(w, dtype=np.float64), indexing="ij")
    cy, cx = (h - 1) / 2, (w - 1) / 2
    theta = np.deg2rad(angle)
    cos, sin = np.cos(theta), np.sin(theta)
    coords = np.stack([
        cy + cos * (yy - cy) - sin * (xx - cx),
        cx + sin * (yy - cy) + cos * (xx - cx),
    ])
    if elastic is not None:
        grid = np.asarray(elastic, dtype=np.float64)
        if grid.ndim != 3 or grid.shape[0] != 2:
            raise ValueError(f"elastic grid must have shape (2, g, g), got {grid.shape}")
        rows, cols = _upsampling_matrix(grid.shape[1], h), _upsampling_matrix(grid.shape[2], w)
        for axis in range(2):  # bicubic, corner-aligned: grid points span the whole tile
            coords[axis] += rows @ grid[axis] @ cols.T
    return coords


@functools.lru_cache(maxsize=64)
def _upsampling_matrix(points: int, size: int) -> np.ndarray:
    """(size, points) weights of corner-aligned cubic-spline upsampling along one axis.

    Spline zooming is linear and separable, so zooming the identity once gives the matrix
    that upsamples any grid: ``rows @ grid @ cols.T`` equals the 2-D zoom, at a fraction
    of its cost.
    """
    eye = np.eye(points, dtype=np.float64)
    return ndimage.zoom(eye, (size / points, 1), order=3, mode="mirror", grid_mode=False)[:size]


def _resample(array: np.ndarray, coords: np.ndarray, order: int) -> np.ndarray:
    channels = [
        ndimage.map_coordinates(array[..., c], coords, order=order, mode="reflect")
        for c in range(array.shape[-1])
    ]
    return np.stack(channels, axis=-1)


def _dihedral(array: np.ndarray, params: dict[str, Any]) -> np.ndarray:
    array = np.rot90(array, k=int(params.get("rot90", 0)), axes=(0, 1))
    if params.get("flip", False):
        array = np.flip(array, axis=1)
    return np.ascontiguousarray(array)


def _intensity(image: np.ndarray, params: dict[str, Any]) -> np.ndarray:
    """Contrast, brightness, gamma and noise on an image scaled to [0, 1] (float64)."""
    if "contrast" in params:
        mean = image.mean(axis=(0, 1), keepdims=True)
        image = (image - mean) * params["contrast"] + mean
    image = image + params.get("brightness", 0.0)
    if "gamma" in params:
        image = np.clip(image, 0.0, 1.0) ** params["gamma"]
    if params.get("noise_std", 0.0) > 0:
        noise = np.random.default_rng(int(params["noise_seed"])).normal(0.0, params["noise_std"], image.shape)
        image = image + noise
    return image


def apply_transform(
    image: np.ndarray, mask: np.ndarray | None, params: dict[str, Any]
) -> tuple[np.ndarray, np.ndarray | None]:
    """Apply ``params`` to an (H, W, C) uint8/uint16 image and its (H, W, 1) uint8 mask (or None)."""
    if image.ndim != 3 or image.dtype not in (np.uint8, np.uint16):
        raise ValueError(f"image must be (H, W, C) uint8 or uint16, got {image.shape} {image.dtype}")
    if mask is not None and (mask.shape != image.shape[:2] + (1,) or mask.dtype != np.uint8):
        raise ValueError(f"mask must be {image.shape[:2] + (1,)} uint8, got {mask.shape} {mask.dtype}")
    if int(params.get("rot90", 0)) % 2 and image.shape[0] != image.shape[1]:
        raise ValueError(f"an odd rot90 needs a square tile, got {image.shape[:2]}")
    top = float(np.iinfo(image.dtype).max)
    scaled = image.astype(np.float64) / top
    coords = _source_coordinates(image.shape[:2], params)
    if coords is not None:
        scaled = _resample(scaled, coords, order=1)
    scaled = _intensity(_dihedral(scaled, params), params)
    out = np.clip(np.rint(scaled * top), 0, top).astype(image.dtype)
    return out, None if mask is None else move_labels(mask, params)


def move_labels(labels: np.ndarray, params: dict[str, Any]) -> np.ndarray:
    """The geometric part of ``params`` on an (H, W, 1) label array of any integer type (class
    or instance ids): nearest-neighbour, so every id stays an id; what moves the mask."""
    coords = _source_coordinates(labels.shape[:2], params)
    if coords is not None:
        labels = _resample(labels, coords, order=0)
    return _dihedral(labels, params)


def move_map(values: np.ndarray, params: dict[str, Any]) -> np.ndarray:
    """The geometric part of ``params`` on an (H, W, 1) uint8 map of a continuous quantity
    (the border weights): interpolated linearly, as the image is."""
    coords = _source_coordinates(values.shape[:2], params)
    if coords is not None:
        values = np.clip(np.rint(_resample(values.astype(np.float64), coords, order=1)), 0, 255).astype(np.uint8)
    return _dihedral(values, params)


def augment(
    image: np.ndarray,
    mask: np.ndarray | None,
    source_id: str,
    core_y: int,
    core_x: int,
    copy: int,
    config: StaticAugmentConfig,
) -> tuple[np.ndarray, np.ndarray | None, dict[str, Any]]:
    """The ``copy``-th augmented version of a tile; same inputs give byte-identical outputs.

    Copy 0 is the original: returned unchanged with params ``{}`` (see the example schema).
    """
    if copy < 0:
        raise ValueError(f"copy must be >= 0, got {copy}")
    if copy == 0:
        return image, mask, {}
    params = sample_transform(np.random.default_rng(seed_for(source_id, core_y, core_x, copy)), config)
    out_image, out_mask = apply_transform(image, mask, params)
    return out_image, out_mask, params
