"""Writing a TFDS-format dataset's shards: encode examples, plan sized shards, stream them to files.

Shards are deterministic: the number of shards of a split follows its estimated size
(``shard_bytes`` target), a source's shard follows a stable hash of its id, and records
inside a shard come in source-id then tile order, so a rerun writes byte-identical files.
Each shard also writes its part of the manifest and its progress counters under
``<work>/_parts/``; ``finalise`` joins them.
"""
from __future__ import annotations

import hashlib
import logging
import math
import time
from typing import Any, Iterator

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics

from pipelines.beam import progress
from pipelines.core import pixels, sources
from pipelines.preprocess import example_proto, examples
from pipelines.preprocess.transforms import NAMESPACE, REJECTED, reject
from schemas import layout
from schemas.example import PROVENANCE_FIELDS, DatasetSpec
from schemas.rejected import RejectedInput


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
        counters = progress.CounterFile(f"{self.directory}/{layout.WORK_PARTS}/progress/{name}.json")
        with FileSystems.create(f"{self.directory}/{name}") as handle:
            writer = _HashingWriter(handle)
            for source in sorted(shard_sources, key=lambda s: s.id):
                try:
                    image, mask = examples.decode_source(source, self.image_policy, self.mask_policy,
                                                           self.settings.input_root, self.settings.follow_symlinks)
                except RejectedInput as error:
                    counters.add(rejected=1)
                    yield reject(examples.rejected_source(source, error))
                    continue
                before = len(rows)
                for example in examples.tile_examples(source, image, mask, self.settings):
                    data = self.encoder.encode(example)
                    writer.write(example_proto.tfrecord(data))
                    rows.append(manifest_row(example, len(data), name))
                Metrics.counter(NAMESPACE, "sources_written").inc()
                counters.add(sources=1, examples=len(rows) - before, pixels=int(image.shape[0] * image.shape[1]))
                yield beam.pvalue.TaggedOutput("source_stats", examples.source_stats(source, mask, self.settings.spec))
        counters.flush()
        Metrics.counter(NAMESPACE, "examples").inc(len(rows))
        table = pa.Table.from_pylist(sorted(rows, key=lambda r: r["id"]), schema=layout.MANIFEST_SCHEMA)
        with FileSystems.create(f"{self.directory}/{layout.WORK_PARTS}/manifest-{split}-{index:05d}.parquet") as handle:
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
                ).with_outputs(REJECTED, "source_stats", main="shards"))


# ---------------------------------------------------------------- driver-side finalisation
