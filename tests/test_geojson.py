"""GeoJSON that QuPath imports: the FeatureCollection structure (a JSON schema of what
QuPath's reader uses), geometry read back with shapely, full-resolution coordinates, the
streaming join of per-block parts (equal to writing at once), and the objects.parquet
outline column it is made from."""
from __future__ import annotations

import io
import json
import uuid

import jsonschema
import numpy as np
import pyarrow.parquet as pq
import pytest
from shapely.geometry import shape

from pipelines.core import geojson
from pipelines.core.outlines import polygons
from pipelines.predict import geojson_out, label_outputs
from pipelines.predict.instances import instance_table
from schemas import layout as names

NUMBER_PAIR = {"type": "array", "items": {"type": "number"}, "minItems": 2, "maxItems": 2}
RING = {"type": "array", "items": NUMBER_PAIR, "minItems": 4}
# What qupath-core's PathObjectTypeAdapters reads from a file (v0.4+), stricter where we promise more.
QUPATH_FEATURE_COLLECTION = {
    "type": "object",
    "required": ["type", "features"],
    "properties": {
        "type": {"const": "FeatureCollection"},
        "features": {"type": "array", "items": {
            "type": "object",
            "required": ["type", "id", "geometry", "properties"],
            "properties": {
                "type": {"const": "Feature"},
                "id": {"type": "string", "format": "uuid"},
                "geometry": {"type": "object", "required": ["type", "coordinates"], "properties": {
                    "type": {"const": "Polygon"},
                    "coordinates": {"type": "array", "items": RING, "minItems": 1}}},
                "properties": {"type": "object", "required": ["objectType", "classification", "measurements"],
                               "properties": {
                                   "objectType": {"const": "detection"},
                                   "classification": {
                                       "type": "object", "required": ["name", "color"], "properties": {
                                           "name": {"type": "string"},
                                           "color": {"type": "array", "minItems": 3, "maxItems": 3,
                                                     "items": {"type": "integer", "minimum": 0, "maximum": 255}}}},
                                   "measurements": {"type": "object", "additionalProperties": {"type": "number"}},
                                   "object_id": {"type": "integer"}}},
            }}},
    },
}


def validate(data: bytes) -> dict:
    collection = json.loads(data)
    jsonschema.validate(collection, QUPATH_FEATURE_COLLECTION, format_checker=jsonschema.FormatChecker())
    return collection


def two_class_image():
    """Class ids and instance ids: two nuclei (class 1, one with a hole) and a class-2 blob."""
    mask = np.zeros((40, 50), np.uint8)
    mask[2:12, 3:13] = 1
    mask[6:8, 6:9] = 0
    mask[20:30, 20:26] = 1
    mask[30:38, 40:48] = 2
    labels = np.zeros(mask.shape, np.uint32)
    labels[2:12, 3:13] = 1
    labels[6:8, 6:9] = 0
    labels[20:30, 20:26] = 2
    labels[30:38, 40:48] = 3
    return mask, labels


def test_features_follow_qupath_and_read_back_with_shapely():
    mask, labels = two_class_image()
    rings = polygons(labels, origin=(1000, 2000))
    colors = {"nucleus": geojson.class_color(1), "other": geojson.class_color(2)}
    data = geojson.collection_bytes(geojson.object_features(
        "slide", [1, 2, 3], ["nucleus", "nucleus", "other"], rings, colors, [94, 60, 64], [0.9, float("nan"), 0.5]))
    collection = validate(data)
    features = collection["features"]
    assert len(features) == 3
    first = shape(features[0]["geometry"])
    assert first.is_valid and first.area == 94 and len(first.interiors) == 1
    assert first.bounds == (2003.0, 1002.0, 2013.0, 1012.0)          # full-image pixels, origin added
    assert [f["properties"]["classification"]["name"] for f in features] == ["nucleus", "nucleus", "other"]
    assert features[2]["properties"]["classification"]["color"] == colors["other"] != colors["nucleus"]
    assert features[0]["properties"]["measurements"] == {"object_id": 1.0, "area": 94.0, "mean_confidence": 0.9}
    assert "mean_confidence" not in features[1]["properties"]["measurements"]   # NaN is left out (not JSON)
    assert features[0]["id"] == geojson.feature_id("slide", 1) != geojson.feature_id("other", 1)
    assert uuid.UUID(features[0]["id"]).version == 5
    assert [shape(f["geometry"]).area for f in features] == [94, 60, 64]


def test_joining_block_parts_equals_writing_at_once(tmp_path):
    mask, labels = two_class_image()
    colors = {"nucleus": [255, 0, 0], "other": [0, 255, 0]}
    names_ = ["nucleus", "nucleus", "other"]
    whole = geojson.collection_bytes(
        geojson.object_features("a", [1, 2, 3], names_, polygons(labels), colors))
    # three "blocks" (row bands owning the objects that start in them); the middle one has none
    bands = [(0, 15), (15, 18), (18, 40)]
    part_paths = []
    for index, (top, bottom) in enumerate(bands):
        window = labels[top:bottom + 12 if bottom < 40 else 40]          # a halo below holds whole objects
        ids = [i for i in (1, 2, 3) if top <= np.nonzero(labels == i)[0].min() < bottom]
        features = geojson.object_features("a", ids, [names_[i - 1] for i in ids],
                                           polygons(window, ids=ids, origin=(top, 0)), colors)
        path = str(tmp_path / f"part-{index}.json")
        geojson_out.write_part(path, features)
        part_paths.append(path)
    assert (tmp_path / "part-1.json").read_bytes() == b""
    out = str(tmp_path / names.geojson_path("a"))
    geojson_out.write_collection(out, part_paths)
    assert (tmp_path / names.geojson_path("a")).read_bytes() == whole
    validate(whole)
    empty = tmp_path / "empty.geojson"
    geojson_out.write_collection(str(empty), [part_paths[1]])
    assert validate(empty.read_bytes())["features"] == []


def test_objects_table_outline_column_round_trips_to_geojson(tmp_path):
    mask, labels = two_class_image()
    confidence = np.full(mask.shape, 0.75, np.float32)
    found = instance_table(labels, mask, confidence)
    table = label_outputs.objects_table("img", found, ("background", "nucleus", "other"), None,
                                        outlines=polygons(labels, ids=found["object_id"]))
    assert table.schema == names.OBJECTS_SCHEMA
    back = pq.read_table(io.BytesIO(label_outputs.parquet_bytes(table)), use_threads=False)
    outline = back.column("outline").to_pylist()
    assert [shape({"type": "Polygon", "coordinates": o}).area for o in outline] == back.column("area").to_pylist()
    features = geojson_out.table_features(back, ("background", "nucleus", "other"))
    collection = validate(geojson.collection_bytes(features))
    assert [f["properties"]["object_id"] for f in collection["features"]] == [1, 2, 3]
    assert collection["features"][0]["properties"]["classification"]["color"] == geojson.class_color(1)
    assert collection["features"][0]["properties"]["measurements"]["mean_confidence"] == pytest.approx(0.75)
    plain = label_outputs.objects_table("img", found, ("background", "nucleus", "other"), None)
    assert plain.column("outline").null_count == 3                           # callers without outlines
    assert geojson_out.table_features(plain, ("background", "nucleus", "other")) == []
    with pytest.raises(ValueError, match="2 outlines for 3 objects"):
        label_outputs.objects_table("img", found, ("background", "nucleus", "other"), None, outlines=[None, None])


def test_a_feature_without_a_closed_ring_is_refused():
    with pytest.raises(ValueError, match="closed exterior ring"):
        geojson.feature("a", 1, [[[0, 0], [1, 0], [0, 0]]], "x", [1, 2, 3])


def test_gs_paths_through_the_emulator(gcs_emulator):
    mask, labels = two_class_image()
    features = list(geojson.object_features("g", [3], ["other"], polygons(labels, ids=[3]), {"other": [1, 2, 3]}))
    root = f"{gcs_emulator}/geojson-{uuid.uuid4().hex[:8]}"
    geojson_out.write_part(f"{root}/p0.json", features)
    geojson_out.write_collection(f"{root}/{names.geojson_path('g')}", [f"{root}/p0.json"])
    from pipelines.beam.files import read_bytes
    assert read_bytes(f"{root}/{names.geojson_path('g')}") == geojson.collection_bytes(features)
