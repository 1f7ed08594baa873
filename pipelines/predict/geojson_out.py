"""GeoJSON files of predicted objects (``geojson/<image_id>.geojson``), written atomically
through Beam's FileSystems (local or gs://): a small image's features at once, a large
image's from its blocks' parts, copied one part at a time (``pipelines.core.geojson``)."""
from __future__ import annotations

from typing import Iterable

import pyarrow as pa

from pipelines.beam import files
from pipelines.core import geojson


def table_features(table: pa.Table, class_names) -> list[dict]:
    """The features of rows of schemas.layout.OBJECTS_SCHEMA that have an outline, coloured
    as the overlays colour their classes."""
    colors = {name: geojson.class_color(i) for i, name in enumerate(class_names) if i > 0}
    columns = table.select(["image_id", "object_id", "class_name", "outline", "area", "mean_confidence"]).to_pydict()
    features = []
    for image_id in dict.fromkeys(columns["image_id"]):
        rows = [i for i, v in enumerate(columns["image_id"]) if v == image_id]
        features += geojson.object_features(
            image_id, *([columns[c][i] for i in rows] for c in ("object_id", "class_name", "outline")),
            colors, *([columns[c][i] for i in rows] for c in ("area", "mean_confidence")))
    return features


def write_part(path: str, features: Iterable[dict]) -> None:
    """One block's features (a part, possibly empty) at ``path``."""
    files.write_atomically(path, geojson.features_bytes(features))


def write_collection(path: str, part_paths: Iterable[str]) -> None:
    """The FeatureCollection at ``path`` from part files, in the order given, reading one part
    at a time (memory: the largest part, not the image's objects)."""
    with files.atomic_create(path) as handle:
        for chunk in geojson.collection_chunks(files.read_bytes(p) for p in part_paths):
            handle.write(chunk)


def write_features(path: str, features: Iterable[dict]) -> None:
    """A small image's FeatureCollection at ``path``, at once."""
    files.write_atomically(path, geojson.collection_bytes(features))
