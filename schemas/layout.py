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
     "class_pixels": {class_name: n},        # labelled (non-255) pixels of the kept train tiles' cores
     "class_frequencies": {class_name: f},   # the same, normalised to sum 1
     "labels": {class_name: n},              # classification: train examples per class
     "rejected": {reason: n}, "fg_fraction_mean": {split: f},
     "rejected_regions": {reason: n},        # unreadable blocks of large sources (their other blocks stay)
     "tiles": {"tiles": n, "kept": n, "dropped_blank": n, "dropped_background": n, "rejected_tiles": n},
     "per_source": {source_id: {the same counts, "split", "level", "units", "pixel_size_um"}},
     "shards_per_worker": [n, ...]}          # shards written by each worker process, most first

_SUCCESS::

    {"sources_in": n, "sources_written": n, "rejected": n, "examples": {split: n},
     "rejected_regions": n, "tiles": {as in stats.json},   # sources_in = sources_written + rejected
     "shards": {name: {"bytes": n, "sha256": hex, "examples": n}},   # every shard, nothing else
     "fingerprint": dataset_fingerprint(shards), "completed_at": "<UTC ISO>"}

A reader checks a dataset against it cheaply (every shard present with its size, no other
shard file, the fingerprint consistent) and, when asked, fully (every shard's sha256).
"""
from __future__ import annotations

import hashlib

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


SHARD_GLOB = f"{DATASET_NAME}-*.tfrecord-*"


def dataset_fingerprint(shard_digests: dict[str, str]) -> str:
    """sha256 over the shards' names and sha256 digests: names a dataset's content."""
    lines = sorted(f"{name}:{digest}" for name, digest in shard_digests.items())
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


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
        ("source_level", pa.int32()),      # the pyramid level the tile was cut from
        ("pixel_size_um", pa.float64()),   # µm/px of that level, when known
        ("objects", pa.int32()),           # --mask-values instances: instances in the core
    ]
)


# ---------------------------------------------------------------- prediction directory
# Written by ``tessera predict``, read by ``tessera evaluate``::
#
#   pred/
#     masks/<image_id>.png            class ids (uint8 grayscale); 0/255 with --binary-255
#     probabilities/<image_id>.npy    float16 (H, W, K), with --save-probabilities
#     overlays/<image_id>.png         preview (long side <= 1024 px): classes coloured over the image
#     seams/<image_id>.png            with overlap > 0: heat map (overlay size) of where tiles disagree
#     instances/<image_id>.tif        --instances: uint32 instance ids (+ objects/<image_id>.parquet)
#     rows/<settings>/<image_id>.json the image's Parquet row; written last = the image is done
#     rejected/<sha1(source)>.json    one rejected input (schemas.rejected)
#     _tmp/<settings>/<image_id>/     strip parts of images predicted in several strips
#     _leases/<run>.claim, .alive     the runs writing here now (one per shard, one settings)
#     masks/<image_id>.ome.zarr/      large images: an OME-Zarr label pyramid (+ overlays/<id>.png thumbnail)
#     probabilities/<image_id>.ome.zarr/  large images, --save-probabilities: (c, y, x) float16 pyramid
#     _blocks/<settings>/<image_id>/  large images: one marker per finished block (with a decoder also
#                                     <block>.owned.npz: its objects' anchors; <block>.decoded.npz: its chunk
#                                     of instances written; _blocks/<settings>/<image_id>.inputs.zarr meanwhile;
#                                     source.json: the input they were made from; failed.json: a block unreadable)
#     instances/<image_id>.ome.zarr/  large images with a decoder: uint32 instance label pyramid (ids = object_id)
#     objects/<image_id>.parquet      large images: one row per object (OBJECTS_SCHEMA); all in objects.parquet
#     geojson/<image_id>.geojson      a FeatureCollection of the objects' outlines that QuPath imports
#                                     (pipelines.core.geojson; large images: joined from per-block parts)
#     predictions.parquet (PREDICTIONS_SCHEMA), rejected.jsonl, config.json, _SUCCESS
#     (sharded runs: predictions-SSSSS-of-NNNNN.parquet, rejected-..., _SUCCESS-...; merged when all are done)
#
# ``<settings>`` is a fingerprint of everything that changes outputs, so a rerun with other
# settings recomputes instead of mixing. Paths below are relative to the directory.
MASKS_DIR = "masks"
OVERLAYS_DIR = "overlays"
PROBABILITIES_DIR = "probabilities"
ROWS_DIR = "rows"
REJECTED_DIR = "rejected"
STRIP_PARTS_DIR = "_tmp"
INSTANCES_DIR = "instances"  # instances/<image_id>.tif: uint32 instance ids (--instances)
SEAMS_DIR = "seams"         # seams/<image_id>.png: where overlapping tiles disagree (overlap > 0)
OBJECTS_DIR = "objects"     # large images, --instances: objects/<image_id>.parquet (OBJECTS_SCHEMA)
GEOJSON_DIR = "geojson"     # geojson/<image_id>.geojson: the objects as QuPath detections (pipelines.core.geojson)
BLOCKS_DIR = "_blocks"      # done markers of large images' blocks, per settings
LEASES_DIR = "_leases"      # one claim + heartbeat per running run (pipelines.beam.lease)
PREDICTIONS_FILE = "predictions.parquet"
IMAGE_OUTPUT_DIRS = (MASKS_DIR, OVERLAYS_DIR, PROBABILITIES_DIR, SEAMS_DIR, INSTANCES_DIR, OBJECTS_DIR,
                     GEOJSON_DIR)


def shard_suffix(num_shards: int, shard_index: int) -> str:
    """"-SSSSS-of-NNNNN" for one shard of a sharded run, "" for an unsharded one."""
    return f"-{shard_index:05d}-of-{num_shards:05d}" if num_shards > 1 else ""


def predictions_file(suffix: str = "") -> str:
    return f"predictions{suffix}.parquet"


def rejected_file(suffix: str = "") -> str:
    return f"rejected{suffix}.jsonl"


def success_file(suffix: str = "") -> str:
    return f"{SUCCESS_FILE}{suffix}"


def mask_path(image_id: str) -> str:
    return f"{MASKS_DIR}/{image_id}.png"


def overlay_path(image_id: str) -> str:
    return f"{OVERLAYS_DIR}/{image_id}.png"


def instances_path(image_id: str) -> str:
    return f"{INSTANCES_DIR}/{image_id}.tif"


def seam_map_path(image_id: str) -> str:
    """A heat-map thumbnail (overlay size) of the largest disagreement of overlapping tiles."""
    return f"{SEAMS_DIR}/{image_id}.png"


def probabilities_path(image_id: str) -> str:
    return f"{PROBABILITIES_DIR}/{image_id}.npy"


def rows_dir(settings: str) -> str:
    return f"{ROWS_DIR}/{settings}"


def row_path(settings: str, image_id: str) -> str:
    return f"{rows_dir(settings)}/{image_id}.json"


def strip_parts_dir(settings: str, image_id: str | None = None) -> str:
    return f"{STRIP_PARTS_DIR}/{settings}" + (f"/{image_id}" if image_id is not None else "")


def strip_part_path(settings: str, image_id: str, strip: int, strips: int) -> str:
    return f"{strip_parts_dir(settings, image_id)}/strip-{strip:05d}-of-{strips:05d}.npz"


def label_container_path(image_id: str) -> str:
    """A large image's OME-Zarr (NGFF 0.4) of label images: its ``labels/`` group holds
    ``classes`` and, with a decoder, ``instances``; its root image is the class pyramid's own
    arrays, referenced (the input is the real image; a copy would be as large). See
    label_outputs.finish_container."""
    return f"{MASKS_DIR}/{image_id}.ome.zarr"


def label_image_path(image_id: str) -> str:
    """The mask of a large image: an NGFF 0.4 label pyramid of class ids (uint8, image-label
    colours and class names), ``labels/classes`` of its container, written block by block."""
    return f"{label_container_path(image_id)}/labels/classes"


def probability_image_path(image_id: str) -> str:
    """A large image's class probabilities (--save-probabilities): an OME-Zarr (c, y, x) float16 pyramid."""
    return f"{PROBABILITIES_DIR}/{image_id}.ome.zarr"


def objects_path(image_id: str) -> str:
    return f"{OBJECTS_DIR}/{image_id}.parquet"


def geojson_path(image_id: str) -> str:
    """The image's objects as one GeoJSON FeatureCollection (QuPath: File > Import objects)."""
    return f"{GEOJSON_DIR}/{image_id}.geojson"


def objects_file(suffix: str = "") -> str:
    return f"objects{suffix}.parquet"


def label_tiff_path(image_id: str) -> str:
    """With --mask-format ome-tiff: the same label pyramid as a tiled OME-TIFF (QuPath, OpenSlide)."""
    return f"{MASKS_DIR}/{image_id}.ome.tif"


def label_image_marker(image_id: str) -> str:
    """The file that exists once a large image's label pyramids are complete (its container's
    root attributes, written last)."""
    return f"{label_container_path(image_id)}/.zattrs"


def instance_image_path(image_id: str) -> str:
    """A large image's instances (a decoder): an OME-Zarr (NGFF 0.4) uint32 label pyramid whose
    ids are objects.parquet's object_id, written block by block: ``labels/instances`` of the
    image's label container, beside ``labels/classes``."""
    return f"{label_container_path(image_id)}/labels/instances"


def block_inputs_path(settings: str, image_id: str) -> str:
    """A large image's decoder inputs (class ids + confidence, or a boundary model's float32
    probabilities), kept while its blocks are decoded with their halo; deleted when it is done."""
    return f"{BLOCKS_DIR}/{settings}/{image_id}.inputs.zarr"


def block_markers_dir(settings: str, image_id: str) -> str:
    return f"{BLOCKS_DIR}/{settings}/{image_id}"


def block_features_path(settings: str, image_id: str, index: int) -> str:
    """A large image's block's GeoJSON features (a part, no brackets: pipelines.core.geojson),
    joined into geojson_path(image_id) when every block is done."""
    return f"{block_markers_dir(settings, image_id)}/{index:06d}.features.json"


def block_marker_path(settings: str, image_id: str, index: int, stage: str = "") -> str:
    """Written once a large image's block is in its label array: the block is done. With a
    decoder, ``stage`` "owned" (its objects listed) and "decoded" (its instance chunk written)."""
    return f"{block_markers_dir(settings, image_id)}/{index:06d}{'.' + stage if stage else ''}.npz"


def block_source_path(settings: str, image_id: str) -> str:
    """What a large image's block markers were made from (its input's size and modification
    time, level, size, block side): markers of another input are deleted before planning."""
    return f"{block_markers_dir(settings, image_id)}/source.json"


def block_failed_path(settings: str, image_id: str) -> str:
    """Written when a block of a large image cannot be read: the image is rejected, its other
    blocks stop; the next run retries it."""
    return f"{block_markers_dir(settings, image_id)}/failed.json"


def rejected_path(source: str) -> str:
    return f"{REJECTED_DIR}/{hashlib.sha1(source.encode()).hexdigest()[:20]}.json"


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
    ("source_signature", pa.string()),   # "<bytes>:<modified>" of the input when it was predicted
    # seam QA (overlap > 0): where tiles overlap, the mean total-variation distance between a
    # tile's class scores and those already blended there, and the fraction whose class flips
    ("seam_disagreement", pa.float64()), ("seam_flip_fraction", pa.float64()),
    ("seam_map_path", pa.string()),      # their heat map (seams/<image_id>.png), overlap > 0 only
    ("instances_path", pa.string()),     # --instances: the instance label image
    # large images: the pyramid level predicted, the pixel size of the predicted pixels (µm/px),
    # and the resampling factor when no level had the model's pixel size (None: as stored)
    ("source_level", pa.int32()), ("pixel_size_um", pa.float64()), ("resample_factor", pa.float64()),
    ("precision", pa.string()),          # the SavedModel that ran: float32, or the bfloat16 export
])


# objects.parquet (large images): one row per connected object of a class > 0, counted once
# however many block borders cut it; bbox is [ymin, ymax) x [xmin, xmax) in level-0 pixels of
# the predicted level; *_um are the centroid in micrometres when the pixel size is known.
# outline: the object's polygon (pipelines.core.outlines) as GeoJSON Polygon coordinates:
# rings (the exterior first, then holes), each a closed list of [x, y] vertices in pixel-corner
# coordinates of the full-resolution image (x = column, y = row; pixel (r, c) covers
# [c, c+1) x [r, r+1), QuPath's convention); null where no outline was computed.
OBJECTS_SCHEMA = pa.schema([
    ("image_id", pa.string()), ("object_id", pa.int64()), ("class_name", pa.string()), ("area", pa.int64()),
    ("ymin", pa.int64()), ("xmin", pa.int64()), ("ymax", pa.int64()), ("xmax", pa.int64()),
    ("centroid_y", pa.float64()), ("centroid_x", pa.float64()),
    ("centroid_y_um", pa.float64()), ("centroid_x_um", pa.float64()), ("mean_confidence", pa.float64()),
    ("outline", pa.list_(pa.list_(pa.list_(pa.float64())))),
])
