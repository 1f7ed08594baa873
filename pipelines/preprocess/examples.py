"""The pure per-source work of preprocessing: decode a source, cut its tiles, augment, describe.

The shard writer calls these for every source of its shard; nothing here knows Beam.
"""
from __future__ import annotations

import dataclasses
import json
from typing import Iterator

import numpy as np

from pipelines.beam import files
from pipelines.core import images, masks, pixels, sources, tiling
from pipelines.preprocess import static_augment
from schemas.example import IGNORE_LABEL, DatasetSpec, example_id
from schemas.rejected import RejectedInput, rejected_record


def decode_source(source: sources.Source, image_policy: images.ImagePolicy, mask_policy: masks.MaskPolicy | None,
                  root: str | None = None, follow_symlinks: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
    """(image (H,W,C), mask (H,W) or None); raises RejectedInput with the reason. Files are read
    only once sized (``files.read_input``); symlinks leading out of ``root`` are refused."""
    def read(path: str, max_pixels: int) -> bytes:
        return files.read_input(path, files.file_bytes_limit(max_pixels), root, follow_symlinks,
                                images.looks_like_image, images.HEADER_BYTES)

    try:
        image = images.read_image(read(source.image_path, image_policy.max_pixels), source.image_path, image_policy)
        mask = None
        if source.mask_path:
            mask_pixels = (mask_policy or masks.MaskPolicy()).max_pixels
            mask = images.read_mask(read(source.mask_path, mask_pixels), source.mask_path, mask_policy)
            images.check_pair(image, mask, source.id)
    except OSError as error:  # includes Beam's BeamIOError: the file could not be read at all
        raise RejectedInput("unreadable", str(error)) from error
    return image, mask


def rejected_source(source: sources.Source, error: RejectedInput) -> dict:
    files = [source.image_path] + ([source.mask_path] if source.mask_path else [])
    return rejected_record(" + ".join(files), error.reason, error.detail, files)


@dataclasses.dataclass(frozen=True)
class TileSettings:
    spec: DatasetSpec
    augment_copies: int = 0
    augment_config: static_augment.StaticAugmentConfig = static_augment.StaticAugmentConfig()
    fit: str = "resize"           # whole-image classification: resize | pad | crop
    input_root: str = ""          # symlinks are followed only to files below it...
    follow_symlinks: bool = False  # ...unless this is set


def tile_examples(source: sources.Source, image: np.ndarray, mask: np.ndarray | None,
                  settings: TileSettings) -> Iterator[dict]:
    """Every example of one decoded source: copy 0 of each tile, plus augmented copies in train."""
    spec = settings.spec
    height, width = image.shape[:2]
    if spec.whole_image:
        boxes = [(0, 0, height, width)]
        cut = lambda box: (pixels.fit_to_size(image, spec.core, settings.fit), None)  # noqa: E731
    else:
        boxes = tiling.core_grid(height, width, spec.core)
        cut = lambda box: (  # noqa: E731
            tiling.cut_tile(image, box[0], box[1], spec.core, spec.margin),
            None if mask is None else tiling.cut_mask_tile(mask[..., None], box[0], box[1], spec.core, spec.margin))
    copies = settings.augment_copies if source.split == "train" else 0
    for box in boxes:
        tile, mask_tile = cut(box)
        for copy in range(copies + 1):
            out_image, out_mask, params = static_augment.augment(
                tile, mask_tile, source.id, box[0], box[1], copy, settings.augment_config)
            example = {
                "image": out_image, "id": example_id(source.id, box[0], box[1], copy),
                "source_id": source.id, "core_y": box[0], "core_x": box[1], "core_h": box[2], "core_w": box[3],
                "margin": 0 if spec.whole_image else spec.margin, "source_h": height, "source_w": width,
                "copy": copy, "augmentation": json.dumps(params, sort_keys=True),
                "split": source.split, "image_path": source.image_path, "mask_path": source.mask_path or "",
            }
            if out_mask is not None:
                labelled = out_mask[out_mask != IGNORE_LABEL]
                example["mask"] = out_mask
                example["fg_fraction"] = float(np.mean(labelled != 0)) if labelled.size else 0.0
            else:
                example["label"] = source.label
                example["fg_fraction"] = 0.0
            yield example


def class_pixels(mask: np.ndarray, num_classes: int) -> list[int]:
    """Labelled pixels per class of a whole source mask (each pixel counted once)."""
    labelled = mask[mask != IGNORE_LABEL]
    return np.bincount(labelled.ravel(), minlength=num_classes)[:num_classes].tolist()


def source_stats(source: sources.Source, mask: np.ndarray | None, spec: DatasetSpec) -> dict:
    return {"split": source.split, "label": source.label,
            "class_pixels": None if mask is None else class_pixels(mask, spec.num_classes)}
