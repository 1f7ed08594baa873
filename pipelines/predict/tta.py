"""Test-time augmentation: the dihedral transforms of square tiles and their exact inverses.

A transform is an index ``k`` in 0..7 of the dihedral group of the square: ``k % 4``
quarter turns (``np.rot90``, counter-clockwise) after a left-right mirror when ``k >= 4``.
Arrays are batches ``(N, H, W, ...)``; only axes 1 and 2 move, so the same call serves
uint8 tiles and float predictions. Every transform is a pure permutation of pixels, so
``invert(apply(x, k), k) == x`` exactly.

Modes: ``none`` = [identity]; ``flips`` = identity + left-right mirror (2 passes);
``dihedral`` = all 8 (rotations by 0/90/180/270 degrees, each with and without mirror).
"""
from __future__ import annotations

import numpy as np

TTA_MODES: dict[str, tuple[int, ...]] = {
    "none": (0,),
    "flips": (0, 4),
    "dihedral": tuple(range(8)),
}


def transforms(mode: str) -> tuple[int, ...]:
    if mode not in TTA_MODES:
        raise ValueError(f"tta must be one of {tuple(TTA_MODES)}, got {mode!r}")
    return TTA_MODES[mode]


def apply(batch: np.ndarray, k: int) -> np.ndarray:
    """Transform ``k`` of a batch (N, H, W, ...): mirror left-right if k >= 4, then k % 4 quarter turns."""
    if not 0 <= k < 8:
        raise ValueError(f"dihedral transform index must be in 0..7, got {k}")
    out = batch[:, :, ::-1] if k >= 4 else batch
    return np.rot90(out, k % 4, axes=(1, 2))


def invert(batch: np.ndarray, k: int) -> np.ndarray:
    """The inverse of :func:`apply` (undo the turns, then the mirror)."""
    if not 0 <= k < 8:
        raise ValueError(f"dihedral transform index must be in 0..7, got {k}")
    out = np.rot90(batch, -(k % 4), axes=(1, 2))
    return out[:, :, ::-1] if k >= 4 else out


def augmented_mean(batch: np.ndarray, k_list, predict, spatial: bool) -> np.ndarray:
    """Mean over ``k_list`` of predict(apply(batch, k)), inverted when the output is spatial.

    ``predict`` maps a (N, T, T, C) batch to (N, O, O, K) (``spatial``) or (N, K).
    """
    total = None
    for k in k_list:
        out = np.asarray(predict(np.ascontiguousarray(apply(batch, k))), dtype=np.float32)
        if spatial:
            out = invert(out, k)
        total = out.copy() if total is None else total + out
    return total / np.float32(len(k_list))
