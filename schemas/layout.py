"""Directory layouts and the small records every job writes (rejected, manifest, success).

Dataset directory (written by ``tessera preprocess``)::

    dataset/
      dataset_info.json, features.json      TFDS metadata (tfds.builder_from_directory)
      tessera-<split>.tfrecord-NNNNN-of-MMMMM   shards
      tessera_dataset.json                  DatasetSpec (task, core, margin, classes, ...)
      config.json                           the resolved job configuration
      manifest.parquet                      one row per example (MANIFEST_SCHEMA)
      stats.json                            examples per split, class pixel frequencies, rejections
      rejected.jsonl                        one JSON object per rejected input (schemas.rejected.FIELDS)
      _SUCCESS                              JSON with the counts; written last

stats.json::

    {"examples": {split: n}, "sources": {split: n},
     "class_pixels": {class_name: n},        # labelled (non-255) pixels of the train sources' masks
     "class_frequencies": {class_name: f},   # the same, normalised to sum 1
     "labels": {class_name: n},              # classification: train examples per class
     "rejected": {reason: n}, "fg_fraction_mean": {split: f}}

_SUCCESS::

    {"sources_in": n, "sources_written": n, "rejected": n, "examples": {split: n},
     "fingerprint": "<sha256 over shard names and their sha256>", "completed_at": "<UTC ISO>"}
"""
from __future__ import annotations

import pyarrow as pa

DATASET_NAME = "tessera"
SPLITS = ("train", "val", "test")
SPEC_FILE = "tessera_dataset.json"
CONFIG_FILE = "config.json"
MANIFEST_FILE = "manifest.parquet"
STATS_FILE = "stats.json"
REJECTED_FILE = "rejected.jsonl"
SUCCESS_FILE = "_SUCCESS"
WORK_PARTS = "_parts"         # <work dir>/_parts/: what the pipeline hands to the launcher; never published
SHARD_TEMPLATE = "{DATASET}-{SPLIT}.{FILEFORMAT}-{SHARD_X_OF_Y}"


def shard_name(split: str, index: int, count: int) -> str:
    return f"{DATASET_NAME}-{split}.tfrecord-{index:05d}-of-{count:05d}"



MANIFEST_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("split", pa.string()),
        ("shard", pa.string()),
        ("source_id", pa.string()),
        ("image_path", pa.string()),
        ("mask_path", pa.string()),
        ("label", pa.string()),
        ("core_y", pa.int32()),
        ("core_x", pa.int32()),
        ("core_h", pa.int32()),
        ("core_w", pa.int32()),
        ("margin", pa.int32()),
        ("source_h", pa.int32()),
        ("source_w", pa.int32()),
        ("copy", pa.int32()),
        ("augmentation", pa.string()),
        ("fg_fraction", pa.float32()),
        ("num_bytes", pa.int64()),
    ]
)


# predictions.parquet (written by ``tessera predict``): one row per image. Prediction
# directory: masks/<id>.png (class ids, or 0/255 with --binary-255), overlays/<id>.png,
# probabilities/<id>.npy (float16 H x W x K, with --save-probabilities), rows/, rejected.jsonl,
# config.json, _SUCCESS.
PREDICTIONS_SCHEMA = pa.schema([
    ("image_id", pa.string()), ("source", pa.string()), ("task", pa.string()),
    ("height", pa.int32()), ("width", pa.int32()),
    ("class_names", pa.list_(pa.string())), ("class_fractions", pa.list_(pa.float32())),
    ("class_components", pa.list_(pa.int32())), ("components", pa.int32()),
    ("mean_confidence", pa.float32()), ("label", pa.string()), ("probabilities", pa.list_(pa.float32())),
    ("mask_path", pa.string()), ("overlay_path", pa.string()), ("probabilities_path", pa.string()),
    ("model_ids", pa.list_(pa.string())), ("ensemble", pa.string()), ("tta", pa.string()),
    ("overlap", pa.float32()), ("blend", pa.string()),
    ("tiles", pa.int32()), ("strips", pa.int32()), ("seconds", pa.float64()),
])
