"""What ``tessera evaluate`` reads: prediction directories, truth folders, label CSVs.

Ids follow preprocessing (pipelines/sources.py): a file's id is its path relative to the
root, without extension. Files are read through Beam's ``FileSystems`` (local or gs://).
Every file that cannot be used comes back as a rejected record with a reason.
"""
from __future__ import annotations

import csv
import io
import json
import posixpath
import re

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import tifffile
import zarr
from apache_beam.io.filesystems import FileSystems

from pipelines.beam.files import exists, file_bytes_limit, read_bytes, read_input
from pipelines.beam.zarr_store import store_for
from pipelines.core.images import ImagePolicy, decode_png, image_size, read_mask
from pipelines.core.masks import MaskPolicy
from pipelines.core.sources import (
    classification_source,
    has_image_extension,
    relative_parts,
    stem_key,
)
from schemas.example import CLASSIFICATION, SEGMENTATION
from schemas.layout import MASKS_DIR, PREDICTIONS_FILE, SUCCESS_FILE, mask_path
from schemas.rejected import RejectedInput, rejected_record

CLASS_NAME_FILES = ("model_card.json", "config.json")
NO_EXIF = ImagePolicy(apply_exif=False)   # predicted masks are read as stored (decode_png)


def list_files(root: str) -> tuple[dict[str, str], list[dict]]:
    """{relative id without extension: path} of the image files under ``root``, and rejections."""
    found: dict[str, list[str]] = {}
    bad = []
    for meta in FileSystems.match([FileSystems.join(root, "**")])[0].metadata_list:
        if not has_image_extension(meta.path):
            bad.append(rejected_record(meta.path, "not_an_image", "extension is not an image format"))
            continue
        found.setdefault(stem_key(relative_parts(meta.path, root)), []).append(meta.path)
    for key, paths in found.items():
        if len(paths) > 1:
            bad += [rejected_record(p, "duplicate_id", f"{len(paths)} files share the id {key!r}") for p in paths]
    return {k: v[0] for k, v in found.items() if len(v) == 1}, bad


def check_complete(pred_dir: str) -> None:
    """Refuse a prediction directory whose run did not finish (``tessera predict`` writes _SUCCESS last)."""
    if not exists(FileSystems.join(pred_dir, SUCCESS_FILE)):
        if not FileSystems.match([FileSystems.join(pred_dir, "**")], limits=[1])[0].metadata_list:
            raise ValueError(f"--predictions {pred_dir}: no such directory, or nothing in it; write it first with "
                             f"`tessera predict --model-dir MODEL --input IMAGES --output {pred_dir}`")
        raise ValueError(f"{pred_dir}: no {SUCCESS_FILE}, so the prediction run there did not complete (or this is "
                         "not a `tessera predict` directory); rerun predict, or pass --allow-incomplete to score "
                         "what is there")


def read_predictions_table(pred_dir: str) -> pa.Table | None:
    path = FileSystems.join(pred_dir, PREDICTIONS_FILE)
    return pq.read_table(io.BytesIO(read_bytes(path)), use_threads=False) if exists(path) else None


def detect_task(task: str, truth: str, table: pa.Table | None) -> str:
    """``task`` unless "auto"; else the predictions' ``task`` column; else classification
    for a CSV truth or predictions with labels."""
    if task != "auto":
        return task
    if table is not None and "task" in table.column_names:
        tasks = {t for t in table["task"].to_pylist() if t}
        if len(tasks) > 1:
            raise ValueError(f"{PREDICTIONS_FILE} mixes tasks {sorted(tasks)}; pass --task")
        if tasks:
            return tasks.pop()
    if truth.lower().endswith(".csv"):
        return CLASSIFICATION
    has_labels = table is not None and "label" in table.column_names and table["label"].null_count < len(table)
    return CLASSIFICATION if has_labels else SEGMENTATION


def resolve_class_names(given: tuple[str, ...], pred_dir: str, table: pa.Table | None) -> tuple[str, ...]:
    """``given``, else the predictions' ``class_names`` column or Parquet metadata, else a
    model card / config beside the predictions; () when nothing says."""
    if given:
        return given
    if table is not None and "class_names" in table.column_names:
        found = {tuple(n) for n in table["class_names"].to_pylist() if n}
        if len(found) > 1:
            raise ValueError(f"{PREDICTIONS_FILE} rows disagree on class_names {sorted(found)}; pass --class-names")
        if found:
            return found.pop()
    meta = (table.schema.metadata or {}) if table is not None else {}
    if b"class_names" in meta:
        return tuple(json.loads(meta[b"class_names"]))
    for name in CLASS_NAME_FILES:
        path = FileSystems.join(pred_dir, name)
        if exists(path):
            names = json.loads(read_bytes(path)).get("class_names")
            if names:
                return tuple(names)
    return ()


def prediction_mask_paths(pred_dir: str, table: pa.Table | None) -> tuple[dict[str, str], list[dict]]:
    """{image id: mask path} from predictions.parquet, or by listing ``masks/`` without one."""
    if table is None:
        return list_files(FileSystems.join(pred_dir, MASKS_DIR))
    ids = table["image_id"].to_pylist()
    paths = table["mask_path"].to_pylist() if "mask_path" in table.column_names else [None] * len(ids)
    out, bad = {}, []
    for image_id, path in zip(ids, paths):
        if not path:
            path = FileSystems.join(pred_dir, mask_path(image_id))
        elif "://" not in path and not path.startswith("/"):
            path = FileSystems.join(pred_dir, path)
        if image_id in out:
            bad.append(rejected_record(path, "duplicate_id", f"{PREDICTIONS_FILE} lists {image_id!r} twice"))
        out[image_id] = path
    return out, bad


def is_label_image(path: str) -> bool:
    """Whether ``path`` is a large image's OME-Zarr label pyramid (not a PNG mask): an OME-Zarr
    or one of its ``labels/`` groups (``masks/<id>.ome.zarr/labels/instances``)."""
    return re.search(r"\.ome\.zarr(/labels/[^/]+)?$", path.rstrip("/")) is not None


def label_image_exists(path: str) -> bool:
    """Whether the OME-Zarr at ``path`` has its group metadata (zarr v2 .zattrs or v3 zarr.json)."""
    return any(exists(f"{path.rstrip('/')}/{name}") for name in (".zattrs", "zarr.json"))


def check_size(name: str, shape: tuple[int, ...], max_pixels: int, expected: tuple[int, int] | None,
               what: str = "prediction") -> None:
    """Refuses, from a header's (height, width, ...), an image above ``max_pixels`` or of another
    size than the truth's ``expected`` (height, width): nothing is decoded for either."""
    height, width = int(shape[0]), int(shape[1])
    if expected is not None and (height, width) != tuple(expected):
        raise RejectedInput("size_mismatch", f"truth {tuple(expected)} vs {what} {(height, width)} "
                            "(from the headers; neither was decoded)")
    if height * width > max_pixels:
        raise RejectedInput("too_large", f"{name}: {height}x{width} = {height * width} pixels is more than "
                            f"--max-pixels {max_pixels} (refused from its header); raise it to evaluate this image")


def full_resolution_level(path: str, max_pixels: int, expected: tuple[int, int] | None = None) -> np.ndarray:
    """Level 0 (the full resolution) of the OME-Zarr pyramid at ``path``, read whole when it has
    at most ``max_pixels`` and the ``expected`` (height, width) (its header is checked first)."""
    try:
        group = zarr.open_group(store_for(path.rstrip("/"), read_only=True), mode="r")
        if "0" not in group and "labels" in group:       # a label container: its class ids
            group = group["labels"]["classes"]
        level = group["0"]
    except (FileNotFoundError, KeyError, ValueError) as e:
        raise RejectedInput("unreadable", f"{path}: not an OME-Zarr label image ({type(e).__name__}: {e})") from e
    if len(level.shape) != 2:
        raise RejectedInput("unreadable", f"{path}: level 0 has shape {level.shape}; expected (y, x) labels")
    check_size(path, level.shape, max_pixels, expected)
    return np.asarray(level[:])


def read_label_image(path: str, num_classes: int, max_pixels: int,
                     expected: tuple[int, int] | None = None) -> np.ndarray:
    """Class ids of a large image's predicted label pyramid (its full-resolution level), read
    whole when it has at most ``max_pixels`` and the ``expected`` size (the header is checked first)."""
    mask = full_resolution_level(path, max_pixels, expected)
    if mask.size and int(mask.max()) >= num_classes:
        raise RejectedInput("prediction_out_of_range", f"{path}: class id {int(mask.max())} but only "
                            f"{num_classes} classes; pass --class-names")
    return mask


def probability_paths(pred_dir: str, table: pa.Table | None) -> dict[str, str]:
    """{image id: its probabilities .npy} for the images predicted with --save-probabilities."""
    return row_paths(pred_dir, table, "probabilities_path", ".npy")


def read_probabilities(path: str, expected: tuple[int, int]) -> np.ndarray | None:
    """The class probabilities (H, W, K) saved at ``path`` (.npy), read only when its header says
    (H, W) is the truth's ``expected`` size; None otherwise (no V_rand for that image)."""
    try:
        with FileSystems.open(path) as handle:
            version = np.lib.format.read_magic(handle)
            read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                           else np.lib.format.read_array_header_2_0)
            shape = read_header(handle)[0]
    except (ValueError, OSError) as e:
        raise RejectedInput("unreadable", f"{path}: not a .npy of class probabilities ({e})") from e
    if len(shape) != 3 or tuple(shape[:2]) != tuple(expected):
        return None
    return np.load(io.BytesIO(read_bytes(path)))


def instance_paths(pred_dir: str, table: pa.Table | None) -> dict[str, str]:
    """{image id: its instance labels} for the images predicted with --instances: a uint32
    TIFF (instances/<id>.tif) or, for large images, an OME-Zarr label pyramid
    (masks/<id>.ome.zarr/labels/instances; instances/<id>.ome.zarr before)."""
    return row_paths(pred_dir, table, "instances_path", (".tif", ".ome.zarr", "/labels/instances"))


def row_paths(pred_dir: str, table: pa.Table | None, column: str, suffix: str | tuple[str, ...]) -> dict[str, str]:
    if table is None or column not in table.column_names:
        return {}
    return {i: (p if "://" in p or p.startswith("/") else FileSystems.join(pred_dir, p))
            for i, p in zip(table["image_id"].to_pylist(), table[column].to_pylist())
            if p and p.rstrip("/").endswith(suffix)}


def instances_exist(path: str) -> bool:
    return label_image_exists(path) if is_label_image(path) else exists(path)


def read_instance_labels(path: str, max_pixels: int, expected: tuple[int, int] | None = None) -> np.ndarray:
    """The predicted instance ids (int64, 0 background) at ``path`` (.tif or .ome.zarr), at most
    ``max_pixels`` and of the ``expected`` size (checked from the header); non-integer labels are refused."""
    if is_label_image(path):
        ids = full_resolution_level(path, max_pixels, expected)
    else:
        ids = read_instances(read_input(path, file_bytes_limit(max_pixels) * 2), path, max_pixels,   # 32-bit ids
                             expected)
    if ids.dtype.kind not in "iu":
        raise RejectedInput("instances_not_integer", f"{path}: instance labels of type {ids.dtype}; expected "
                            "integer ids (0 background), as tessera predict --instances writes")
    if ids.size and int(ids.min()) < 0:
        raise RejectedInput("instances_negative", f"{path}: negative instance id {int(ids.min())}")
    return ids.astype(np.int64)


def read_instances(data: bytes, name: str, max_pixels: int | None = None,
                   expected: tuple[int, int] | None = None) -> np.ndarray:
    """The ids of an instance label TIFF written by ``tessera predict --instances`` (as stored;
    its size is checked from the header against ``max_pixels`` and ``expected`` before decoding)."""
    try:
        with tifffile.TiffFile(io.BytesIO(data)) as tiff:
            shape = tiff.series[0].shape
            if len(shape) < 2:
                raise RejectedInput("undecodable", f"{name}: instance image of shape {shape}; expected (y, x)")
            check_size(name, shape, max_pixels or int(np.prod(shape[:2])), expected, "instances")
            return tiff.asarray()
    except (ValueError, OSError, IndexError, tifffile.TiffFileError) as error:
        raise RejectedInput("undecodable", f"{name}: not an instance label TIFF ({error})") from error


def is_palette_png(data: bytes) -> bool:
    """Whether a PNG's IHDR says colour type 3 (palette): tessera predict's class-id masks."""
    return data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 25 and data[12:16] == b"IHDR" and data[25] == 3


def palette_indices(data: bytes, name: str, max_pixels: int) -> np.ndarray:
    """(H, W, 1) uint8 palette indices of a palette PNG: the class ids, as stored."""
    policy = MaskPolicy(mode="ids", num_classes=255, max_pixels=max_pixels, apply_exif=False)
    return read_mask(data, name, policy)[..., None]


def read_prediction(data: bytes, name: str, num_classes: int, max_pixels: int,
                    expected: tuple[int, int] | None = None) -> np.ndarray:
    """Class ids of a predicted mask PNG; a binary model's 0/255 masks (--binary-255) -> 0/1.
    Its size is checked from the header (``max_pixels``, the truth's ``expected`` (height, width))
    before a pixel is decoded: a small PNG can hold a huge mask.

    A class-id mask never holds 255, so with two classes 255 can only mean foreground.
    """
    check_size(name, image_size(data, name, NO_EXIF), max_pixels, expected)
    mask = palette_indices(data, name, max_pixels) if is_palette_png(data) else decode_png(data, name, max_pixels)
    if mask.shape[2] != 1 or mask.dtype != np.uint8:
        raise RejectedInput("prediction_not_class_ids", f"{name}: {mask.shape[2]}-channel {mask.dtype} PNG; "
                            "expected one 8-bit channel of class ids")
    mask = mask[..., 0]
    if num_classes == 2:
        mask = np.where(mask == 255, np.uint8(1), mask)
    if mask.size and int(mask.max()) >= num_classes:
        raise RejectedInput("prediction_out_of_range", f"{name}: class id {int(mask.max())} but only "
                            f"{num_classes} classes; pass --class-names")
    return mask


# ---------------------------------------------------------------- classification

def read_truth_labels(truth: str) -> tuple[dict[str, str], list[dict]]:
    """{image id: label} from a CSV ``image_id,label`` or a class-per-folder tree."""
    labels: dict[str, list[str]] = {}
    bad = []
    if truth.lower().endswith(".csv"):
        if not exists(truth):
            raise ValueError(f"--truth {truth}: no such file")
        reader = csv.DictReader(io.StringIO(read_bytes(truth).decode("utf-8-sig")))
        if not {"image_id", "label"} <= set(reader.fieldnames or ()):
            raise ValueError(f"{truth}: need a header with image_id,label; got {reader.fieldnames}")
        for line in reader:
            image_id = line["image_id"].strip()
            if has_image_extension(image_id):
                image_id = posixpath.splitext(image_id)[0]
            labels.setdefault(image_id, []).append(line["label"].strip())
    else:
        for meta in FileSystems.match([FileSystems.join(truth, "**")])[0].metadata_list:
            if not has_image_extension(meta.path):
                bad.append(rejected_record(meta.path, "not_an_image", "extension is not an image format"))
                continue
            try:
                source = classification_source(meta.path, truth)
            except ValueError as e:
                bad.append(rejected_record(meta.path, "no_class_folder", str(e)))
                continue
            labels.setdefault(source.id, []).append(source.label)
    for image_id, found in labels.items():
        if len(found) > 1:
            bad.append(rejected_record(f"{truth}#{image_id}", "duplicate_id", f"{len(found)} truth entries: {found}"))
    return {k: v[0] for k, v in labels.items() if len(v) == 1}, bad


def match_ids(truth_ids, pred_ids) -> dict[str, str]:
    """{prediction id: truth id}: exact ids, else the truth id without its class folder."""
    by_stripped: dict[str, list[str]] = {}
    for t in truth_ids:
        if "/" in t:
            _, tail = t.split("/", 1)
            by_stripped.setdefault(tail, []).append(t)
    out = {}
    for p in pred_ids:
        if p in truth_ids:
            out[p] = p
        elif len(by_stripped.get(p, ())) == 1:
            out[p] = by_stripped[p][0]
    return out


def predicted_labels(table: pa.Table, class_names: tuple[str, ...]) -> dict[str, str | None]:
    values = table["label"].to_pylist()
    if pa.types.is_integer(table.schema.field("label").type):
        if not class_names:
            raise ValueError("predicted labels are class indices; pass --class-names")
        values = [None if v is None else class_names[v] for v in values]
    return dict(zip(table["image_id"].to_pylist(), values))


