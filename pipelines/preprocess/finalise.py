"""Counts and statistics of a preprocessing run, and the files that state them.

``finalise`` runs in the launcher after the pipeline: it turns the pipeline's part files
into ``stats.json``, ``rejected.jsonl``, ``manifest.parquet``, the TFDS metadata and,
last, ``_SUCCESS`` — and checks that nothing was lost (inputs = sources written + rejected).
"""
from __future__ import annotations

import dataclasses
import datetime
import json
from collections import Counter

import apache_beam as beam

from pipelines.preprocess import shards as dataset_writer
from pipelines.core import sources
from pipelines.preprocess.shards import PARTS
from pipelines.beam.files import exists, read_json, write_bytes
from schemas import layout
from schemas.example import DatasetSpec


class _SumSources(beam.CombineFn):
    """Per-source stats -> sources per split, class pixels and labels of the train split."""

    def create_accumulator(self):
        return {"sources": Counter(), "class_pixels": None, "labels": Counter()}

    def add_input(self, acc, stats):
        acc["sources"][stats["split"]] += 1
        if stats["split"] == "train":
            if stats["class_pixels"] is not None:
                pixels = stats["class_pixels"]
                acc["class_pixels"] = pixels if acc["class_pixels"] is None else [
                    a + b for a, b in zip(acc["class_pixels"], pixels)]
            if stats["label"] is not None:
                acc["labels"][stats["label"]] += 1
        return acc

    def merge_accumulators(self, accs):
        out = self.create_accumulator()
        for acc in accs:
            out["sources"].update(acc["sources"])
            out["labels"].update(acc["labels"])
            if acc["class_pixels"] is not None:
                out["class_pixels"] = acc["class_pixels"] if out["class_pixels"] is None else [
                    a + b for a, b in zip(out["class_pixels"], acc["class_pixels"])]
        return out

    def extract_output(self, acc):
        return {"sources": dict(acc["sources"]), "class_pixels": acc["class_pixels"], "labels": dict(acc["labels"])}


class SummariseSources(beam.PTransform):
    def __init__(self, path: str):
        super().__init__()
        self.path = path

    def expand(self, pcoll):
        path = self.path

        def write(summary):
            write_bytes(path, json.dumps(summary, sort_keys=True).encode())

        return pcoll | "Sum" >> beam.CombineGlobally(_SumSources()) | "Write" >> beam.Map(write)


def build_stats(spec: DatasetSpec, shards: list[dict], summary: dict, rejected: list[dict], manifest) -> dict:
    examples = Counter()
    for shard in shards:
        examples[shard["split"]] += shard["num_examples"]
    stats = {"examples": dict(examples), "sources": summary["sources"],
             "rejected": dict(Counter(r["reason"] for r in rejected))}
    pixels = summary.get("class_pixels")
    if pixels is not None:
        total = sum(pixels) or 1
        stats["class_pixels"] = dict(zip(spec.class_names, pixels))
        stats["class_frequencies"] = {n: p / total for n, p in zip(spec.class_names, pixels)}
    if summary.get("labels"):
        stats["labels"] = {n: summary["labels"].get(n, 0) for n in spec.class_names}
    fg = Counter(), Counter()
    for split, value in zip(manifest.column("split").to_pylist(), manifest.column("fg_fraction").to_pylist()):
        fg[0][split] += value
        fg[1][split] += 1
    stats["fg_fraction_mean"] = {s: fg[0][s] / fg[1][s] for s in fg[1]}
    return stats


def finalise(work: str, config, spec: DatasetSpec, empty_folders: list[str], started) -> dict:
    """Writes every metadata file into ``work`` and returns the run's summary."""
    shards = read_json(f"{work}/{PARTS}/shards.json") if exists(f"{work}/{PARTS}/shards.json") else []
    summary = read_json(f"{work}/{PARTS}/sources.json") if exists(f"{work}/{PARTS}/sources.json") else {
        "sources": {}, "class_pixels": None, "labels": {}}
    rejected = read_json(f"{work}/{PARTS}/rejected.json")
    rejected += [sources.rejected(f"{config.input.rstrip('/')}/{folder}", "empty_folder",
                                  "class folder holds no files; the class is left out of the dataset", [])
                 for folder in empty_folders]
    rejected.sort(key=lambda r: (r["source"], r["reason"]))
    dataset_writer.write_tfds_metadata(work, spec, shards, description=f"Tessera {spec.task} dataset from {config.input}")
    manifest = dataset_writer.merge_manifest(work)
    rows = manifest.num_rows
    stats = build_stats(spec, shards, summary, rejected, manifest)
    sources_written = sum(summary["sources"].values())
    distinct = len(set(manifest.column("source_id").to_pylist()))
    if distinct != sources_written or rows != sum(s["num_examples"] for s in shards):
        raise RuntimeError(f"count mismatch: {sources_written} sources tiled, {distinct} in the manifest, "
                           f"{rows} manifest rows vs {sum(s['num_examples'] for s in shards)} examples in shards")
    inputs = sources_written + len(rejected)
    result = {
        "sources_in": inputs, "sources_written": sources_written, "rejected": len(rejected),
        "rejected_fraction": len(rejected) / inputs if inputs else 0.0,
        "examples": stats["examples"], "fingerprint": dataset_writer.fingerprint(shards),
        "started_at": started.isoformat(), "completed_at": datetime.datetime.now(datetime.timezone.utc).isoformat(),
    }
    write_bytes(f"{work}/{layout.REJECTED_FILE}", "".join(json.dumps(r, sort_keys=True) + "\n" for r in rejected).encode())
    write_bytes(f"{work}/{layout.STATS_FILE}", json.dumps(stats, indent=2, sort_keys=True).encode())
    write_bytes(f"{work}/{layout.SPEC_FILE}", spec.to_json().encode())
    write_bytes(f"{work}/{layout.CONFIG_FILE}", json.dumps(
        {"preprocess": dataclasses.asdict(config), "dataset": json.loads(spec.to_json()),
         "policies": _policies(config)}, indent=2, sort_keys=True).encode())
    if result["rejected_fraction"] <= config.max_rejected_fraction:
        write_bytes(f"{work}/{layout.SUCCESS_FILE}", json.dumps(result, indent=2, sort_keys=True).encode())
    result["stats"] = stats
    return result


def _policies(config) -> dict:
    from pipelines.core import images

    return {"image": images.ImagePolicy(color_mode=config.color_mode, bit_depth=config.bit_depth,
                                        max_pixels=config.max_pixels).describe(),
            "mask_values": config.mask_values}


def describe(summary: dict, output: str) -> str:
    """A short human summary of what was written where."""
    stats = summary["stats"]
    lines = [f"tessera preprocess: {summary['sources_in']} inputs -> {summary['sources_written']} sources written, "
             f"{summary['rejected']} rejected"]
    for split in layout.SPLITS:
        if split in stats["examples"]:
            lines.append(f"  {split:<5} {stats['sources'].get(split, 0):>6} sources {stats['examples'][split]:>8} examples")
    for reason, n in sorted(stats["rejected"].items()):
        lines.append(f"  rejected {reason}: {n}")
    if "class_frequencies" in stats:
        lines.append("  class pixel frequencies (train): " + ", ".join(
            f"{k} {v:.3f}" for k, v in stats["class_frequencies"].items()))
    lines.append(f"  dataset: {output}  (tfds.builder_from_directory; manifest.parquet, stats.json, "
                 f"rejected.jsonl, _SUCCESS)")
    return "\n".join(lines)
