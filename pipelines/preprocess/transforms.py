"""Beam transforms of the preprocessing job: list and pair sources, assign splits, and
collect the small per-source results into JSON part files.

Each composite only wires DoFns around the pure code in ``pipelines.core``. Bad inputs
leave through the ``rejected`` tagged output with a reason, and are counted.
"""
from __future__ import annotations

import dataclasses
import json
from collections import Counter
from typing import Any, Iterator

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics

from pipelines.beam.files import write_bytes
from pipelines.core import sources
from schemas.rejected import RejectedInput, rejected_record

REJECTED = "rejected"
NAMESPACE = "tessera.preprocess"


def reject(record: dict) -> beam.pvalue.TaggedOutput:
    Metrics.counter(NAMESPACE, "rejected").inc()
    Metrics.counter(NAMESPACE, f"rejected_{record['reason']}").inc()
    return beam.pvalue.TaggedOutput(REJECTED, record)


def match_files(pattern: str) -> list[tuple[str, int]]:
    """(path, bytes) of the files matching ``pattern``; a zarr store is one entry (its chunk
    files are not inputs), its bytes summed."""
    sizes: dict[str, int] = {}
    for m in FileSystems.match([pattern])[0].metadata_list:
        at = m.path.lower().find(".zarr/")
        path = m.path if at < 0 else m.path[:at + len(".zarr")]
        sizes[path] = sizes.get(path, 0) + m.size_in_bytes
    return sorted(sizes.items())


class _PairFiles(beam.DoFn):
    """(key, {'images': [...], 'masks': [...]}) -> Source, or rejected records."""

    def process(self, keyed: tuple[str, dict]) -> Iterator[Any]:
        key, files = keyed
        sizes = dict(list(files["images"]) + list(files["masks"]))
        source, bad = sources.pair(key, [p for p, _ in files["images"]], [p for p, _ in files["masks"]])
        for record in bad:
            yield reject(record)
        if source is not None:
            yield dataclasses.replace(source, num_bytes=sizes[source.image_path] + sizes[source.mask_path])


class ReadImagePairs(beam.PTransform):
    """Segmentation sources: ``root/images/**`` paired with ``root/masks/**`` by relative stem."""

    def __init__(self, root: str):
        super().__init__()
        self.root = root.rstrip("/")

    def expand(self, pbegin):
        def keyed_files(kind: str):
            return (pbegin
                    | f"Match{kind}" >> beam.Create([f"{self.root}/{kind}/**"])
                    | f"List{kind}" >> beam.FlatMap(match_files)
                    | f"Key{kind}" >> beam.Map(lambda f: (sources.segmentation_key(f[0], self.root)[0], f)))

        return ({"images": keyed_files("images"), "masks": keyed_files("masks")}
                | "GroupById" >> beam.CoGroupByKey()
                | "Pair" >> beam.ParDo(_PairFiles()).with_outputs(REJECTED, main="sources"))


class ReadClassFolders(beam.PTransform):
    """Classification sources: ``root/<class>/**`` with the class from the folder name."""

    def __init__(self, root: str, class_names: tuple[str, ...]):
        super().__init__()
        self.root = root.rstrip("/")
        self.class_names = class_names

    def expand(self, pbegin):
        return (pbegin
                | "Match" >> beam.Create([f"{self.root}/**"])
                | "List" >> beam.FlatMap(match_files)
                | "ToSource" >> beam.ParDo(_ClassSource(self.root, self.class_names)).with_outputs(
                    REJECTED, main="sources"))


class _ClassSource(beam.DoFn):
    def __init__(self, root: str, class_names: tuple[str, ...]):
        self.root, self.class_names = root, class_names

    def process(self, listed: tuple[str, int]) -> Iterator[Any]:
        path, size = listed
        if not sources.has_image_extension(path):
            yield reject(rejected_record(path, "not_an_image", "not an image file extension"))
            return
        try:
            source = sources.classification_source(path, self.root)
        except ValueError as error:
            yield reject(rejected_record(path, "no_class_folder", str(error)))
            return
        if source.label not in self.class_names:
            yield reject(rejected_record(path, "unknown_class", f"class {source.label!r} is not in {self.class_names}"))
        else:
            yield dataclasses.replace(source, num_bytes=size)


class RejectDuplicateIds(beam.PTransform):
    """Sources sharing an id (``cup/a.png`` and ``cup/a.jpg``) are all rejected: neither is guessed."""

    def expand(self, pcoll):
        def unique(keyed):
            key, group = keyed
            group = sorted(group, key=lambda s: s.image_path)
            if len(group) == 1:
                yield group[0]
                return
            paths = [s.image_path for s in group]
            for s in group:
                yield reject(rejected_record(s.image_path, "duplicate_id",
                                              f"{len(group)} files share the id {key!r}: {paths}"))

        return (pcoll
                | "ById" >> beam.Map(lambda s: (s.id, s))
                | "GroupById" >> beam.GroupByKey()
                | "Unique" >> beam.FlatMap(unique).with_outputs(REJECTED, main="sources"))


class AssignSplits(beam.PTransform):
    """Sets ``Source.split``: explicit split folders win; else a stable hash of the id.

    ``stratify`` (classification): per class, so every class reaches every split it can.
    ``folds`` > 0: k-fold instead (``sources.fold_splits``; per class when stratified), fold
    ``fold`` is val. ``--split-file`` is :class:`AssignSplitsFromTable`.
    """

    def __init__(self, fractions: tuple[float, ...], stratify: bool, salt: str = "", folds: int = 0, fold: int = 0):
        super().__init__()
        self.fractions, self.stratify, self.salt, self.folds, self.fold = fractions, stratify, salt, folds, fold

    def expand(self, pcoll):
        fractions, salt, stratify, folds, fold = self.fractions, self.salt, self.stratify, self.folds, self.fold
        if not stratify and not folds:
            return pcoll | "HashSplit" >> beam.Map(
                lambda s: s if s.split else dataclasses.replace(s, split=sources.assign_split(s.id, fractions, salt)))

        def grouped(keyed):
            _, group = keyed
            group = list(group)
            fixed = [s for s in group if s.split]
            ids = [s.id for s in group if not s.split]
            splits = sources.fold_splits(ids, folds, fold, salt) if folds else \
                sources.stratified_splits(ids, fractions, salt)
            return fixed + [dataclasses.replace(s, split=splits[s.id]) for s in group if not s.split]

        return (pcoll
                | "ByGroup" >> beam.Map(lambda s: (s.label if stratify else "", s))
                | "GroupSources" >> beam.GroupByKey()
                | "Split" >> beam.FlatMap(grouped))


class AssignSplitsFromTable(beam.PTransform):
    """``--split-file``: each source's split from ``table`` (id -> split); split folders win;
    a source the table does not name is rejected (``not_in_split_file``)."""

    def __init__(self, table: dict[str, str], name: str):
        super().__init__()
        self.table, self.name = table, name

    def expand(self, pcoll):
        table, name = self.table, self.name

        def assign(s):
            if s.split:
                yield s
            elif s.id in table:
                yield dataclasses.replace(s, split=table[s.id])
            else:
                yield reject(rejected_record(s.image_path, "not_in_split_file",
                                              f"the id {s.id!r} is not in --split-file {name}; add it with its split"))

        return pcoll | "SplitFromTable" >> beam.FlatMap(assign).with_outputs(REJECTED, main="sources")


class PlanLargeSources(beam.DoFn):
    """Source -> itself (whole-image path), or the SourceBlocks of a large one (headers only);
    the pixel size of region-readable sources from their header (else ``--pixel-size``)."""

    def __init__(self, settings, spec, mask_policy):
        self.settings, self.spec, self.mask_policy = settings, spec, mask_policy

    def process(self, source: sources.Source) -> Iterator[Any]:
        from pipelines.preprocess import examples, large

        try:
            blocks, pixel_size = large.plan_source(source, self.settings, self.spec, self.mask_policy)
        except RejectedInput as error:
            yield reject(examples.rejected_source(source, error))
            return
        except (OSError, ValueError) as error:
            yield reject(examples.rejected_source(source, RejectedInput("unreadable", f"{type(error).__name__}: "
                                                                                      f"{error}")))
            return
        if blocks is None:
            yield dataclasses.replace(source, pixel_size_um=pixel_size)
            return
        Metrics.counter(NAMESPACE, "large_sources").inc()
        Metrics.counter(NAMESPACE, "source_blocks").inc(len(blocks))
        yield from blocks


class _SumSources(beam.CombineFn):
    """Per-unit stats (``examples.unit_stats``) -> {source id: the same summed over its units}."""

    def create_accumulator(self):
        return {}

    def add_input(self, acc, stats):
        return self._add(acc, {**stats, "units_failed": int(stats["failed"]), "units_seen": 1})

    def merge_accumulators(self, accs):
        out = self.create_accumulator()
        for acc in accs:
            for summed in acc.values():
                self._add(out, summed)
        return out

    @staticmethod
    def _add(acc, stats):
        mine = acc.get(stats["source_id"])
        if mine is None:
            acc[stats["source_id"]] = dict(stats)
            return acc
        for key in (*examples_counts(), "units_failed", "units_seen"):
            mine[key] += stats[key]
        if stats["class_pixels"] is not None:
            mine["class_pixels"] = [a + b for a, b in zip(mine["class_pixels"], stats["class_pixels"])]
        return acc

    def extract_output(self, acc):
        return summarise(acc.values())


def examples_counts() -> tuple[str, ...]:
    from pipelines.preprocess.examples import TILE_COUNTS

    return (*TILE_COUNTS, "rejected_tiles")


def summarise(per_source) -> dict:
    """The dataset's source statistics from the per-source sums: sources per split (those with
    a block that was read), class pixels and labels of the train split, tile counts (in
    total and per source), sources none of whose blocks could be read, pixel sizes."""
    written, class_pixels, labels, tiles, failed, detail = Counter(), None, Counter(), Counter(), [], {}
    for s in sorted(per_source, key=lambda s: s["source_id"]):
        if s["units_failed"] == s["units_seen"]:
            failed.append(s["source_id"])
            continue
        written[s["split"]] += 1
        counts = {k: s[k] for k in examples_counts()}
        tiles.update(counts)
        detail[s["source_id"]] = {**counts, "split": s["split"], "level": s["level"], "units": s["units"],
                                  "pixel_size_um": s["pixel_size_um"], "intensity_range": s.get("intensity_range")}
        if s["split"] == "train":
            if s["class_pixels"] is not None:
                class_pixels = s["class_pixels"] if class_pixels is None else [
                    a + b for a, b in zip(class_pixels, s["class_pixels"])]
            if s["label"] is not None:
                labels[s["label"]] += 1
    return {"sources": dict(written), "class_pixels": class_pixels, "labels": dict(labels),
            "tiles": dict(tiles), "per_source": detail, "failed_sources": failed}


class SummariseSources(beam.PTransform):
    def __init__(self, path: str):
        super().__init__()
        self.path = path

    def expand(self, pcoll):
        path = self.path

        def write(summary):
            write_bytes(path, json.dumps(summary, sort_keys=True).encode())

        return pcoll | "Sum" >> beam.CombineGlobally(_SumSources()) | "Write" >> beam.Map(write)


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
