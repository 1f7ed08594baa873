"""Counts and statistics of a preprocessing run, and the files that state them.

``finalise`` runs in the launcher after the pipeline: it turns the pipeline's part files
into ``stats.json``, ``rejected.jsonl``, ``manifest.parquet``, the TFDS metadata and,
last, ``_SUCCESS`` — and checks that nothing was lost (inputs = sources written + rejected).
"""
from __future__ import annotations

import dataclasses
import datetime
import io
import json
import os
import shutil
import tempfile
from collections import Counter
from typing import Iterable

import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems

from pipelines.beam.files import exists, read_bytes, read_json, write_bytes
from pipelines.core import images
from schemas import layout
from schemas.example import DatasetSpec, tfds_features
from schemas.rejected import rejected_record


def build_stats(spec: DatasetSpec, shards: list[dict], summary: dict, rejected: list[dict], manifest) -> dict:
    examples = Counter()
    for shard in shards:
        examples[shard["split"]] += shard["num_examples"]
    stats = {"examples": dict(examples), "sources": summary["sources"],
             "rejected": dict(Counter(r["reason"] for r in rejected if "region" not in r)),
             "rejected_regions": dict(Counter(r["reason"] for r in rejected if "region" in r)),
             "tiles": summary.get("tiles", {}), "per_source": summary.get("per_source", {})}
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
    workers = Counter(shard.get("worker") for shard in shards)
    stats["shards_per_worker"] = sorted(workers.values(), reverse=True)   # how the work spread (no pids)
    return stats


def finalise(work: str, config, spec: DatasetSpec, empty_folders: list[str], started,
             beam_args: list[str] = (), decisions: dict | None = None) -> dict:
    """Writes every metadata file into ``work`` and returns the run's summary."""
    shards = read_json(f"{work}/{layout.WORK_PARTS}/shards.json") if exists(f"{work}/{layout.WORK_PARTS}/shards.json") else []
    summary = read_json(f"{work}/{layout.WORK_PARTS}/sources.json") if exists(f"{work}/{layout.WORK_PARTS}/sources.json") else {
        "sources": {}, "class_pixels": None, "labels": {}, "tiles": {}, "per_source": {}, "failed_sources": []}
    rejected = read_json(f"{work}/{layout.WORK_PARTS}/rejected.json")
    rejected += [rejected_record(f"{config.input.rstrip('/')}/{folder}", "empty_folder",
                                  "class folder holds no files; the class is left out of the dataset", [])
                 for folder in empty_folders]
    rejected.sort(key=lambda r: (r["source"], r["reason"]))
    spec = dataclasses.replace(spec, pixel_size_um=dataset_pixel_size(config, summary["per_source"]))
    if shards:   # none: nothing to publish (the launcher says why)
        write_tfds_metadata(work, spec, shards, description=f"Tessera {spec.task} dataset from {config.input}")
    manifest = merge_manifest(work)
    stats = build_stats(spec, shards, summary, rejected, manifest)
    check_counts(summary, manifest, shards)
    sources_written = sum(summary["sources"].values())
    rejected_sources = sum("region" not in r for r in rejected) + len(summary["failed_sources"])
    inputs = sources_written + rejected_sources
    result = {
        "sources_in": inputs, "sources_written": sources_written, "rejected": rejected_sources,
        "rejected_regions": sum("region" in r for r in rejected), "tiles": summary["tiles"],
        "rejected_fraction": rejected_sources / inputs if inputs else 0.0,
        "examples": stats["examples"], "fingerprint": fingerprint(shards),
        "shards": {s["name"]: {"bytes": s["num_bytes"], "sha256": s["sha256"], "examples": s["num_examples"]}
                   for s in shards},
        "started_at": started.isoformat(), "completed_at": datetime.datetime.now(datetime.timezone.utc).isoformat(),
    }
    write_bytes(f"{work}/{layout.REJECTED_FILE}", "".join(json.dumps(r, sort_keys=True) + "\n" for r in rejected).encode())
    write_bytes(f"{work}/{layout.STATS_FILE}", json.dumps(stats, indent=2, sort_keys=True).encode())
    write_bytes(f"{work}/{layout.SPEC_FILE}", spec.to_json().encode())
    write_bytes(f"{work}/{layout.CONFIG_FILE}", json.dumps(
        {"preprocess": dataclasses.asdict(config), "beam_args": list(beam_args), "dataset": json.loads(spec.to_json()),
         "policies": _policies(config), "decisions": decisions or {}}, indent=2, sort_keys=True).encode())
    if result["rejected_fraction"] <= config.max_rejected_fraction:
        write_bytes(f"{work}/{layout.SUCCESS_FILE}", json.dumps(result, indent=2, sort_keys=True).encode())
    result["stats"] = stats
    return result


def check_counts(summary: dict, manifest, shards: list[dict]) -> None:
    """Nothing lost: every source's tiles are kept, dropped (by reason) or in a rejected block;
    the sources with kept tiles are those in the manifest; its rows are the shards' records."""
    for source_id, s in summary["per_source"].items():
        if s["tiles"] != s["kept"] + s["dropped_blank"] + s["dropped_background"] + s["rejected_tiles"]:
            raise RuntimeError(f"count mismatch for {source_id}: {s}")
    with_examples = {i for i, s in summary["per_source"].items() if s["kept"]}
    in_manifest = set(manifest.column("source_id").to_pylist())
    examples = sum(s["num_examples"] for s in shards)
    if in_manifest != with_examples or manifest.num_rows != examples:
        raise RuntimeError(f"count mismatch: {len(with_examples)} sources with kept tiles, {len(in_manifest)} in the "
                           f"manifest, {manifest.num_rows} manifest rows vs {examples} examples in shards")


def dataset_pixel_size(config, per_source: dict) -> float | None:
    """µm/px of the dataset: ``--pixel-size``, else the one all its sources share (within 1%)."""
    if config.pixel_size_um:
        return config.pixel_size_um
    sizes = [s["pixel_size_um"] for s in per_source.values()]
    if not sizes or any(size is None for size in sizes):
        return None
    return sizes[0] if max(sizes) <= min(sizes) * 1.01 else None


def _policies(config) -> dict:
    return {"image": images.ImagePolicy(color_mode=config.color_mode, bit_depth=config.bit_depth,
                                        max_pixels=config.max_pixels, intensity=config.intensity).describe(),
            "mask_values": config.mask_values}


def describe(summary: dict, output: str, version: str | None = None) -> str:
    """A short human summary of what was written where."""
    stats = summary["stats"]
    lines = [f"tessera preprocess: {summary['sources_in']} inputs -> {summary['sources_written']} sources written, "
             f"{summary['rejected']} rejected"]
    for split in layout.SPLITS:
        if split in stats["examples"]:
            lines.append(f"  {split:<5} {stats['sources'].get(split, 0):>6} sources {stats['examples'][split]:>8} examples")
    for reason, n in sorted(stats["rejected"].items()):
        lines.append(f"  rejected {reason}: {n}")
    for reason, n in sorted(stats.get("rejected_regions", {}).items()):
        lines.append(f"  rejected blocks of large sources, {reason}: {n}")
    tiles = stats.get("tiles", {})
    if tiles.get("dropped_blank") or tiles.get("dropped_background"):
        lines.append(f"  tiles: {tiles['tiles']} cut, {tiles['kept']} kept, {tiles['dropped_background']} dropped "
                     f"as background, {tiles['dropped_blank']} as blank")
    if "class_frequencies" in stats:
        lines.append("  class pixel frequencies (train): " + ", ".join(
            f"{k} {v:.3f}" for k, v in stats["class_frequencies"].items()))
    if version:
        lines.append(f"  dataset: {output} -> version {version}  (local: tfds.builder_from_directory(\"{output}/current\"); "
                     f"manifest.parquet, stats.json, rejected.jsonl, _SUCCESS inside the version)")
    else:
        lines.append(f"  dataset: {output}")
    return "\n".join(lines)


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
    paths = sorted(m.path for m in FileSystems.match([f"{directory}/{layout.WORK_PARTS}/manifest-*.parquet"])[0].metadata_list)
    tables = [pq.read_table(io.BytesIO(read_bytes(p)), schema=layout.MANIFEST_SCHEMA, use_threads=False)
              for p in paths]
    table = pa.concat_tables(tables) if tables else layout.MANIFEST_SCHEMA.empty_table()
    table = table.sort_by([("split", "ascending"), ("shard", "ascending"), ("id", "ascending")])
    sink = io.BytesIO()
    pq.write_table(table, sink)
    write_bytes(f"{directory}/{layout.MANIFEST_FILE}", sink.getvalue())
    return table


def fingerprint(shards: Iterable[dict]) -> str:
    return layout.dataset_fingerprint({s["name"]: s["sha256"] for s in shards})
