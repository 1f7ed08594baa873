"""Decisions from scores: class ids per pixel (or image), and the score of the decided class.

Scores are (..., K) probabilities, or vote shares for a voting ensemble.
"""
from __future__ import annotations

import numpy as np


def decide(scores: np.ndarray, threshold: float | None) -> np.ndarray:
    """Class ids (uint8) from scores (..., K): P(class 1) >= threshold for binary, else argmax
    (ties go to the lower class id)."""
    if threshold is not None and scores.shape[-1] == 2:
        return (scores[..., 1] >= threshold).astype(np.uint8)
    if scores.shape[-1] > 32:
        return np.argmax(scores, axis=-1).astype(np.uint8)
    best, ids = scores[..., 0].copy(), np.zeros(scores.shape[:-1], np.uint8)
    for c in range(1, scores.shape[-1]):  # a loop over K beats argmax over a short last axis
        better = scores[..., c] > best
        ids[better] = c
        np.maximum(best, scores[..., c], out=best)
    return ids


def chosen(scores: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """scores[..., ids]: the score of the decided class at every position."""
    out = scores[..., 0].copy()
    for c in range(1, scores.shape[-1]):
        np.copyto(out, scores[..., c], where=ids == c)
    return out


def one_hot(ids: np.ndarray, classes: int) -> np.ndarray:
    return (ids[..., None] == np.arange(classes, dtype=ids.dtype)).astype(np.float32)
