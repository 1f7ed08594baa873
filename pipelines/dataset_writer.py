"""Writing a TFDS-format dataset: encode examples, write sized shards, finalise, commit.

Shards are deterministic: the number of shards of a split follows its total encoded
size (``shard_bytes`` target), an example's shard follows a stable hash of its id, and
records inside a shard are sorted by id, so a rerun writes byte-identical files.
Everything is written under a temporary directory beside the output and moved into
place only when complete (see :func:`commit`).
"""
from __future__ import annotations

import hashlib
import io
import json
import math
import os
import shutil
import tempfile
import uuid
from typing import Any, Iterable

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems
from apache_beam.io.tfrecordio import _TFRecordUtil

from pipelines import images, sources
from schemas import layout
from schemas.example import PROVENANCE_FIELDS, DatasetSpec, tfds_features

PARTS = "_parts"


def manifest_row(example: dict) -> dict:
    row = {name: example.get(name) for name in layout.MANIFEST_SCHEMA.names}
    row["label"] = example.get("label") or ""
    return row


class _Encode(beam.DoFn):
    """Example dict -> (split, id, serialized tf.train.Example, manifest row)."""

    def __init__(self, spec: DatasetSpec, png_compression: int):
        self.spec, self.png_compression = spec, png_compression

    def setup(self):
        from tensorflow_datasets.core import example_serializer

        self._features = tfds_features(self.spec)
        self._serializer = example_serializer.ExampleSerializer(self._features.get_serialized_info())

    def process(self, example: dict):
        feature_values = {name: example[name] for name in PROVENANCE_FIELDS}
        feature_values["image"] = images.encode_png(example["image"], compress_level=self.png_compression)
        if "mask" in example:
            feature_values["mask"] = images.encode_png(example["mask"], compress_level=self.png_compression)
        else:
            feature_values["label"] = example["label"]
        encoded = self._features.encode_example(feature_values)
        data = self._serializer.get_tf_example(encoded).SerializeToString(deterministic=True)
        row = manifest_row(example)
        row["num_bytes"] = len(data)
        yield example["split"], example["id"], data, row


class EncodeExamples(beam.PTransform):
    def __init__(self, spec: DatasetSpec, png_compression: int = 1):
        super().__init__()
        self.spec, self.png_compression = spec, png_compression

    def expand(self, pcoll):
        return pcoll | "Encode" >> beam.ParDo(_Encode(self.spec, self.png_compression))


def shard_count(total_bytes: int, shard_bytes: int) -> int:
    return max(1, math.ceil(total_bytes / shard_bytes))


def shard_of(example_id: str, count: int) -> int:
    return int(sources.hash_fraction("shard:" + example_id) * count)


class _WriteShard(beam.DoFn):
    def __init__(self, directory: str):
        self.directory = directory

    def process(self, keyed):
        (split, index, count), records = keyed
        records = sorted(records, key=lambda r: r[1])
        name = layout.shard_name(split, index, count)
        digest = hashlib.sha256()
        buffer = io.BytesIO()
        for _, _, data, _ in records:
            _TFRecordUtil.write_record(buffer, data)
        payload = buffer.getvalue()
        digest.update(payload)
        with FileSystems.create(f"{self.directory}/{name}") as handle:
            handle.write(payload)
        rows = [dict(r[3], shard=name) for r in records]
        table = pa.Table.from_pylist(rows, schema=layout.MANIFEST_SCHEMA)
        with FileSystems.create(f"{self.directory}/{PARTS}/manifest-{split}-{index:05d}.parquet") as handle:
            pq.write_table(table, handle)
        yield {"split": split, "index": index, "count": count, "name": name,
               "num_examples": len(records), "num_bytes": len(payload), "sha256": digest.hexdigest()}


class WriteShards(beam.PTransform):
    """(split, id, bytes, row) -> shard files + manifest parts; yields one info dict per shard."""

    def __init__(self, directory: str, shard_bytes: int):
        super().__init__()
        self.directory, self.shard_bytes = directory, shard_bytes

    def expand(self, encoded):
        shard_bytes = self.shard_bytes
        counts = (encoded
                  | "SizeBySplit" >> beam.Map(lambda r: (r[0], len(r[2])))
                  | "SumBySplit" >> beam.CombinePerKey(sum)
                  | "ShardCount" >> beam.MapTuple(lambda split, total: (split, shard_count(total, shard_bytes))))

        def key_by_shard(record, counts):
            count = counts[record[0]]
            return (record[0], shard_of(record[1], count), count), record

        return (encoded
                | "KeyByShard" >> beam.Map(key_by_shard, counts=beam.pvalue.AsDict(counts))
                | "GroupByShard" >> beam.GroupByKey()
                | "WriteShard" >> beam.ParDo(_WriteShard(self.directory)))


class WriteJson(beam.PTransform):
    """Collects a (small) PCollection into one JSON list file."""

    def __init__(self, path: str):
        super().__init__()
        self.path = path

    def expand(self, pcoll):
        path = self.path

        def write(items):
            with FileSystems.create(path) as handle:
                handle.write(json.dumps(sorted(items, key=lambda i: json.dumps(i, sort_keys=True)),
                                        sort_keys=True).encode())
            return path

        return pcoll | "ToList" >> beam.combiners.ToList() | "Write" >> beam.Map(write)


# ---------------------------------------------------------------- driver-side finalisation

def read_json(path: str) -> Any:
    with FileSystems.open(path) as handle:
        return json.loads(handle.read())


def write_bytes(path: str, data: bytes) -> None:
    with FileSystems.create(path) as handle:
        handle.write(data)


def write_tfds_metadata(directory: str, spec: DatasetSpec, shards: list[dict], description: str) -> None:
    """dataset_info.json + features.json (via TFDS, written locally, copied through FileSystems)."""
    import tensorflow_datasets as tfds

    split_infos = []
    for split in layout.SPLITS:
        mine = sorted((s for s in shards if s["split"] == split), key=lambda s: s["index"])
        if mine:
            split_infos.append(tfds.core.SplitInfo(
                name=split, shard_lengths=[s["num_examples"] for s in mine],
                num_bytes=sum(s["num_bytes"] for s in mine)))
    local = tempfile.mkdtemp(prefix="tessera-meta-")
    try:
        for shard in shards:  # TFDS derives the file template from files present: empty stand-ins
            open(os.path.join(local, shard["name"]), "wb").close()
        tfds.folder_dataset.write_metadata(
            data_dir=local, features=tfds_features(spec), split_infos=split_infos,
            filename_template=layout.SHARD_TEMPLATE, check_data=False, description=description)
        for name in ("dataset_info.json", "features.json"):
            with open(os.path.join(local, name), "rb") as handle:
                write_bytes(f"{directory}/{name}", handle.read())
    finally:
        shutil.rmtree(local, ignore_errors=True)


def merge_manifest(directory: str) -> int:
    paths = sorted(m.path for m in FileSystems.match([f"{directory}/{PARTS}/manifest-*.parquet"])[0].metadata_list)
    tables = []
    for path in paths:
        with FileSystems.open(path) as handle:
            tables.append(pq.read_table(io.BytesIO(handle.read()), schema=layout.MANIFEST_SCHEMA))
    table = pa.concat_tables(tables) if tables else layout.MANIFEST_SCHEMA.empty_table()
    table = table.sort_by([("split", "ascending"), ("shard", "ascending"), ("id", "ascending")])
    sink = io.BytesIO()
    pq.write_table(table, sink)
    write_bytes(f"{directory}/{layout.MANIFEST_FILE}", sink.getvalue())
    return table.num_rows


def fingerprint(shards: Iterable[dict]) -> str:
    lines = sorted(f"{s['name']}:{s['sha256']}" for s in shards)
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


def temporary_output(output: str) -> str:
    return f"{output.rstrip('/')}.tmp-{uuid.uuid4().hex[:12]}"


def output_exists(output: str) -> bool:
    return bool(FileSystems.match([f"{output.rstrip('/')}/**"])[0].metadata_list) or (
        not output.startswith("gs://") and os.path.exists(output))


def delete_tree(path: str) -> None:
    if path.startswith("gs://"):
        files = [m.path for m in FileSystems.match([f"{path.rstrip('/')}/**"])[0].metadata_list]
        if files:
            FileSystems.delete(files)
    elif os.path.exists(path):
        shutil.rmtree(path)


def commit(temporary: str, output: str, overwrite: bool) -> None:
    """Moves a complete dataset from ``temporary`` to ``output``; ``_SUCCESS`` lands last.

    Local paths: one directory rename (atomic); an old output is renamed away first and
    deleted after. gs://: objects are copied then deleted (GCS has no rename); readers
    must wait for ``_SUCCESS``, which is copied last.
    """
    output = output.rstrip("/")
    if output_exists(output):
        if not overwrite:
            raise FileExistsError(f"{output} already exists; pass --overwrite to replace it")
    delete_tree(f"{temporary}/{PARTS}")
    if not output.startswith("gs://"):
        old = f"{output}.old-{uuid.uuid4().hex[:12]}" if os.path.exists(output) else None
        if old:
            os.rename(output, old)
        os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
        os.rename(temporary, output)
        if old:
            shutil.rmtree(old)
        return
    delete_tree(output)
    files = sorted(m.path for m in FileSystems.match([f"{temporary}/**"])[0].metadata_list)
    last = [f for f in files if f.endswith("/" + layout.SUCCESS_FILE)]
    for batch in ([f for f in files if f not in last], last):
        if batch:
            FileSystems.rename(batch, [output + f[len(temporary):] for f in batch])
