"""tf.data input from a Tessera dataset directory (local or gs://, read through tf.io.gfile).

Training: the split's shards are shuffled per epoch (seeded), read with parallel
deterministic interleave, sharded per worker (by file when there are enough files, by
record otherwise), shuffled, decoded in parallel, batched per replica, augmented per batch
(vectorised; or later, in the training step) and prefetched. Every random choice derives
from (seed, epoch, position): a batch's augmentation from its first record's position, so
it depends on the per-replica batch size, and a resumed epoch (same replica count) skips
the batches already trained and sees exactly the rest.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from typing import Callable

import numpy as np
import tensorflow as tf

from schemas import layout, versions
from schemas.example import SEGMENTATION, DatasetSpec, tfds_features
from trainer.augment import augment_example_batch
from trainer.config import AugmentConfig

AUTOTUNE = tf.data.AUTOTUNE


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    path: str
    spec: DatasetSpec
    split_sizes: dict[str, int]
    split_files: dict[str, tuple[str, ...]]
    stats: dict
    fingerprint: str
    fit: str = "resize"          # classification: how preprocess fitted photos to the core (--fit)
    weight_map: bool = False     # segmentation targets carry the border weights as a second channel
    distance: bool = False       # segmentation targets carry the distance map as their last channel

    @property
    def normalization(self) -> dict[str, float]:
        """What the network sees: pixels * scale + offset, in [0, 1]."""
        return {"scale": 1.0 / float(np.iinfo(self.spec.dtype).max), "offset": 0.0}


def _read_json(path: str) -> dict:
    with tf.io.gfile.GFile(path) as handle:
        return json.load(handle)


def read_if_exists(path: str) -> bytes | None:
    if not tf.io.gfile.exists(path):
        return None
    with tf.io.gfile.GFile(path, "rb") as handle:
        return handle.read()


def resolve_dataset(path: str) -> str:
    """The version of the dataset at ``path`` to read (``schemas.versions``): resolved once, so
    a run keeps reading the version it started on while a newer one is published."""
    return versions.resolve(path, read_if_exists)


def open_dataset(path: str) -> DatasetInfo:
    """Reads the dataset's spec, stats, TFDS metadata and preprocess configuration (the
    ``--fit``, "resize" without one) from its current version; refuses an unfinished dataset."""
    import tensorflow_datasets as tfds

    path = resolve_dataset(path)
    success = f"{path}/{layout.SUCCESS_FILE}"
    if not tf.io.gfile.exists(success):
        raise NotADataset(not_a_dataset(path))
    with tf.io.gfile.GFile(f"{path}/{layout.SPEC_FILE}") as handle:
        spec = DatasetSpec.from_json(handle.read())
    stats_path = f"{path}/{layout.STATS_FILE}"
    stats = _read_json(stats_path) if tf.io.gfile.exists(stats_path) else {}
    splits = tfds.builder_from_directory(path).info.splits
    sizes = {name: int(splits[name].num_examples) for name in splits.keys()}
    files = {name: tuple(str(p) for p in splits[name].filepaths) for name in splits.keys()}
    config_path = f"{path}/{layout.CONFIG_FILE}"
    config = _read_json(config_path) if tf.io.gfile.exists(config_path) else {}
    return DatasetInfo(path, spec, sizes, files, stats, _read_json(success).get("fingerprint", ""),
                       config.get("preprocess", {}).get("fit", "resize"))


class NotADataset(FileNotFoundError):
    """``--data`` is no finished Tessera dataset (exit 2, with the remedy: run preprocess)."""


def not_a_dataset(path: str) -> str:
    """Why ``path`` (without _SUCCESS) cannot be trained on, and what to run."""
    success = layout.SUCCESS_FILE
    if not tf.io.gfile.exists(path):
        return (f"--data {path}: no such directory (so no {success}); create the dataset first with "
                f"`tessera preprocess --input RAW_FOLDER --output {path}`")
    if tf.io.gfile.exists(f"{path}/{layout.SPEC_FILE}"):
        return (f"--data {path}: preprocess did not finish this dataset (no {success}); rerun the "
                "`tessera preprocess` command that writes it")
    return (f"--data {path}: not a Tessera dataset (no {success}); for a folder of raw images (and masks) run "
            f"`tessera preprocess --input {path} --output DATASET` first and train with --data DATASET")


def with_weight_map(info: DatasetInfo, setting: str) -> DatasetInfo:
    """``--weight-map``: auto uses the dataset's border weights when it has them, unet
    requires them, none leaves them out."""
    has = info.spec.weight_map != "none"
    if setting == "unet" and not has:
        raise ValueError(f"--weight-map unet: {info.path} has no weight maps; preprocess it with --weight-map unet")
    return dataclasses.replace(info, weight_map=has and setting != "none")


class DistanceHeadRefused(ValueError):
    """``--distance-head on`` for a dataset without distance maps (exit 2, with the remedy)."""


def with_distance_head(info: DatasetInfo, setting: str) -> DatasetInfo:
    """``--distance-head``: auto reads the dataset's distance maps when it stores them, on
    requires them, off leaves them out."""
    has = info.spec.distance != "none"
    if setting == "on" and not has:
        raise DistanceHeadRefused(f"--distance-head on: {info.path} stores no distance maps; preprocess it with "
                                  "--target boundary --distance-map (or train with --distance-head auto|off)")
    return dataclasses.replace(info, distance=has and setting != "off")


class DatasetDamaged(ValueError):
    """The dataset on disk is not the one its ``_SUCCESS`` describes (exit 2: do not retry)."""


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with tf.io.gfile.GFile(path, "rb") as handle:
        while chunk := handle.read(1 << 24):
            digest.update(chunk)
    return digest.hexdigest()


def verify_dataset(info: DatasetInfo, digests: bool = False) -> None:
    """Checks the dataset's files against its ``_SUCCESS``: the same fingerprint as when the
    run opened it, every recorded shard present at its recorded size, no other shard file,
    and (``digests``) every shard's sha256. Raises DatasetDamaged naming the file."""
    success_path = f"{info.path}/{layout.SUCCESS_FILE}"
    if not tf.io.gfile.exists(success_path):
        raise DatasetDamaged(f"{success_path} is gone: the dataset was deleted or replaced during the run")
    success = _read_json(success_path)
    if success.get("fingerprint", "") != info.fingerprint:
        raise DatasetDamaged(f"{info.path} was replaced during the run (fingerprint {info.fingerprint[:12]} when "
                             f"the run started, {str(success.get('fingerprint'))[:12]} now)")
    recorded = success.get("shards")
    if recorded is None:  # written before _SUCCESS listed its shards: nothing to check them against
        return
    if layout.dataset_fingerprint({n: s["sha256"] for n, s in recorded.items()}) != info.fingerprint:
        raise DatasetDamaged(f"{success_path}: its shard list does not match its fingerprint")
    present = {os.path.basename(p): p for p in tf.io.gfile.glob(f"{info.path}/{layout.SHARD_GLOB}")}
    listed = {os.path.basename(f) for files in info.split_files.values() for f in files}
    for name in sorted(set(present) | listed):
        path = present.get(name, f"{info.path}/{name}")
        if name not in recorded:
            raise DatasetDamaged(f"{path}: a shard file that {layout.SUCCESS_FILE} does not list (foreign or left "
                                 "by another run); the dataset cannot be trusted")
    for name, shard in sorted(recorded.items()):
        path = f"{info.path}/{name}"
        if name not in present:
            raise DatasetDamaged(f"{path}: missing (listed in {layout.SUCCESS_FILE})")
        size = tf.io.gfile.stat(path).length
        if size != shard["bytes"]:
            raise DatasetDamaged(f"{path}: {size} bytes, but {layout.SUCCESS_FILE} says {shard['bytes']}: "
                                 "truncated, emptied or replaced")
        if digests and _sha256(path) != shard["sha256"]:
            raise DatasetDamaged(f"{path}: its content differs from what preprocess wrote (sha256)")


def locate_damage(info: DatasetInfo, error: tf.errors.DataLossError) -> DatasetDamaged:
    """The shard behind a DataLossError (TensorFlow's message does not name it)."""
    for files in info.split_files.values():
        for path in files:
            try:
                for _ in tf.data.TFRecordDataset(path):
                    pass
            except tf.errors.DataLossError as damaged:
                return DatasetDamaged(f"{path}: damaged ({damaged.message})")
    return DatasetDamaged(f"{info.path}: a shard is damaged ({error.message})")


def parse_fn(spec: DatasetSpec, weight_map: bool = False, distance: bool = False) -> Callable:
    """serialized tf.train.Example -> (image float32 [T, T, C] normalised, mask uint8 [T, T, 1] | label int32);
    with ``weight_map`` the mask gains a channel, the stored border term; with ``distance`` a
    last one, the stored distance map (uint8, 255 = ``spec.distance_max`` px)."""
    features = tfds_features(spec)
    target = "mask" if spec.task == SEGMENTATION else "label"
    info = features.get_serialized_info()
    names = ("image", target) + (("weight",) if weight_map else ()) + (("distance",) if distance else ())
    parse_spec = {name: tf.io.FixedLenFeature(info[name].shape, info[name].tf_dtype) for name in names}
    scale = 1.0 / float(np.iinfo(spec.dtype).max)

    def parse(serialized):
        parsed = tf.io.parse_single_example(serialized, parse_spec)
        image = tf.cast(features["image"].decode_example(parsed["image"]), tf.float32) * scale
        if target == "mask":
            mask = features["mask"].decode_example(parsed["mask"])
            extra = [features[name].decode_example(parsed[name]) for name in names[2:]]
            if extra:
                mask = tf.concat([mask, *extra], axis=-1)
            return image, mask
        return image, tf.cast(parsed["label"], tf.int32)

    return parse


def _shard_files(files: tuple[str, ...], pipelines: int, pipeline_id: int) -> tuple[list[str], bool]:
    """Files of this input pipeline, and whether records still need sharding."""
    if pipelines > 1 and len(files) >= pipelines:
        return list(files[pipeline_id::pipelines]), False
    return list(files), pipelines > 1


def _records(files: list[str], shard_records: bool, pipelines: int, pipeline_id: int) -> tf.data.Dataset:
    ds = tf.data.Dataset.from_tensor_slices(files).interleave(
        lambda f: tf.data.TFRecordDataset(f, buffer_size=1 << 20), cycle_length=max(1, min(len(files), 16)),
        block_length=1, num_parallel_calls=AUTOTUNE, deterministic=True)
    return ds.shard(pipelines, pipeline_id) if shard_records else ds


def _is_original(serialized):
    """True for copy 0 (not a static augmentation copy)."""
    return tf.equal(tf.io.parse_single_example(serialized, {"copy": tf.io.FixedLenFeature([], tf.int64)})["copy"], 0)


def has_examples(info: DatasetInfo, split: str = "val") -> bool:
    """Whether ``split`` exists with at least one example (preprocess writes empty shards for
    a split whose every source it rejected)."""
    return info.split_sizes.get(split, 0) > 0


def count_examples(info: DatasetInfo, split: str = "train", originals_only: bool = False) -> int:
    """Examples of ``split``; with ``originals_only`` a pass over the records counts copy 0."""
    if not originals_only:
        return info.split_sizes.get(split, 0)
    records = _records(list(info.split_files.get(split, ())), False, 1, 0).filter(_is_original)
    return int(records.reduce(tf.constant(0, tf.int64), lambda n, _: n + 1).numpy())


def _context(input_context) -> tuple[int, int, int]:
    """(pipelines, pipeline id, replicas fed by this pipeline)."""
    if input_context is None:
        return 1, 0, 1
    pipelines = input_context.num_input_pipelines
    return pipelines, input_context.input_pipeline_id, max(1, input_context.num_replicas_in_sync // pipelines)


def train_dataset(info: DatasetInfo, batch_size: int, epoch: int, seed: int, augment_cfg: AugmentConfig,
                  shuffle_buffer: int = 1024, skip_steps: int = 0, input_context=None,
                  split: str = "train", augment_here: bool = True, originals_only: bool = False) -> tf.data.Dataset:
    """Endless, deterministic stream for one epoch, batched per replica (``batch_size``), whose
    first ``skip_steps`` global steps are skipped (resume). Elements are (images, targets),
    augmented; with ``augment_here=False`` they are (images, targets, seed) for the training
    step to augment. ``originals_only`` leaves out the static augmentation copies."""
    pipelines, pipeline_id, replicas = _context(input_context)
    files, shard_records = _shard_files(info.split_files[split], pipelines, pipeline_id)
    order = np.random.default_rng([seed, epoch, pipeline_id]).permutation(len(files))
    ds = _records([files[i] for i in order], shard_records, pipelines, pipeline_id)
    if originals_only:
        ds = ds.filter(_is_original)
    ds = ds.shuffle(shuffle_buffer, seed=seed * 100003 + epoch, reshuffle_each_iteration=True).repeat()
    ds = ds.enumerate().skip(skip_steps * replicas * batch_size)
    parse = parse_fn(info.spec, info.weight_map, info.distance)
    epoch_seed = tf.constant([seed, epoch], tf.int64)

    def decode(index, serialized):
        return (index, *parse(serialized))

    def augment_batch(indices, images, targets):
        # the batch's seed is its first record's position: the same batch after a resume
        batch_seed = tf.random.experimental.stateless_fold_in(epoch_seed, indices[0])
        if not augment_here:
            return images, targets, batch_seed
        return augment_example_batch(images, targets, batch_seed, augment_cfg, info.spec.task == SEGMENTATION)

    ds = ds.map(decode, num_parallel_calls=AUTOTUNE, deterministic=True).batch(batch_size, drop_remainder=True)
    return ds.map(augment_batch, num_parallel_calls=AUTOTUNE, deterministic=True).prefetch(AUTOTUNE)


def eval_dataset(info: DatasetInfo, batch_size: int, split: str = "val", input_context=None) -> tf.data.Dataset:
    """One pass over ``split`` (this pipeline's share), decoded, not augmented, batched."""
    pipelines, pipeline_id, _ = _context(input_context)
    files, shard_records = _shard_files(info.split_files[split], pipelines, pipeline_id)
    ds = _records(files, shard_records, pipelines, pipeline_id)
    ds = ds.map(parse_fn(info.spec, info.weight_map, info.distance), num_parallel_calls=AUTOTUNE, deterministic=True)
    return ds.batch(batch_size).prefetch(AUTOTUNE)


PLACEMENT = ("core_y", "core_x", "core_h", "core_w", "source_h", "source_w")


def placed_eval_dataset(info: DatasetInfo, batch_size: int, split: str = "val") -> tf.data.Dataset:
    """One pass over ``split`` in file order, not augmented: (images, masks, source ids,
    placements [B, 6] as ``PLACEMENT``), to put the cores of each source back together."""
    parse = parse_fn(info.spec, info.weight_map, info.distance)
    where_spec = {"source_id": tf.io.FixedLenFeature([], tf.string),
                  **{name: tf.io.FixedLenFeature([], tf.int64) for name in PLACEMENT}}

    def decode(serialized):
        image, mask = parse(serialized)
        where = tf.io.parse_single_example(serialized, where_spec)
        return image, mask, where["source_id"], tf.stack([where[name] for name in PLACEMENT])

    records = _records(list(info.split_files[split]), False, 1, 0)
    return records.map(decode, num_parallel_calls=AUTOTUNE, deterministic=True).batch(batch_size).prefetch(AUTOTUNE)


def sample(info: DatasetInfo, count: int, split: str = "val") -> tuple[np.ndarray, np.ndarray]:
    """The first ``count`` examples of ``split`` as numpy (image, target) arrays (masks without weights
    or distances)."""
    images, targets = [], []
    for image, target in eval_dataset(info, 1, split).unbatch().take(count):
        images.append(image.numpy())
        targets.append(target.numpy()[..., :1] if info.weight_map or info.distance else target.numpy())
    return np.stack(images), np.stack(targets)


def crop_to(tensor, size: int):
    """Centre crop of [N, H, W, ...] to [N, size, size, ...] (valid-convolution outputs)."""
    height = tensor.shape[1]
    if height is None or height == size:
        return tensor
    start = (height - size) // 2
    return tensor[:, start:start + size, start:start + size]
