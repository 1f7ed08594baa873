"""Small synthetic datasets in the exact format ``tessera preprocess`` writes (for tests and bench).

Segmentation: bright discs (class 1) and, with three classes, bright squares (class 2) on
smoothed noise, with a few ignored (255) patches. Classification: one shape per class
(disc, square, cross) on noise. Both are learnable by a tiny network in seconds, honestly:
the classes differ in shape, not in a leaked constant.
"""
from __future__ import annotations

import hashlib
import json
import os

import numpy as np

from schemas import layout
from schemas.example import (
    CLASSIFICATION,
    IGNORE_LABEL,
    PROVENANCE_FIELDS,
    SEGMENTATION,
    DatasetSpec,
    example_id,
    tfds_features,
)


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    noise = rng.normal(0.0, 1.0, (size + 2, size + 2))
    smooth = sum(noise[dy:dy + size, dx:dx + size] for dy in range(3) for dx in range(3)) / 3.0
    return 80.0 + 18.0 * smooth


def segmentation_tile(rng: np.random.Generator, size: int, num_classes: int = 2,
                      ignore_patch: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """(image (size, size) float, mask (size, size) uint8) with 1-3 shapes."""
    image = _background(rng, size)
    mask = np.zeros((size, size), np.uint8)
    yy, xx = np.mgrid[:size, :size]
    for _ in range(int(rng.integers(1, 4))):
        cls = int(rng.integers(1, num_classes))
        r = float(rng.uniform(size * 0.08, size * 0.2))
        cy, cx = rng.uniform(0, size, 2)
        if cls == 1:
            inside = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
        else:
            inside = (np.abs(yy - cy) <= r) & (np.abs(xx - cx) <= r)
        image[inside] += 90.0
        mask[inside] = cls
    if ignore_patch and rng.random() < 0.3:
        y, x = rng.integers(0, size - 4, 2)
        mask[y:y + 4, x:x + 4] = IGNORE_LABEL
    return np.clip(image + rng.normal(0, 6, image.shape), 0, 255), mask


def classification_image(rng: np.random.Generator, size: int, label: int) -> np.ndarray:
    image = _background(rng, size)
    yy, xx = np.mgrid[:size, :size]
    r = float(rng.uniform(size * 0.18, size * 0.3))
    cy, cx = rng.uniform(size * 0.35, size * 0.65, 2)
    if label == 0:
        shape = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
    elif label == 1:
        shape = (np.abs(yy - cy) <= r) & (np.abs(xx - cx) <= r)
    else:
        shape = ((np.abs(yy - cy) <= r / 4) & (np.abs(xx - cx) <= r)) | ((np.abs(xx - cx) <= r / 4) & (np.abs(yy - cy) <= r))
    image[shape] += 90.0
    return np.clip(image + rng.normal(0, 6, image.shape), 0, 255)


def _as_channels(image: np.ndarray, channels: int) -> np.ndarray:
    image = np.round(image).astype(np.uint8)[..., None]
    return np.repeat(image, channels, axis=-1)


def _provenance(source_id: str, spec: DatasetSpec, fg_fraction: float) -> dict:
    values = {name: ("" if kind == "str" else 0) for name, kind in PROVENANCE_FIELDS.items()}
    values.update(id=example_id(source_id, 0, 0, 0), source_id=source_id, core_h=spec.core, core_w=spec.core,
                  margin=spec.margin, source_h=spec.tile_size, source_w=spec.tile_size,
                  augmentation="{}", fg_fraction=fg_fraction)
    return values


def write_dataset(path: str, spec: DatasetSpec, splits: dict[str, list[dict]], num_shards: int = 2,
                  fit: str | None = None) -> str:
    """Writes ``splits`` (split -> example dicts) as a TFDS-format Tessera dataset; returns path.
    An empty list writes a split of empty shards (what preprocess does when it rejected every
    source of the split); ``fit`` writes the preprocess ``config.json`` with that ``--fit``."""
    import tensorflow_datasets as tfds

    from pipelines.preprocess import example_proto

    os.makedirs(path, exist_ok=True)
    features = tfds_features(spec)
    split_infos, recorded = [], {}
    for split, examples in splits.items():
        shards = [examples[i::num_shards] for i in range(num_shards)]
        lengths, total = [], 0
        for index, shard in enumerate(shards):
            name = layout.shard_name(split, index, num_shards)
            with open(os.path.join(path, name), "wb") as handle:
                for example in shard:
                    handle.write(example_proto.tfrecord(features.serialize_example(example)))
            with open(os.path.join(path, name), "rb") as handle:
                data = handle.read()
            recorded[name] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest(), "examples": len(shard)}
            lengths.append(len(shard))
            total += len(data)
        split_infos.append(tfds.core.SplitInfo(name=split, shard_lengths=lengths, num_bytes=total))
    tfds.folder_dataset.write_metadata(
        data_dir=path, features=features, split_infos=split_infos, filename_template=layout.SHARD_TEMPLATE,
        check_data=False, description="tessera trainer test dataset")
    with open(os.path.join(path, layout.SPEC_FILE), "w") as handle:
        handle.write(spec.to_json())
    with open(os.path.join(path, layout.STATS_FILE), "w") as handle:
        json.dump(_stats(spec, splits), handle)
    if fit is not None:
        with open(os.path.join(path, layout.CONFIG_FILE), "w") as handle:
            json.dump({"preprocess": {"fit": fit}, "dataset": json.loads(spec.to_json())}, handle)
    fingerprint = layout.dataset_fingerprint({name: s["sha256"] for name, s in recorded.items()})
    with open(os.path.join(path, layout.SUCCESS_FILE), "w") as handle:
        json.dump({"sources_in": sum(map(len, splits.values())), "rejected": 0,
                   "examples": {s: len(e) for s, e in splits.items()}, "fingerprint": fingerprint,
                   "shards": recorded, "completed_at": "2026-11-22T00:00:00Z"}, handle)
    return path


def _stats(spec: DatasetSpec, splits: dict[str, list[dict]]) -> dict:
    stats = {"examples": {s: len(e) for s, e in splits.items()}, "sources": {s: len(e) for s, e in splits.items()},
             "rejected": {}}
    train = splits.get("train", [])
    if spec.task == SEGMENTATION:
        counts = np.zeros(spec.num_classes, np.int64)
        for example in train:
            counts += np.bincount(example["mask"].ravel(), minlength=256)[:spec.num_classes]
        stats["class_pixels"] = dict(zip(spec.class_names, map(int, counts)))
        stats["class_frequencies"] = dict(zip(spec.class_names, map(float, counts / max(1, counts.sum()))))
    else:
        counts = np.bincount([e["label"] for e in train], minlength=spec.num_classes)
        stats["labels"] = dict(zip(spec.class_names, map(int, counts)))
    return stats


def segmentation_dataset(path: str, n_train: int = 192, n_val: int = 48, n_test: int = 8, core: int = 24,
                         margin: int = 4, channels: int = 1, num_classes: int = 2, num_shards: int = 2,
                         seed: int = 0, empty_splits: tuple[str, ...] = (),
                         pixel_size_um: float | None = None, intensity: str = "fixed") -> DatasetSpec:
    """Discs (and squares); a split of 0 examples is left out unless named in ``empty_splits``."""
    names = ("background", "disc", "square")[:num_classes]
    spec = DatasetSpec(task=SEGMENTATION, core=core, margin=margin, channels=channels, class_names=names,
                       pixel_size_um=pixel_size_um, intensity=intensity)
    rng = np.random.default_rng(seed)
    splits = {}
    for split, n in (("train", n_train), ("val", n_val), ("test", n_test)):
        if not n and split not in empty_splits:
            continue
        examples = []
        for i in range(n):
            image, mask = segmentation_tile(rng, spec.tile_size, num_classes, ignore_patch=(split == "train"))
            labelled = mask[mask != IGNORE_LABEL]
            example = _provenance(f"{split}/img{i:04d}", spec, float(np.mean(labelled > 0)) if labelled.size else 0.0)
            example.update(image=_as_channels(image, channels), mask=mask[..., None])
            examples.append(example)
        splits[split] = examples
    write_dataset(path, spec, splits, num_shards)
    return spec


def classification_dataset(path: str, n_train: int = 240, n_val: int = 60, size: int = 32, channels: int = 1,
                           num_shards: int = 2, seed: int = 0, imbalance: tuple[int, ...] = (1, 1, 1),
                           static_copies: int = 0, fit: str | None = None) -> DatasetSpec:
    """Shapes per class; ``static_copies`` rotated copies (copy = 1..K) of every train image;
    ``fit``: the preprocess --fit recorded in config.json (None: no config.json)."""
    spec = DatasetSpec(task=CLASSIFICATION, core=size, margin=0, channels=channels,
                       class_names=("disc", "square", "cross"), whole_image=True)
    rng = np.random.default_rng(seed)
    weights = np.asarray(imbalance, float) / sum(imbalance)
    splits = {}
    for split, n in (("train", n_train), ("val", n_val)):
        examples = []
        for i in range(n):
            label = int(rng.choice(3, p=weights)) if split == "train" else i % 3
            source = f"{split}/{spec.class_names[label]}/img{i:04d}"
            image = classification_image(rng, size, label)
            for copy in range(1 + (static_copies if split == "train" else 0)):
                example = _provenance(source, spec, 0.0)
                example.update(image=_as_channels(np.rot90(image, copy), channels), label=label, copy=copy,
                               id=example_id(source, 0, 0, copy), augmentation=json.dumps({"rot90": copy}))
                examples.append(example)
        splits[split] = examples
    write_dataset(path, spec, splits, num_shards, fit)
    return spec
