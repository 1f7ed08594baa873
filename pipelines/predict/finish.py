"""After (and while) the prediction pipeline runs: progress lines, the Parquet, rejected.jsonl, _SUCCESS.

Everything here reads the per-image files the workers wrote, so the summary is the same
whichever runner ran the job, and nothing is counted twice: in = predicted +
skipped_done + rejected, checked before ``_SUCCESS`` is written.
"""
from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import datetime
import json
import time

import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems

from pipelines.beam.files import (
    atomic_create,
    final_of,
    read_bytes,
    read_json,
    write_atomically,
)
from pipelines.beam.progress import Status
from pipelines.predict import outputs
from pipelines.predict.inputs import existing
from pipelines.predict.transforms import ImageInput
from schemas import layout as names


def _read_all(paths: list[str]) -> list:
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        return list(pool.map(read_json, paths))


class ImagesDone:
    """A progress ``report``: images done (rows written) and rejected of the pending ones, their
    tiles, and before images finish what shows the work moving: strips of images predicted in
    several strips and blocks of large images done so far, or that the workers are still
    starting (loading the models, reading the first images) while nothing is written yet."""

    def __init__(self, layout: outputs.OutputLayout, pending: list[ImageInput]):
        self.layout, self.pending, self.total = layout, {i.image_id: i.path for i in pending}, len(pending)
        self.done, self.rejected, self.tiles = 0, 0, 0

    def __call__(self) -> Status:
        files = existing(self.layout.root, self.layout.rows_dir())
        bad = existing(self.layout.root, names.REJECTED_DIR)
        new = sorted(i for i in self.pending if self.layout.row(i) in files)
        rows = _read_all([self.layout.path(self.layout.row(i)) for i in new])
        for i in new:
            del self.pending[i]
        rejected = [i for i, path in self.pending.items() if self.layout.rejected(path) in bad]
        for i in rejected:
            del self.pending[i]
        self.done += len(new)
        self.rejected += len(rejected)
        self.tiles += sum(r["tiles"] for r in rows)
        moving = self.in_progress()    # first: a narrow terminal cuts the end of the line
        if not self.done + self.rejected and not moving:
            moving = ["workers starting: loading the model, reading the first images"]
        return Status(self.done + self.rejected, self.total, "images",
                      ", ".join([*moving, f"{self.rejected} rejected", f"{self.tiles} tiles"]))

    def in_progress(self) -> list[str]:
        """Strips and blocks written of the images not done yet (their files name them)."""
        fingerprint = self.layout.settings.fingerprint()
        strips, of, blocks = 0, {}, 0
        for relative in existing(self.layout.root, self.layout.parts_dir()):
            image_id, name = relative[len(self.layout.parts_dir()) + 1:].rsplit("/", 1)
            if image_id in self.pending and name.startswith("strip-") and "-of-" in name:
                strips += 1
                of[image_id] = int(name.split("-of-")[1].split(".")[0])
        for relative in existing(self.layout.root, f"{names.BLOCKS_DIR}/{fingerprint}"):
            image_id, _, name = relative[len(names.BLOCKS_DIR) + len(fingerprint) + 2:].rpartition("/")
            blocks += image_id in self.pending and len(name) == 10 and name.endswith(".npz")   # NNNNNN.npz
        images = f"{len(of)} image{'s' if len(of) != 1 else ''}"
        return ([f"{strips}/{sum(of.values())} strips of {images} in progress"] if strips else []) + \
            ([f"{blocks} blocks of large images done"] if blocks else [])


def remove_leftovers(layout: outputs.OutputLayout, inputs: list[ImageInput]) -> int:
    """Delete temporary files and strip parts an interrupted run left for this shard's images.

    Only files of this shard's images are touched, so concurrent shards are never disturbed.
    """
    finals = {path for i in inputs for path in
              [layout.row(i.image_id), layout.rejected(i.path), *layout.outputs(i.image_id)]}
    parts = {layout.parts_dir(i.image_id) for i in inputs}
    leftovers = []
    for folder in (*names.IMAGE_OUTPUT_DIRS, layout.rows_dir(), names.REJECTED_DIR, layout.parts_dir()):
        for relative in existing(layout.root, folder):
            if (final_of(relative) in finals and relative not in finals) or relative.rsplit("/", 1)[0] in parts:
                leftovers.append(layout.path(relative))
    if leftovers:
        FileSystems.delete(leftovers)
    return len(leftovers)


def previous_settings(layout: outputs.OutputLayout) -> str | None:
    """The settings fingerprint of the last run started in this directory (its config.json, else _SUCCESS)."""
    for name, key in ((names.CONFIG_FILE, "fingerprint"), (names.SUCCESS_FILE, "settings")):
        if FileSystems.exists(layout.path(name)):
            return read_json(layout.path(name)).get(key)
    return None


class OtherSettings(ValueError):
    """The directory holds results of other settings and the user did not ask to replace them."""


def settings_changes(layout: outputs.OutputLayout) -> str:
    """``name: before -> now`` for each output setting that differs from the last run's config.json."""
    before = read_json(layout.path(names.CONFIG_FILE)).get("settings") if FileSystems.exists(
        layout.path(names.CONFIG_FILE)) else None
    if not isinstance(before, dict):
        return "recorded only as a fingerprint"
    now = dataclasses.asdict(layout.settings)
    short = lambda v: (lambda t: t if len(t) <= 60 else t[:57] + "...")(json.dumps(v))  # noqa: E731
    changed = [f"{k}: {short(before.get(k))} -> {short(now[k])}" for k in sorted(now)
               if json.dumps(before.get(k)) != json.dumps(now[k]) and k in before]
    return "; ".join(changed) or "recorded with fields this version does not compare"


def has_results(layout: outputs.OutputLayout) -> bool:
    """Whether an earlier run left anything a user could be reading (rows, outputs, tables)."""
    summaries = (names.predictions_file("*"), names.success_file("*"), names.objects_file("*"))
    if any(result.metadata_list for result in FileSystems.match([layout.path(p) for p in summaries])):
        return True
    return any(FileSystems.match([layout.path(f"{folder}/**")], limits=[1])[0].metadata_list
               for folder in (names.ROWS_DIR, *names.IMAGE_OUTPUT_DIRS))


def forget_other_settings(layout: outputs.OutputLayout, overwrite: bool = False) -> bool:
    """When the last run here used other settings, refuse (OtherSettings, naming them and
    ``--overwrite``) unless ``overwrite``; with it, delete that run's results before this run starts.

    Masks and overlays are shared by all settings, so another settings' rows (and Parquet,
    rejected JSONL, _SUCCESS files) would otherwise vouch for masks this run overwrites, or
    claim done images whose masks a later run replaced. Rows go last: the summaries are
    never left pointing at deleted rows. Seam maps, probabilities, instance images, GeoJSON
    and per-image object tables that these settings do not write are deleted too (every image
    is predicted again, so a large image's objects table is rewritten). Returns whether
    anything was forgotten.
    """
    previous, current = previous_settings(layout), layout.settings.fingerprint()
    if previous in (None, current):
        return False
    if not overwrite and has_results(layout):
        raise OtherSettings(
            f"--output {layout.root} holds the results of a run with other settings ({previous}; changed: "
            f"{settings_changes(layout)}); pass --overwrite to delete them and predict with these settings, "
            "or choose another --output")
    patterns = (names.predictions_file("*"), names.rejected_file("*"), names.success_file("*"),
                names.objects_file("*"))
    summaries = [m.path for result in FileSystems.match([layout.path(p) for p in patterns]) for m in result.metadata_list]
    if summaries:
        FileSystems.delete(summaries)
    stale = [layout.path(relative) for folder in (names.ROWS_DIR, names.STRIP_PARTS_DIR, names.BLOCKS_DIR)
             for relative in existing(layout.root, folder)
             if not relative.startswith((layout.rows_dir() + "/", layout.parts_dir() + "/",
                                         f"{names.BLOCKS_DIR}/{current}/"))]
    decoded = layout.settings.instances != "none"
    unwritten = [folder for folder, written in ((names.SEAMS_DIR, layout.settings.overlap > 0),
                                                (names.PROBABILITIES_DIR, layout.settings.save_probabilities),
                                                (names.INSTANCES_DIR, decoded), (names.GEOJSON_DIR, decoded),
                                                (names.OBJECTS_DIR, False))
                 if not written]     # outputs these settings do not make would outlive the run that made them
    stale += [layout.path(relative) for folder in unwritten for relative in existing(layout.root, folder)]
    if stale:
        FileSystems.delete(stale)
    return True


def finish(layout: outputs.OutputLayout, inputs: list[ImageInput], listing_rejected: list[dict],
           skipped: set[str], num_shards: int, shard_index: int, started: float) -> dict:
    """Collect the shard's rows and rejections into its Parquet, rejected JSONL and _SUCCESS."""
    remove_leftovers(layout, inputs)
    rows_present = existing(layout.root, layout.rows_dir())
    rejected_present = existing(layout.root, names.REJECTED_DIR)
    done = [i for i in inputs if layout.row(i.image_id) in rows_present]
    rows = _read_all([layout.path(layout.row(i.image_id)) for i in done])
    done_ids = {i.image_id for i in done}
    stale = [layout.path(layout.rejected(i.path)) for i in done if layout.rejected(i.path) in rejected_present]
    if stale:
        FileSystems.delete(stale)
    failed = [i for i in inputs if i.image_id not in done_ids]
    lost = [i.path for i in failed if layout.rejected(i.path) not in rejected_present]
    if lost:
        raise RuntimeError(f"{len(lost)} inputs have neither outputs nor a rejected record (first: {lost[:5]}); "
                           "the run did not complete; rerun the same command to resume")
    rejected = sorted(_read_all([layout.path(layout.rejected(i.path)) for i in failed]) + listing_rejected,
                      key=lambda r: r["source"])
    suffix = names.shard_suffix(num_shards, shard_index)
    outputs.write_parquet(layout.path(names.predictions_file(suffix)), rows)
    listed = existing(layout.root, names.OBJECTS_DIR)
    write_objects_table([layout.path(names.objects_path(i)) for i in sorted(done_ids) if names.objects_path(i) in listed],
                        layout.path(names.objects_file(suffix)))
    _write_jsonl(layout.path(names.rejected_file(suffix)), rejected)
    summary = {
        "sources_in": len(inputs) + len(listing_rejected),
        "predicted": len(done_ids - skipped), "skipped_done": len(done_ids & skipped), "rejected": len(rejected),
        "rejected_reasons": dict(sorted(collections.Counter(r["reason"] for r in rejected).items())),
        "tiles": sum(r["tiles"] for r in rows if r["image_id"] not in skipped),
        "seconds": round(time.time() - started, 3), "settings": layout.settings.fingerprint(),
        "num_shards": num_shards, "shard_index": shard_index,
        "completed_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    assert summary["sources_in"] == summary["predicted"] + summary["skipped_done"] + summary["rejected"]
    outputs.write_json(layout.path(names.success_file(suffix)), summary)
    if num_shards > 1:
        merge_shards(layout, num_shards)
    return summary


def _write_jsonl(path: str, records: list[dict]) -> None:
    write_atomically(path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in records).encode("utf-8"))


def merge_shards(layout: outputs.OutputLayout, num_shards: int) -> bool:
    """When every shard has its _SUCCESS, write the merged Parquet, rejected.jsonl and _SUCCESS.

    Shards finishing at the same time may both merge; they write the same content.
    """
    suffixes = [names.shard_suffix(num_shards, i) for i in range(num_shards)]
    if not all(FileSystems.exists(layout.path(names.success_file(s))) for s in suffixes):
        return False
    summaries = [read_json(layout.path(names.success_file(s))) for s in suffixes]
    if len({s["settings"] for s in summaries}) != 1:
        return False
    rows = [row for s in suffixes for row in outputs.read_parquet(layout.path(names.predictions_file(s))).to_pylist()]
    outputs.write_parquet(layout.path(names.PREDICTIONS_FILE), rows)
    write_objects_table([p for p in (layout.path(names.objects_file(s)) for s in suffixes) if FileSystems.exists(p)],
                        layout.path(names.objects_file()))
    lines = b"".join(read_bytes(layout.path(names.rejected_file(s))) for s in suffixes)
    records = sorted((json.loads(line) for line in lines.decode("utf-8").splitlines()), key=lambda r: r["source"])
    _write_jsonl(layout.path(names.REJECTED_FILE), records)
    counts = ("sources_in", "predicted", "skipped_done", "rejected", "tiles")
    merged = {k: sum(s[k] for s in summaries) for k in counts}
    merged["rejected_reasons"] = dict(sorted(sum((collections.Counter(s["rejected_reasons"]) for s in summaries),
                                                 collections.Counter()).items()))
    merged.update(settings=summaries[0]["settings"], num_shards=num_shards,
                  completed_at=max(s["completed_at"] for s in summaries))
    outputs.write_json(layout.path(names.SUCCESS_FILE), merged)
    return True


def write_objects_table(parts: list[str], path: str) -> None:
    """One objects table from per-image (or per-shard) parts, streamed row group by row group
    (an image may have millions of objects); nothing when there are none."""
    if not parts:
        return
    with atomic_create(path) as handle:
        writer = pq.ParquetWriter(handle, names.OBJECTS_SCHEMA)
        for part in parts:
            with FileSystems.open(part) as source:
                parquet = pq.ParquetFile(source)
                for group in range(parquet.num_row_groups):   # a block's objects at a time (iter_batches
                    writer.write_table(parquet.read_row_group(group, use_threads=False))   # held ~the file)
        writer.close()
