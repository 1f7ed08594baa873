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
import os
import time
from collections import Counter
from typing import Any, Iterator

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics

from pipelines.beam import progress
from pipelines.core import pixels, sources
from pipelines.preprocess import example_proto, examples, large
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
        if "weight" in example:
            values["weight"] = pixels.encode_png(example["weight"], compress_level=self.png_compression)
        if "distance" in example:
            values["distance"] = pixels.encode_png(example["distance"], compress_level=self.png_compression)
        return example_proto.serialize_example(values)


def unit_order(unit) -> tuple[str, int]:
    """Where a unit (a whole Source or a SourceBlock of a large one) goes in its shard."""
    return unit.id, getattr(unit, "index", 0)


def estimated_bytes(unit, spec: DatasetSpec, augment_copies: int) -> float:
    """A rough size of a unit's encoded examples: from its file size (JPEG re-encodes ~3x
    larger), or for a block of a large source half its decoded bytes (PNG of natural images)."""
    tile_overhead = 1.0 if spec.whole_image else (spec.tile_size / spec.core) ** 2
    source = unit if isinstance(unit, sources.Source) else unit.source
    copies = 1 + (augment_copies if source.split == "train" else 0)
    if isinstance(unit, large.SourceBlock):
        (a, b), (c, d) = unit.rows, unit.cols
        base = (b - a) * (d - c) * spec.channels * (2 if spec.dtype == "uint16" else 1) * 0.5
    else:
        base = source.num_bytes * (3.0 if source.image_path.lower().endswith((".jpg", ".jpeg")) else 1.0)
    return base * tile_overhead * copies


def shard_count(estimated: float, units_in_split: int, shard_bytes: int, min_shards: int) -> int:
    by_size = math.ceil(estimated / shard_bytes)
    return max(1, min(units_in_split, max(by_size, min_shards)))


def plan_shards(units: list, spec: DatasetSpec, augment_copies: int,
                shard_bytes: int, min_shards: int) -> Iterator[tuple[tuple[str, int, int], Any]]:
    """((split, shard index, shard count), unit) for every unit of one split.

    Units (whole sources, and blocks of large ones) are ordered by a stable hash of their id
    (and block) and cut into contiguous, equally sized runs, so no shard is empty, one large
    source spreads over many shards, and the plan does not depend on the runner.
    """
    def key(unit):
        name, index = unit_order(unit)
        text = f"shard:{name}" if isinstance(unit, sources.Source) else f"shard:{name}#{index}"
        return sources.hash_fraction(text), name, index

    ordered = sorted(units, key=key)
    estimated = sum(estimated_bytes(u, spec, augment_copies) for u in ordered)
    count = shard_count(estimated, len(ordered), shard_bytes, min_shards)
    for rank, unit in enumerate(ordered):
        yield (unit.split, rank * count // len(ordered), count), unit


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
        self._ranges = {}     # source id -> its intensity range, for its stats

    def process(self, keyed):
        (split, index, count), shard_units = keyed
        name = layout.shard_name(split, index, count)
        rows, started = [], time.monotonic()
        counters = progress.CounterFile(f"{self.directory}/{layout.WORK_PARTS}/progress/{name}.json")
        with FileSystems.create(f"{self.directory}/{name}") as handle:
            writer = _HashingWriter(handle)
            for unit in sorted(shard_units, key=unit_order):
                counts, source = Counter(), getattr(unit, "source", unit)
                try:
                    made = self._unit_examples(unit, counts)
                except RejectedInput as error:
                    if isinstance(unit, large.SourceBlock):   # a block: the source's other blocks go on
                        counters.add(rejected_regions=1)
                        lost = len(large.unit_boxes(unit, self.settings.spec))   # its tiles: cut, then lost
                        counts.update(tiles=lost, rejected_tiles=lost)
                        yield reject(examples.rejected_source(source, error, region=unit.region))
                        yield beam.pvalue.TaggedOutput("source_stats", self._stats(unit, counts, failed=True))
                    else:
                        counters.add(rejected=1)
                        yield reject(examples.rejected_source(source, error))
                    continue
                before = len(rows)
                for example in made:
                    data = self.encoder.encode(example)
                    writer.write(example_proto.tfrecord(data))
                    rows.append(manifest_row(example, len(data), name))
                first = unit_order(unit)[1] == 0          # a source counts once, with its first block
                Metrics.counter(NAMESPACE, "sources_written" if first else "blocks_written").inc()
                counters.add(sources=int(first), examples=len(rows) - before, pixels=counts["pixels"])
                yield beam.pvalue.TaggedOutput("source_stats", self._stats(unit, counts, failed=False))
        counters.flush()
        Metrics.counter(NAMESPACE, "examples").inc(len(rows))
        table = pa.Table.from_pylist(sorted(rows, key=lambda r: r["id"]), schema=layout.MANIFEST_SCHEMA)
        with FileSystems.create(f"{self.directory}/{layout.WORK_PARTS}/manifest-{split}-{index:05d}.parquet") as handle:
            pq.write_table(table, handle)
        logging.info("shard %s: %d examples, %.1f MB in %.1f s", name, len(rows), writer.size / 1e6,
                     time.monotonic() - started)
        yield {"split": split, "index": index, "count": count, "name": name, "worker": os.getpid(),
               "units": [list(unit_order(u)) for u in sorted(shard_units, key=unit_order)],
               "num_examples": len(rows), "num_bytes": writer.size, "sha256": writer.digest.hexdigest()}

    def _unit_examples(self, unit, counts: Counter):
        """The examples of a unit, once all its pixels are read (RejectedInput before any)."""
        settings = self.settings
        if isinstance(unit, large.SourceBlock):
            try:
                read = large.read_block(unit, settings.spec, self.image_policy, self.mask_policy)
            except (OSError, ValueError, RuntimeError) as error:   # a codec's error on a damaged tile
                raise RejectedInput("unreadable_region", f"{unit.source.image_path}: rows {unit.rows}, columns "
                                    f"{unit.cols} of level {unit.level} ({type(error).__name__}: {error})") from error
            counts["pixels"] = (unit.rows[1] - unit.rows[0]) * (unit.cols[1] - unit.cols[0])
            return large.block_examples(unit, read, settings, counts)
        ranges = []
        image, mask, instances = examples.decode_source(unit, self.image_policy, self.mask_policy,
                                                        settings.input_root, settings.follow_symlinks, ranges)
        counts["pixels"] = int(image.shape[0] * image.shape[1])
        self._ranges[unit.id] = ranges[0] if ranges else None
        return examples.tile_examples(unit, image, mask, settings, counts, instances)

    def _stats(self, unit, counts: Counter, failed: bool) -> dict:
        block = isinstance(unit, large.SourceBlock)
        return examples.unit_stats(getattr(unit, "source", unit), counts, self.settings.spec,
                                   units=unit.count if block else 1, failed=failed,
                                   level=unit.level if block else 0, pixel_size_um=unit.pixel_size_um,
                                   intensity_range=unit.intensity_range if block else self._ranges.pop(unit.id, None))


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
