"""The pure per-source work of preprocessing: decode a source, cut its tiles, keep or drop
each, augment, describe.

The shard writer calls these for every source (or block of a large source) of its shard;
nothing here knows Beam.
"""
from __future__ import annotations

import dataclasses
import json
from collections import Counter
from collections.abc import Callable, Iterator

import numpy as np

from pipelines.beam import files
from pipelines.core import images, masks, pixels, sources, targets, tiling, weight_map
from pipelines.preprocess import static_augment
from schemas.example import IGNORE_LABEL, DatasetSpec, example_id
from schemas.rejected import RejectedInput, rejected_record

TILE_COUNTS = ("tiles", "kept", "dropped_blank", "dropped_background")


def decode_source(source: sources.Source, image_policy: images.ImagePolicy, mask_policy: masks.MaskPolicy | None,
                  root: str | None = None, follow_symlinks: bool = False, ranges: list | None = None
                  ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """(image (H,W,C), mask (H,W) class ids or None, instance ids (H,W) or None); raises
    RejectedInput with the reason. Files are read only once sized (``files.read_input``);
    symlinks leading out of ``root`` are refused."""
    def read(path: str, max_pixels: int) -> bytes:
        return files.read_input(path, files.file_bytes_limit(max_pixels), root, follow_symlinks,
                                images.looks_like_image, images.HEADER_BYTES)

    try:
        image = images.read_image(read(source.image_path, image_policy.max_pixels), source.image_path, image_policy,
                                  ranges)
        mask = instances = None
        if source.mask_path:
            policy = mask_policy or masks.MaskPolicy()
            data = read(source.mask_path, policy.max_pixels)
            if policy.mode == "instances":
                instances = instance_ids(images.read_mask_values(data, source.mask_path, policy), source.mask_path)
                mask = masks.class_ids(instances, policy, source.mask_path)
            else:
                mask = images.read_mask(data, source.mask_path, policy)
            images.check_pair(image, mask, source.id)
    except OSError as error:  # includes Beam's BeamIOError: the file could not be read at all
        raise RejectedInput("unreadable", str(error)) from error
    return image, mask, instances


def instance_ids(raw: np.ndarray, name: str) -> np.ndarray:
    """An instance mask's values as uint32 ids, or RejectedInput (not integers, beyond uint32)."""
    try:
        return targets.check_instances(raw, name)
    except ValueError as error:
        raise RejectedInput("mask_values", str(error)) from None


def rejected_source(source: sources.Source, error: RejectedInput, **context) -> dict:
    files = [source.image_path] + ([source.mask_path] if source.mask_path else [])
    return rejected_record(" + ".join(files), error.reason, error.detail, files, **context)


@dataclasses.dataclass(frozen=True)
class TileFilter:
    """Which tiles to keep. ``min_foreground``: at least this fraction of the core's labelled
    pixels is not background; of the other tiles a ``background_fraction`` share is kept
    anyway (chosen by a stable hash of the tile). ``skip_blank``: drop cores that are empty
    glass or padding (``pixels.is_blank``)."""

    min_foreground: float = 0.0
    background_fraction: float = 0.0
    skip_blank: bool = False

    def drop_reason(self, source_id: str, y: int, x: int, core: np.ndarray, mask_core: np.ndarray | None):
        if self.skip_blank and pixels.is_blank(core):
            return "dropped_blank"
        if self.min_foreground > 0 and mask_core is not None and foreground(mask_core) < self.min_foreground \
                and sources.hash_fraction(f"background:{source_id}:{y}:{x}") >= self.background_fraction:
            return "dropped_background"
        return None


def foreground(mask: np.ndarray) -> float:
    """The fraction of labelled (non-ignore) pixels that are not background (0 when none are)."""
    labelled = mask[mask != IGNORE_LABEL]
    return float(np.mean(labelled != 0)) if labelled.size else 0.0


@dataclasses.dataclass(frozen=True)
class TileSettings:
    spec: DatasetSpec
    augment_copies: int = 0
    augment_config: static_augment.StaticAugmentConfig = static_augment.StaticAugmentConfig()
    fit: str = "resize"           # whole-image classification: resize | pad | crop
    input_root: str = ""          # symlinks are followed only to files below it...
    follow_symlinks: bool = False  # ...unless this is set
    keep: TileFilter = TileFilter()


Cut = Callable[[tiling.Box], tuple[np.ndarray, np.ndarray | None, np.ndarray | None]]


def tile_examples(source: sources.Source, image: np.ndarray, mask: np.ndarray | None, settings: TileSettings,
                  counts: Counter | None = None, instances: np.ndarray | None = None) -> Iterator[dict]:
    """Every kept example of one decoded source: copy 0 of each tile, plus augmented copies in
    train. ``counts`` receives the tiles seen, kept and dropped (by reason) and the class
    pixels of kept cores."""
    spec = settings.spec
    height, width = image.shape[:2]
    if spec.whole_image:
        def cut(box):
            return pixels.fit_to_size(image, spec.core, settings.fit), None, None
        boxes = [(0, 0, height, width)]
    else:
        def cut(box):
            y, x = box[0], box[1]
            return (tiling.cut_tile(image, y, x, spec.core, spec.margin),
                    None if mask is None else tiling.cut_mask_tile(mask[..., None], y, x, spec.core, spec.margin),
                    None if instances is None else tiling.cut_mask_tile(instances[..., None], y, x, spec.core,
                                                                        spec.margin, ignore=0))
        boxes = tiling.core_grid(height, width, spec.core)
    extra = {"source_level": 0, "pixel_size_um": source.pixel_size_um}
    return cut_examples(source, boxes, cut, (height, width), settings, Counter() if counts is None else counts,
                        extra)


def cut_examples(source: sources.Source, boxes: list[tiling.Box], cut: Cut, shape: tuple[int, int],
                 settings: TileSettings, counts: Counter, extra: dict | None = None) -> Iterator[dict]:
    """The examples of ``boxes`` of one source, ``cut(box)`` giving (tile, mask tile, instance
    tile); whole sources and blocks of large ones alike (``extra``: manifest fields)."""
    spec = settings.spec
    margin = 0 if spec.whole_image else spec.margin
    copies = settings.augment_copies if source.split == "train" else 0
    for box in boxes:
        counts["tiles"] += 1
        tile, mask_tile, instance_tile = cut(box)
        core = (slice(margin, margin + box[2]), slice(margin, margin + box[3])) if not spec.whole_image else \
            (slice(None), slice(None))
        dropped = settings.keep.drop_reason(source.id, box[0], box[1], tile[core],
                                            None if mask_tile is None else mask_tile[core])
        if dropped:
            counts[dropped] += 1
            continue
        counts["kept"] += 1
        boundary = spec.target == "boundary" and mask_tile is not None
        if boundary and instance_tile is None:   # the tile's objects, before static augmentation moves them
            instance_tile = targets.objects_of_mask(mask_tile[..., 0], IGNORE_LABEL)[..., None]
        first_target = boundary_target(instance_tile, mask_tile, spec) if boundary else mask_tile
        if mask_tile is not None:
            counts.update({f"class_{c}": int(n) for c, n in enumerate(
                class_pixels(first_target[core], spec.num_classes)) if n})
        weights = None
        if spec.weight_map != "none" and mask_tile is not None:
            weights = weight_map.tile_weights(mask_tile, instance_tile, spec.weight_map_sigma, IGNORE_LABEL)
        for copy in range(copies + 1):
            out_image, out_mask, params = static_augment.augment(
                tile, mask_tile, source.id, box[0], box[1], copy, settings.augment_config)
            example = {
                "image": out_image, "id": example_id(source.id, box[0], box[1], copy),
                "source_id": source.id, "core_y": box[0], "core_x": box[1], "core_h": box[2], "core_w": box[3],
                "margin": margin, "source_h": shape[0], "source_w": shape[1],
                "copy": copy, "augmentation": json.dumps(params, sort_keys=True),
                "split": source.split, "image_path": source.image_path, "mask_path": source.mask_path or "",
                **(extra or {}),
            }
            moved = None
            if instance_tile is not None:
                moved = instance_tile if copy == 0 else static_augment.move_labels(instance_tile, params)
            if boundary:
                if spec.distance == "boundary":
                    distance = targets.distance_to_boundary(moved[..., 0], out_mask[..., 0] == IGNORE_LABEL)
                    example["distance"] = targets.encode_distance(distance, spec.distance_max)
                out_mask = first_target if copy == 0 else boundary_target(moved, out_mask, spec)
            if out_mask is not None:
                example["mask"] = out_mask
                example["fg_fraction"] = foreground(out_mask)
            else:
                example["label"] = source.label
                example["fg_fraction"] = 0.0
            if weights is not None:
                example["weight"] = weights if copy == 0 else static_augment.move_map(weights, params)
            if moved is not None:
                example["instances"] = moved
                example["objects"] = int(np.count_nonzero(np.unique(moved[core])))
            yield example


def boundary_target(instance_tile: np.ndarray, mask_tile: np.ndarray, spec: DatasetSpec) -> np.ndarray:
    """The (T, T, 1) boundary target of a tile's (moved) objects; the mask's ignore stays ignore."""
    return targets.boundary_target(instance_tile[..., 0], spec.border_thickness,
                                   mask_tile[..., 0] == IGNORE_LABEL)[..., None]


def class_pixels(mask: np.ndarray, num_classes: int) -> list[int]:
    """Labelled pixels per class of a mask (ignore pixels not counted)."""
    labelled = mask[mask != IGNORE_LABEL]
    return np.bincount(labelled.ravel(), minlength=num_classes)[:num_classes].tolist()


def unit_stats(source: sources.Source, counts: Counter, spec: DatasetSpec, **context) -> dict:
    """What one source (or one block of a large source) adds to the dataset's statistics."""
    has_mask = bool(source.mask_path)
    return {"split": source.split, "label": source.label, "source_id": source.id,
            "class_pixels": [int(counts[f"class_{c}"]) for c in range(spec.num_classes)] if has_mask else None,
            **{k: int(counts[k]) for k in (*TILE_COUNTS, "rejected_tiles")}, **context}
