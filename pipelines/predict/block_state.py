"""What a large image's blocks have done, tied to the input they were made from.

Under ``_blocks/<settings>/<image_id>/`` the blocks' markers and parts hold a run's progress.
``source.json`` records what they were made from: the input's identity (path, size and
modification time, as finished rows record it) and the plan (level, resampling, size,
block side, intensity range). A run that finds another identity there (the input changed
under the same name, or another block side) deletes the image's markers, parts and decoder
inputs before planning, so no block of the old input is mixed into the new one's outputs;
``source.json`` is deleted first and written last, so a kill in between starts over again.

``failed.json``: a block whose pixels cannot be read (a damaged tile) rejects its image with
a rejected record; the image's other blocks stop, it gets no row, and the next run retries
the blocks not done (the failure is cleared when the image is planned again).
"""
from __future__ import annotations

import json
import re

from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics

from pipelines.beam import files
from pipelines.predict import outputs
from schemas import layout as names
from schemas.rejected import rejected_record

NAMESPACE = "tessera.predict"
_BLOCK_FILE = re.compile(r"^\d{6}\.")     # <block>.npz, .owned.npz, .decoded.npz, .objects.parquet, ... (+ .tmp-)


def reject(layout, image_id: str, path: str, reason: str, detail: str, **context) -> None:
    """A large image's rejected record (it gets no row)."""
    Metrics.counter(NAMESPACE, f"rejected_{reason}").inc()
    outputs.write_json(layout.path(layout.rejected(path)), {**rejected_record(path, reason, detail, **context),
                                                            "image_id": image_id})


def _path(layout, image_id: str, marker) -> str:
    return layout.path(marker(layout.settings.fingerprint(), image_id))


def identity(described: dict, block_side: int, intensity_range) -> dict:
    """What an image's block markers are valid for (as JSON reads it back)."""
    return json.loads(json.dumps({**described, "block_side": block_side, "intensity_range": intensity_range}))


def start_over_if_changed(layout, image_id: str, made_from: dict) -> bool:
    """Delete the image's block markers, parts and decoder inputs unless they were made from
    ``made_from``; then record it. Returns whether anything was started over."""
    source = _path(layout, image_id, names.block_source_path)
    recorded = files.read_if_exists(source)
    if recorded is not None and json.loads(recorded) == made_from:
        return False
    files.delete_if_present([source])             # first: a kill below leaves no identity, so starts over
    folder = layout.path(names.block_markers_dir(layout.settings.fingerprint(), image_id))
    stale = [f"{folder}/{name}" for name in files.children(folder) if _BLOCK_FILE.match(name)
             or name.startswith(("failed.json", "source.json"))]
    inputs = layout.path(names.block_inputs_path(layout.settings.fingerprint(), image_id))
    stale += [m.path for m in FileSystems.match([f"{inputs}/**"])[0].metadata_list]
    if stale:
        FileSystems.delete(stale)
        Metrics.counter(NAMESPACE, "blocks_started_over").inc()
    outputs.write_json(source, made_from)
    return recorded is not None or bool(stale)


def fail(layout, image_id: str, path: str, reason: str, detail: str, **context) -> None:
    """A block could not be read: the image is rejected and its other blocks stop."""
    outputs.write_json(_path(layout, image_id, names.block_failed_path), {"reason": reason, "detail": detail})
    reject(layout, image_id, path, reason, detail, **context)


def failed(layout, image_id: str) -> bool:
    return FileSystems.exists(_path(layout, image_id, names.block_failed_path))


def clear_failure(layout, image_id: str) -> None:
    """Planned again: the blocks not done are retried."""
    files.delete_if_present([_path(layout, image_id, names.block_failed_path)])
