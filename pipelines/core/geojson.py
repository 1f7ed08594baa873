"""Objects as a GeoJSON FeatureCollection that QuPath imports (File > Import objects, or
``importObjectsFromFile``), written in parts so a large image never holds all its features.

What QuPath reads (qupath-core ``PathObjectTypeAdapters``, v0.4+): a FeatureCollection whose
``features`` are ``{"type": "Feature", "id": <UUID string>, "geometry": <GeoJSON geometry>,
"properties": {...}}``; ``properties.objectType`` "detection" makes a detection object (the
default, without it, is an annotation); ``properties.classification`` ``{"name", "color": [r,
g, b]}`` its class; ``properties.measurements`` a ``{name: number}`` map. Coordinates are
pixels of the full-resolution image, origin at the top-left corner (see
``pipelines.core.outlines``). An ``id`` that is not a UUID is ignored, so ids here are
UUIDs derived from (image id, object id) (uuid5): a rerun writes the same file. Other
properties (``object_id``, ``image_id``) are kept for other readers; QuPath ignores them.

Measurements: ``object_id`` (a double in QuPath: exact below 2**53), ``area`` (pixels of the
predicted level, as in objects.parquet) and ``mean_confidence``; non-finite values are left out
(JSON has no NaN).

Streaming: a *part* is the features of one piece of work (a block) joined by ``SEPARATOR``,
without brackets (``features_bytes``); ``collection_chunks`` yields the header, every non-empty
part with separators between them, and the footer, so parts are copied into one file one at
a time. Joining the parts of an image's blocks gives the same bytes as ``collection_bytes`` of
all its features in that order. Pure Python / numpy.
"""
from __future__ import annotations

import json
import math
import uuid
from typing import Iterable, Iterator

import numpy as np

from pipelines.core.pixels import PALETTE

OBJECT_TYPE = "detection"
HEADER = b'{"type":"FeatureCollection","features":[\n'
SEPARATOR = b",\n"
FOOTER = b"\n]}\n"
NAMESPACE = uuid.UUID("5f0c3d5e-8f1e-4d5e-9a57-7e55e2a0b118")   # Tessera objects (fixed: ids stay stable)
DECIMALS = 4                                                      # coordinates are multiples of 1/8 px before scaling


def feature_id(image_id: str, object_id: int) -> str:
    """A UUID (what QuPath keeps as the object's id) derived from the image and object ids."""
    return str(uuid.uuid5(NAMESPACE, f"{image_id}/{int(object_id)}"))


def class_color(class_index: int) -> list[int]:
    """The RGB colour of class ``class_index`` > 0 in overlays and label pyramids."""
    return [int(v) for v in PALETTE[(int(class_index) - 1) % (len(PALETTE) - 1) + 1]]


def feature(image_id: str, object_id: int, rings, class_name: str, color, measurements: dict | None = None) -> dict:
    """One object as a QuPath detection: ``rings`` as from ``outlines.polygons`` (the exterior
    first, closed [x, y] arrays)."""
    if not rings or len(rings[0]) < 4:
        raise ValueError(f"object {object_id} of {image_id}: an outline needs a closed exterior ring of 4+ vertices")
    values = {"object_id": float(object_id), **(measurements or {})}
    return {
        "type": "Feature", "id": feature_id(image_id, object_id),
        "geometry": {"type": "Polygon",
                     "coordinates": [np.round(np.asarray(r, np.float64), DECIMALS).tolist() for r in rings]},
        "properties": {
            "objectType": OBJECT_TYPE,
            "classification": {"name": str(class_name), "color": [int(c) for c in color]},
            "measurements": {k: float(v) for k, v in values.items() if v is not None and math.isfinite(float(v))},
            "object_id": int(object_id), "image_id": image_id,
        },
    }


def object_features(image_id: str, object_ids, class_names, outlines, colors: dict[str, list[int]],
                    areas=None, confidences=None) -> Iterator[dict]:
    """Features of objects given column by column (``outlines``: rings or None per object; an
    object without an outline has no feature). ``colors``: class name -> [r, g, b]."""
    count = len(object_ids)
    areas = [None] * count if areas is None else areas
    confidences = [None] * count if confidences is None else confidences
    for object_id, name, rings, area, confidence in zip(object_ids, class_names, outlines, areas, confidences):
        if rings is None:
            continue
        yield feature(image_id, int(object_id), rings, name, colors[name],
                      {"area": area, "mean_confidence": confidence})


def features_bytes(features: Iterable[dict]) -> bytes:
    """A part: the features as compact JSON joined by SEPARATOR (b"" for none)."""
    return SEPARATOR.join(json.dumps(f, separators=(",", ":"), allow_nan=False).encode() for f in features)


def collection_chunks(parts: Iterable[bytes]) -> Iterator[bytes]:
    """The bytes of one FeatureCollection from parts (each from ``features_bytes``), in order."""
    yield HEADER
    first = True
    for part in parts:
        if not part:
            continue
        if not first:
            yield SEPARATOR
        yield part
        first = False
    yield FOOTER


def collection_bytes(features: Iterable[dict]) -> bytes:
    """A whole FeatureCollection at once (a small image's objects)."""
    return b"".join(collection_chunks([features_bytes(features)]))
