"""Writing a TFDS-format dataset: encode examples, write sized shards, finalise, commit.

Shards are deterministic: the number of shards of a split follows its estimated size
(``shard_bytes`` target), a source's shard follows a stable hash of its id, and records
inside a shard come in source-id then tile order, so a rerun writes byte-identical files.
Everything is written under a temporary directory beside the output and moved into
place only when complete (see :func:`commit`).
"""
from __future__ import annotations

import hashlib
import io
import json
import logging
import math
import os
import shutil
import tempfile
import time
import uuid
from typing import Any, Iterable, Iterator

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems
from apache_beam.io.tfrecordio import _TFRecordUtil
from apache_beam.metrics import Metrics

from pipelines.preprocess import example_proto
from pipelines.core import images
from pipelines.core import pixels
from pipelines.beam import progress
from pipelines.core import sources
from pipelines.beam.files import read_bytes, write_bytes
from pipelines.preprocess import transforms as pt
from schemas import layout
from schemas.example import PROVENANCE_FIELDS, DatasetSpec, tfds_features

PARTS = "_parts"


def manifest_row(example: dict, num_bytes: int, shard: str) -> dict:
    row = {name: example.get(name) for name in layout.MANIFEST_SCHEMA.names}
    row.update(label=example.get("label") or "", num_bytes=num_bytes, shard=shard)
    return row


class ExampleEncoder:
    """Example dict -> serialized tf.train.Example bytes: PNG by Pillow, deterministic, no TensorFlow."""

    def __init__(self, spec: DatasetSpec, png_compression: int = 1):
        self.png_compression = png_compression
        self.label_ids = {name: i for i, name in enumerate(spec.class_names)}

    def encode(self, example: dict) -> bytes:
        values: dict[str, Any] = {name: example[name] for name in PROVENANCE_FIELDS}
        values["image"] = pixels.encode_png(example["image"], compress_level=self.png_compression)
        if "mask" in example:
            values["mask"] = pixels.encode_png(example["mask"], compress_level=self.png_compression)
        else:
            values["label"] = self.label_ids[example["label"]]
        return example_proto.serialize_example(values)


def estimated_bytes(source: sources.Source, spec: DatasetSpec, augment_copies: int) -> float:
    """A rough size of a source's encoded examples, from its file size (JPEG re-encodes ~3x larger)."""
    tile_overhead = 1.0 if spec.whole_image else (spec.tile_size / spec.core) ** 2
    copies = 1 + (augment_copies if source.split == "train" else 0)
    jpeg = source.image_path.lower().endswith((".jpg", ".jpeg"))
    return source.num_bytes * tile_overhead * copies * (3.0 if jpeg else 1.0)


def shard_count(estimated: float, sources_in_split: int, shard_bytes: int, min_shards: int) -> int:
    by_size = math.ceil(estimated / shard_bytes)
    return max(1, min(sources_in_split, max(by_size, min_shards)))


def plan_shards(split_sources: list[sources.Source], spec: DatasetSpec, augment_copies: int,
                shard_bytes: int, min_shards: int) -> Iterator[tuple[tuple[str, int, int], sources.Source]]:
    """((split, shard index, shard count), source) for every source of one split.

    Sources are ordered by a stable hash of their id and cut into contiguous, equally
    sized runs, so no shard is empty and the plan does not depend on the runner.
    """
    ordered = sorted(split_sources, key=lambda s: (sources.hash_fraction("shard:" + s.id), s.id))
    estimated = sum(estimated_bytes(s, spec, augment_copies) for s in ordered)
    count = shard_count(estimated, len(ordered), shard_bytes, min_shards)
    for rank, source in enumerate(ordered):
        yield (source.split, rank * count // len(ordered), count), source


class _HashingWriter:
    """Writes TFRecords to a file handle while hashing and counting what it wrote."""

    def __init__(self, handle):
        self.handle, self.digest, self.size = handle, hashlib.sha256(), 0

    def write(self, data: bytes) -> None:
        self.handle.write(data)
        self.digest.update(data)
        self.size += len(data)


class _BuildShard(beam.DoFn):
    """One shard: decode its sources in id order, cut and augment tiles, encode, stream to the file."""

    def __init__(self, directory: str, settings, image_policy, mask_policy, png_compression: int):
        self.directory, self.settings = directory, settings
        self.image_policy, self.mask_policy, self.png_compression = image_policy, mask_policy, png_compression

    def setup(self):
        self.encoder = ExampleEncoder(self.settings.spec, self.png_compression)

    def process(self, keyed):
        (split, index, count), shard_sources = keyed
        name = layout.shard_name(split, index, count)
        rows, started = [], time.monotonic()
        counters = progress.CounterFile(f"{self.directory}/{PARTS}/progress/{name}.json")
        with FileSystems.create(f"{self.directory}/{name}") as handle:
            writer = _HashingWriter(handle)
            for source in sorted(shard_sources, key=lambda s: s.id):
                try:
                    image, mask = pt.decode_source(source, self.image_policy, self.mask_policy)
                except images.RejectedInput as error:
                    counters.add(rejected=1)
                    yield pt.reject(pt.rejected_source(source, error))
                    continue
                before = len(rows)
                for example in pt.tile_examples(source, image, mask, self.settings):
                    data = self.encoder.encode(example)
                    _TFRecordUtil.write_record(writer, data)
                    rows.append(manifest_row(example, len(data), name))
                Metrics.counter(pt.NAMESPACE, "sources_written").inc()
                counters.add(sources=1, examples=len(rows) - before, pixels=int(image.shape[0] * image.shape[1]))
                yield beam.pvalue.TaggedOutput("source_stats", pt.source_stats(source, mask, self.settings.spec))
        counters.flush()
        Metrics.counter(pt.NAMESPACE, "examples").inc(len(rows))
        table = pa.Table.from_pylist(sorted(rows, key=lambda r: r["id"]), schema=layout.MANIFEST_SCHEMA)
        with FileSystems.create(f"{self.directory}/{PARTS}/manifest-{split}-{index:05d}.parquet") as handle:
            pq.write_table(table, handle)
        logging.info("shard %s: %d examples, %.1f MB in %.1f s", name, len(rows), writer.size / 1e6,
                     time.monotonic() - started)
        yield {"split": split, "index": index, "count": count, "name": name,
               "num_examples": len(rows), "num_bytes": writer.size, "sha256": writer.digest.hexdigest()}


class WriteShards(beam.PTransform):
    """Sources -> shard files (+ manifest parts): info dicts, ``rejected`` and ``source_stats`` outputs.

    Only the small Source records are shuffled (grouped by shard); decoded pixels and
    encoded examples never leave the worker that makes them. A split gets
    ``max(estimated bytes / shard_bytes, min_shards)`` shards, capped by its number of
    sources (see :func:`plan_shards`).
    """

    def __init__(self, directory: str, settings, image_policy, mask_policy, shard_bytes: int,
                 min_shards: int = 4, png_compression: int = 1):
        super().__init__()
        self.directory, self.settings, self.shard_bytes, self.min_shards = directory, settings, shard_bytes, min_shards
        self.image_policy, self.mask_policy, self.png_compression = image_policy, mask_policy, png_compression

    def expand(self, split_sources):
        spec, copies = self.settings.spec, self.settings.augment_copies
        shard_bytes, min_shards = self.shard_bytes, self.min_shards
        return (split_sources
                | "BySplit" >> beam.Map(lambda s: (s.split, s))
                | "GroupBySplit" >> beam.GroupByKey()
                | "PlanShards" >> beam.FlatMapTuple(
                    lambda _, group: plan_shards(list(group), spec, copies, shard_bytes, min_shards))
                | "GroupByShard" >> beam.GroupByKey()
                | "BuildShard" >> beam.ParDo(_BuildShard(
                    self.directory, self.settings, self.image_policy, self.mask_policy, self.png_compression)
                ).with_outputs(pt.REJECTED, "source_stats", main="shards"))


class WriteJson(beam.PTransform):
    """Collects a (small) PCollection into one JSON list file."""

    def __init__(self, path: str):
        super().__init__()
        self.path = path

    def expand(self, pcoll):
        path = self.path

        def write(items):
            write_bytes(path, json.dumps(sorted(items, key=lambda i: json.dumps(i, sort_keys=True)),
                                         sort_keys=True).encode())
            return path

        return pcoll | "ToList" >> beam.combiners.ToList() | "Write" >> beam.Map(write)


# ---------------------------------------------------------------- driver-side finalisation

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


def merge_manifest(directory: str) -> pa.Table:
    """Joins the shards' manifest parts into ``manifest.parquet``; returns the table."""
    paths = sorted(m.path for m in FileSystems.match([f"{directory}/{PARTS}/manifest-*.parquet"])[0].metadata_list)
    tables = [pq.read_table(io.BytesIO(read_bytes(p)), schema=layout.MANIFEST_SCHEMA, use_threads=False)
              for p in paths]
    table = pa.concat_tables(tables) if tables else layout.MANIFEST_SCHEMA.empty_table()
    table = table.sort_by([("split", "ascending"), ("shard", "ascending"), ("id", "ascending")])
    sink = io.BytesIO()
    pq.write_table(table, sink)
    write_bytes(f"{directory}/{layout.MANIFEST_FILE}", sink.getvalue())
    return table


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


def keep_only_reports(work: str) -> str:
    """After a refused run: deletes shards and parts, keeps what explains the refusal."""
    keep = {layout.REJECTED_FILE, layout.STATS_FILE, layout.CONFIG_FILE}
    files = [m.path for m in FileSystems.match([f"{work}/**"])[0].metadata_list]
    doomed = [f for f in files if f[len(work) + 1:] not in keep]
    if doomed:
        FileSystems.delete(doomed)
    if not work.startswith("gs://"):  # empty local folders left by the parts
        for root, dirs, _ in os.walk(work, topdown=False):
            for d in dirs:
                if not os.listdir(os.path.join(root, d)):
                    os.rmdir(os.path.join(root, d))
    return work


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
