"""``tessera preprocess``: raw image folders -> overlap-tiled, augmented, sharded TFDS dataset.

Run locally (DirectRunner, all cores)::

    tessera preprocess --input ./raw --output ./dataset --tile-size 256 --margin 32 --augment-copies 4

On Dataflow, add the runner and its options; they pass through to Beam untouched::

    tessera preprocess --input gs://b/raw --output gs://b/ds --runner DataflowRunner \\
        --project P --region R --temp_location gs://b/tmp

Our flags (and ``--config FILE``) are parsed first; the rest must be Beam's own flags and goes to
``PipelineOptions`` (a flag neither knows is an error).
"""
from __future__ import annotations

import dataclasses
import datetime
import os
import sys

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems

from pipelines.beam import flags, progress, runner
from pipelines.beam.files import check_apart
from pipelines.core import images, masks
from pipelines.core.sources import has_image_extension
from pipelines.preprocess import colour, examples, finalise, large, publish, shards, splits, static_augment
from pipelines.preprocess import transforms as pt
from pipelines.preprocess.options import PreprocessConfig, build_parser, config_from_args  # noqa: F401
from schemas import cli, layout
from schemas.example import BOUNDARY_CLASSES, CLASSIFICATION, SEGMENTATION, DatasetSpec


BOUNDARY_REMEDY = ("; --target boundary takes masks of one object class: map every other class to 0 (background), "
                   "1 (the objects) or ignore with --mask-values v:c,... (or pass --mask-values instances)")


def source_class_names(config: PreprocessConfig) -> tuple[str, ...]:
    """The classes of the source masks (a segmentation input); with ``--target boundary`` one
    object class besides the background, else refused with the remedy."""
    names = config.class_names or ("background", "foreground")
    if config.target == "boundary" and len(names) != 2:
        raise SystemExit(f"tessera preprocess: --target boundary derives objects of one class, but --class-names "
                         f"gives {len(names)} classes {names}; map the other classes to background (0) or ignore "
                         f"with --mask-values v:c,... and pass two class names (background, then the objects')")
    return names


def large_settings(config: PreprocessConfig) -> large.LargeSettings:
    return large.LargeSettings(config.large_image_pixels, config.memory_limit_mb, config.pixel_size_um or None,
                               None if config.level < 0 else config.level, config.intensity)


def class_folders(root: str, list_files: bool = True) -> tuple[list[str], list[str]]:
    """(class names with files, empty class folders) of a classification input.

    Listing every file to find the classes costs a full listing in the launcher; pass
    ``--class-names`` to skip it on large inputs (empty folders are found locally only).
    """
    root = root.rstrip("/")
    names: set[str] = set()
    for m in FileSystems.match([f"{root}/**"])[0].metadata_list if list_files else []:
        parts = m.path[len(root) + 1:].split("/")
        parts = parts[1:] if len(parts) > 2 and parts[0] in layout.SPLITS else parts
        if len(parts) >= 2:
            names.add(parts[0])
    empty = []
    if not root.startswith("gs://") and os.path.isdir(root):
        tops = [e for e in os.listdir(root) if os.path.isdir(os.path.join(root, e))]
        dirs = [os.path.join(root, t, c) for t in tops if t in layout.SPLITS
                for c in os.listdir(os.path.join(root, t))] + [os.path.join(root, t) for t in tops if t not in layout.SPLITS]
        empty = sorted(os.path.relpath(d, root) for d in dirs if os.path.isdir(d) and not any(os.scandir(d)))
    return sorted(names), empty


def dataset_spec(config: PreprocessConfig, class_names: tuple[str, ...]) -> DatasetSpec:
    channels = 1 if config.color_mode == "grayscale" else 3
    dtype = "uint16" if config.bit_depth == "keep16" else "uint8"
    if config.layout == CLASSIFICATION and not config.tiles:
        size = config.image_size or config.tile_size
        return DatasetSpec(CLASSIFICATION, size, 0, channels, dtype, class_names, whole_image=True,
                           intensity=config.intensity)
    boundary = {}
    if config.target == "boundary":   # class_names: the source masks' (background, the objects' class)
        boundary = dict(target="boundary", border_thickness=config.border_thickness, object_class=class_names[1],
                        distance="boundary" if config.distance_map else "none", distance_max=config.distance_max)
        class_names = BOUNDARY_CLASSES
    return DatasetSpec(config.layout, config.tile_size, config.margin, channels, dtype, class_names,
                       intensity=config.intensity, weight_map=config.weight_map, weight_map_w0=config.weight_map_w0,
                       weight_map_sigma=config.weight_map_sigma, **boundary)


def source_classes(spec: DatasetSpec) -> int:
    """How many classes the source masks hold: the dataset's, or background + the objects'."""
    return 2 if spec.target == "boundary" else spec.num_classes


def usage_error(message: str):
    """One line on stderr and exit 2, as for a mistaken flag."""
    print(f"tessera preprocess: {message}", file=sys.stderr)
    raise SystemExit(cli.USAGE_ERROR)


def check_paths(config: PreprocessConfig) -> None:
    """A missing input folder (exit 2) and an output inside the input or the reverse."""
    if publish.is_local(config.input):
        local = config.input.removeprefix("file://")
        if not os.path.exists(local):
            usage_error(f"--input {config.input}: no such folder (expected the {config.layout} layout; see "
                        f"`tessera preprocess --help`)")
        if not os.path.isdir(local):
            usage_error(f"--input {config.input} is a file; pass the folder that holds "
                        + ("images/ and masks/" if config.layout == SEGMENTATION else "the class folders"))
    try:
        check_apart(config.input, config.output)
    except ValueError as e:
        raise SystemExit(f"tessera preprocess: {e}") from None
    if publish.is_local(config.input) and publish.is_local(config.output):
        # as written too: an output reached through a symlink inside the input is listed there
        a, b = (os.path.abspath(p.removeprefix("file://")) for p in (config.input, config.output))
        if a == b or b.startswith(a.rstrip(os.sep) + os.sep) or a.startswith(b.rstrip(os.sep) + os.sep):
            raise SystemExit(f"tessera preprocess: --output {config.output} and --input {config.input} overlap (one "
                             "is inside the other, as written); choose an output outside the input")


def list_inputs(config: PreprocessConfig) -> list[str]:
    """The image files (and zarr stores) the job will read, from one listing; SystemExit when
    the input holds no file where the layout expects them."""
    root = config.input.rstrip("/")
    pattern = f"{root}/images/**" if config.layout == SEGMENTATION else f"{root}/**"
    listed = pt.match_files(pattern)
    if not listed:
        raise SystemExit(f"tessera preprocess: no input files match {pattern} "
                         f"(expected layout: {config.layout}; see `tessera preprocess --help`)")
    return [path for path, _ in listed if has_image_extension(path)]


def resolve_color_mode(config: PreprocessConfig, inputs: list[str]) -> tuple[PreprocessConfig, dict]:
    """``--color-mode auto`` decided from the sources' headers (``colour.decide``)."""
    if config.color_mode != "auto":
        return config, {"requested": config.color_mode, "decided": config.color_mode}
    if len(inputs) > 1000:
        print(f"tessera preprocess: --color-mode auto: reading the headers of up to {len(inputs)} sources (pass "
              "--color-mode rgb or grayscale to skip this)", flush=True)
    mode, record = colour.decide(inputs, config.input, config.follow_symlinks)
    print(f"tessera preprocess: --color-mode auto -> {mode} ({record['reason']})", flush=True)
    return dataclasses.replace(config, color_mode=mode), record


def build_pipeline(p: beam.Pipeline, config: PreprocessConfig, spec: DatasetSpec, work: str,
                   split_table: dict[str, str] | None = None) -> None:
    image_policy = images.ImagePolicy(color_mode=config.color_mode, bit_depth=config.bit_depth,
                                      max_pixels=config.max_pixels, intensity=config.intensity)
    if config.layout == SEGMENTATION:
        listed = p | "ReadImagePairs" >> pt.ReadImagePairs(config.input)
        listed_sources, listing_rejected = listed.sources, [listed.rejected]
        mask_policy = masks.parse_mask_values(config.mask_values, source_classes(spec))
        if spec.target == "boundary":
            mask_policy = dataclasses.replace(mask_policy, remedy=BOUNDARY_REMEDY)
    else:
        found = p | "ReadClassFolders" >> pt.ReadClassFolders(config.input, spec.class_names)
        unique = found.sources | "RejectDuplicateIds" >> pt.RejectDuplicateIds()
        listed_sources, listing_rejected = unique.sources, [found.rejected, unique.rejected]
        mask_policy = None
    split, split_rejected = splits.assign(listed_sources, config, split_table, stratify=config.layout == CLASSIFICATION)
    if split_rejected is not None:
        listing_rejected.append(split_rejected)
    keep = examples.TileFilter(config.min_foreground, config.background_tiles_fraction, config.skip_blank)
    settings = examples.TileSettings(spec=spec, augment_copies=config.augment_copies,
                                     augment_config=static_augment.StaticAugmentConfig(), fit=config.fit,
                                     input_root=config.input, follow_symlinks=config.follow_symlinks, keep=keep)
    planned = split | "PlanLargeSources" >> beam.ParDo(pt.PlanLargeSources(
        large_settings(config), spec, mask_policy)).with_outputs(pt.REJECTED, main="units")
    listing_rejected.append(planned[pt.REJECTED])
    built = planned.units | "WriteShards" >> shards.WriteShards(
        work, settings, image_policy, mask_policy, config.shard_bytes, config.min_shards, config.png_compression)
    _ = built.shards | "WriteShardInfo" >> pt.WriteJson(f"{work}/{layout.WORK_PARTS}/shards.json")
    _ = built.source_stats | "WriteSourceStats" >> pt.SummariseSources(f"{work}/{layout.WORK_PARTS}/sources.json")
    rejected = tuple(listing_rejected) + (built.rejected,) | "AllRejected" >> beam.Flatten()
    _ = rejected | "WriteRejected" >> pt.WriteJson(f"{work}/{layout.WORK_PARTS}/rejected.json")


def progress_status(total: int):
    def describe(totals: dict) -> progress.Status:
        return progress.Status(totals.get("sources", 0) + totals.get("rejected", 0), total, "sources",
                               f"{totals.get('rejected', 0)} rejected, {totals.get('examples', 0)} examples, "
                               f"{totals.get('pixels', 0) / 1e6:.0f} MP")
    return describe


def refusal(summary: dict, config: PreprocessConfig) -> str | None:
    """Why the run publishes nothing, or None."""
    reasons = ", ".join(f"{reason} {n}" for reason, n in sorted(
        summary["stats"]["rejected"].items(), key=lambda item: (-item[1], item[0]))[:4])
    rejected = f"{summary['rejected']} of {summary['sources_in']} inputs rejected" + (f" ({reasons})" if reasons else "")
    if summary["rejected_fraction"] > config.max_rejected_fraction:
        return (f"{rejected}: {summary['rejected_fraction']:.1%} > --max-rejected-fraction "
                f"{config.max_rejected_fraction:.1%}; nothing was published")
    if not sum(summary["examples"].values()):
        return f"no examples were written ({rejected}, {summary['tiles'].get('kept', 0)} tiles kept); nothing was published"
    return None


def run(argv: list[str] | None = None) -> int:
    args, beam_args = flags.parse(build_parser(), argv)
    config = config_from_args(args)
    check_paths(config)
    if publish.output_exists(config.output) and not config.overwrite:
        raise SystemExit(f"tessera preprocess: {config.output} exists; pass --overwrite to publish a new version")
    inputs = list_inputs(config)
    split_table, split_record = splits.plan(config)
    unmatched = splits.unmatched_warning(split_table, inputs, config)
    if unmatched:
        print(unmatched, file=sys.stderr, flush=True)
    publish.clean_leftovers(config.output)
    empty_folders: list[str] = []
    if config.layout == CLASSIFICATION:
        found, empty_folders = class_folders(config.input, list_files=not config.class_names)
        class_names = config.class_names or tuple(found)
    else:
        class_names = source_class_names(config)
    config, colour_record = resolve_color_mode(config, inputs)
    spec = dataset_spec(config, class_names)
    work = publish.temporary_output(config.output)
    started = datetime.datetime.now(datetime.timezone.utc)
    print(f"tessera preprocess: {config.input} -> {config.output} (working in {work})", flush=True)
    printer = progress.ProgressPrinter("tessera preprocess", progress.counter_report(
        f"{work}/{layout.WORK_PARTS}/progress/*.json", progress_status(len(inputs))))
    printer.start()
    try:
        with runner.make_pipeline(beam_args) as p:
            build_pipeline(p, config, spec, work, split_table)
        printer.stop()
        summary = finalise.finalise(work, config, spec, empty_folders, started, beam_args,
                                    decisions={"color_mode": colour_record, "split": split_record})
        refused = refusal(summary, config)
        records = summary["rejected"] + summary["rejected_regions"]
        kept = publish.keep_rejected(work, config.output) if refused and records else None
    except BaseException:
        printer.stop()
        publish.delete_tree(work)  # a failed run leaves nothing behind; the output is untouched
        raise
    if refused:
        publish.delete_tree(work)
        raise SystemExit(f"tessera preprocess: {refused}." + (f" Rejected records with reasons: {kept}" if kept else ""))
    version = publish.commit(work, config.output, config.overwrite, summary["fingerprint"], config.keep_versions)
    for line in splits.empty_warnings(summary["stats"], config, split_table):
        print(line, file=sys.stderr, flush=True)
    print(finalise.describe(summary, config.output, version), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(run())
