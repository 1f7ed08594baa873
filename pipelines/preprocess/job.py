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

import argparse
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
from pipelines.preprocess import examples, finalise, large, publish, shards, static_augment
from pipelines.preprocess import transforms as pt
from schemas import layout, versions
from schemas.example import BOUNDARY_CLASSES, CLASSIFICATION, SEGMENTATION, DatasetSpec


@dataclasses.dataclass(frozen=True)
class PreprocessConfig:
    input: str
    output: str
    layout: str = SEGMENTATION
    tile_size: int = 256                 # core size C
    margin: int = 32                     # context margin M
    augment_copies: int = 0
    split_fractions: tuple[float, ...] = (0.8, 0.1, 0.1)
    split_salt: str = ""
    mask_values: str = "auto"
    class_names: tuple[str, ...] = ()    # segmentation default: background, foreground
    color_mode: str = "rgb"
    bit_depth: str = "scale8"
    max_pixels: int = 100_000_000
    image_size: int = 0                  # classification whole images: 0 -> tile_size
    fit: str = "resize"
    tiles: bool = False                  # classification: cut tiles instead of whole images
    max_rejected_fraction: float = 0.1
    shard_bytes: int = 128 * 2**20
    min_shards: int = 4                  # per split (capped by its sources): parallel writes and reads
    png_compression: int = 1
    overwrite: bool = False
    keep_versions: int = versions.DEFAULT_KEEP
    follow_symlinks: bool = False
    large_image_pixels: int = 64_000_000  # region-readable sources larger than this are cut block by block
    memory_limit_mb: int = 512            # per block of a large source (its image and mask windows)
    pixel_size_um: float = 0.0            # µm/px: pick this pyramid level; assumed where a file records none
    level: int = -1                       # or read this pyramid level (-1: by --pixel-size, else the first)
    min_foreground: float = 0.0           # keep tiles with at least this foreground fraction...
    background_tiles_fraction: float = 0.0   # ...and this sampled share of the others
    skip_blank: bool = False              # drop tiles of empty slide glass or padding
    intensity: str = "fixed"              # fixed (--bit-depth) | percentile | zscore, per image
    weight_map: str = "none"              # unet: store the U-Net border weights of every tile
    weight_map_w0: float = 10.0
    weight_map_sigma: float = 5.0         # px
    target: str = "classes"               # boundary: background / boundary / interior from the masks' objects
    border_thickness: int = 2             # px of boundary inside each object's edge
    distance_map: bool = False            # boundary: store each object pixel's distance to its edge too
    distance_max: float = 32.0            # px: the stored distance map's clip (255 = this)


def build_parser() -> argparse.ArgumentParser:
    d = PreprocessConfig("", "")
    p = argparse.ArgumentParser(prog="tessera preprocess", allow_abbrev=False, description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--input", required=True, help="raw folder (local or gs://)")
    p.add_argument("--output", required=True, help="dataset folder to create (local or gs://)")
    p.add_argument("--layout", choices=[SEGMENTATION, CLASSIFICATION], default=d.layout)
    p.add_argument("--tile-size", type=int, default=d.tile_size, help="core size C of each tile")
    p.add_argument("--margin", type=int, default=d.margin, help="mirrored context M around each core")
    p.add_argument("--augment-copies", type=int, default=d.augment_copies, help="static augmented copies per train tile")
    p.add_argument("--split-fractions", default="0.8,0.1,0.1", help="train,val,test fractions")
    p.add_argument("--split-salt", default=d.split_salt, help="changes the hash split (keep it fixed across runs)")
    p.add_argument("--mask-values", default=d.mask_values, help="auto | binary | ids | v:c,v:c,...")
    p.add_argument("--class-names", default="", help="comma-separated class names (segmentation: background first)")
    p.add_argument("--color-mode", choices=["rgb", "grayscale"], default=d.color_mode)
    p.add_argument("--bit-depth", choices=["scale8", "keep16"], default=d.bit_depth)
    p.add_argument("--intensity", choices=["fixed", "percentile", "zscore"], default=d.intensity,
                   help="per-image normalisation onto the stored range: percentile (1st-99.8th -> full range, as "
                        "CSBDeep/StarDist), zscore (mean -/+ 3 sd -> full range), or fixed (--bit-depth only); "
                        "recorded in the dataset and the model card, and predict applies the same")
    p.add_argument("--max-pixels", type=int, default=d.max_pixels, help="refuse larger images before decoding")
    p.add_argument("--image-size", type=int, default=d.image_size, help="classification whole-image size (0: tile size)")
    p.add_argument("--fit", choices=["resize", "pad", "crop"], default=d.fit)
    p.add_argument("--tiles", action="store_true", help="classification: tiles inheriting the label")
    p.add_argument("--max-rejected-fraction", type=float, default=d.max_rejected_fraction)
    p.add_argument("--shard-bytes", type=int, default=d.shard_bytes,
                   help="target shard size in bytes (estimated from input file sizes)")
    p.add_argument("--min-shards", type=int, default=d.min_shards,
                   help="at least this many shards per split (capped by its number of sources)")
    p.add_argument("--png-compression", type=int, default=d.png_compression, choices=range(10))
    p.add_argument("--overwrite", action="store_true",
                   help="publish a new version of an existing output (readers switch when it is complete)")
    p.add_argument("--follow-symlinks", action="store_true",
                   help="read symlinked inputs whose target lies outside --input (refused by default)")
    p.add_argument("--keep-versions", type=int, default=d.keep_versions,
                   help="versions of the output kept (the newest ones); older ones are deleted")
    g = p.add_argument_group("large sources (tiled / pyramidal TIFF, OME-TIFF, SVS, OME-Zarr)")
    g.add_argument("--large-image-pixels", type=int, default=d.large_image_pixels,
                   help="region-readable sources with more pixels are read by region, block by block over "
                        "the workers (0: never)")
    g.add_argument("--memory-limit-mb", type=int, default=d.memory_limit_mb,
                   help="the image and mask windows of one block of a large source stay within this")
    g.add_argument("--pixel-size", type=float, default=d.pixel_size_um, dest="pixel_size_um",
                   help="µm/px of the dataset: the pyramid level of this size is read; sources that record "
                        "no pixel size are taken to have it (0: not known)")
    g.add_argument("--level", type=int, default=d.level, help="read this pyramid level (-1: by --pixel-size)")
    t = p.add_argument_group("which tiles to keep")
    t.add_argument("--min-foreground", type=float, default=d.min_foreground,
                   help="keep tiles whose core has at least this fraction of labelled non-background pixels")
    t.add_argument("--background-tiles-fraction", type=float, default=d.background_tiles_fraction,
                   help="with --min-foreground: keep this share of the other tiles too (a stable sample)")
    t.add_argument("--skip-blank", action="store_true",
                   help="drop tiles that are empty slide glass or padding (see docs: the tissue test)")
    w = p.add_argument_group("border weight map (U-Net eq. 2), for touching objects")
    w.add_argument("--weight-map", choices=["none", "unet"], default=d.weight_map,
                   help="unet: store w0 * exp(-(d1 + d2)^2 / 2 sigma^2) per tile, objects from instance masks "
                        "or the mask's connected components (a background that separates them)")
    w.add_argument("--weight-map-w0", type=float, default=d.weight_map_w0, help="w0: the border term's weight")
    w.add_argument("--weight-map-sigma", type=float, default=d.weight_map_sigma, help="sigma in pixels")
    o = p.add_argument_group("instance target (touching objects)")
    o.add_argument("--target", choices=["classes", "boundary"], default=d.target,
                   help="boundary: the mask becomes background / boundary / interior, derived per tile (after "
                        "static augmentation) from the objects: instance ids (--mask-values instances) or the "
                        "connected components of the one object class (a background that separates them)")
    o.add_argument("--border-thickness", type=int, default=d.border_thickness,
                   help="boundary: object pixels within this many px of another label are boundary")
    o.add_argument("--distance-map", action="store_true",
                   help="boundary: also store each object pixel's distance to its object's edge")
    o.add_argument("--distance-max", type=float, default=d.distance_max,
                   help="px: the stored distance map is clipped here (uint8, 255 = this)")
    return p


def config_from_args(args: argparse.Namespace) -> PreprocessConfig:
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(PreprocessConfig) if hasattr(args, f.name)}
    values["split_fractions"] = tuple(float(x) for x in args.split_fractions.split(","))
    values["class_names"] = tuple(c.strip() for c in args.class_names.split(",") if c.strip())
    config = PreprocessConfig(**values)
    if len(config.split_fractions) != 3 or abs(sum(config.split_fractions) - 1) > 1e-6 or min(config.split_fractions) < 0:
        raise SystemExit(f"--split-fractions must be three non-negative numbers summing to 1, got {args.split_fractions}")
    if config.tile_size < 1 or config.margin < 0 or config.augment_copies < 0:
        raise SystemExit("--tile-size must be >= 1, --margin and --augment-copies >= 0")
    if config.keep_versions < 1:
        raise SystemExit("--keep-versions must be >= 1")
    if not (0 <= config.min_foreground <= 1 and 0 <= config.background_tiles_fraction <= 1):
        raise SystemExit("--min-foreground and --background-tiles-fraction must be in [0, 1]")
    if config.large_image_pixels < 0 or config.memory_limit_mb < 1 or config.pixel_size_um < 0 or config.level < -1:
        raise SystemExit("--large-image-pixels and --pixel-size must be >= 0, --memory-limit-mb >= 1, --level >= -1")
    if config.weight_map != "none" and (config.layout != SEGMENTATION or config.weight_map_sigma <= 0
                                        or config.weight_map_w0 < 0):
        raise SystemExit("--weight-map needs --layout segmentation, --weight-map-sigma > 0 and --weight-map-w0 >= 0")
    if config.target == "boundary" and (config.layout != SEGMENTATION or config.border_thickness < 1):
        raise SystemExit("--target boundary needs --layout segmentation and --border-thickness >= 1")
    if config.distance_map and (config.target != "boundary" or config.distance_max <= 0):
        raise SystemExit("--distance-map needs --target boundary and --distance-max > 0")
    return config


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


def check_input(config: PreprocessConfig) -> None:
    root = config.input.rstrip("/")
    pattern = f"{root}/images/**" if config.layout == SEGMENTATION else f"{root}/**"
    if not FileSystems.match([pattern], limits=[1])[0].metadata_list:
        raise SystemExit(f"tessera preprocess: no input files match {pattern} "
                         f"(expected layout: {config.layout}; see `tessera preprocess --help`)")


def build_pipeline(p: beam.Pipeline, config: PreprocessConfig, spec: DatasetSpec, work: str) -> None:
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
    split = listed_sources | "AssignSplits" >> pt.AssignSplits(
        config.split_fractions, stratify=config.layout == CLASSIFICATION, salt=config.split_salt)
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


def count_inputs(config: PreprocessConfig) -> int:
    """Image files under the input (one listing): the progress bar's total."""
    root = config.input.rstrip("/")
    pattern = f"{root}/images/**" if config.layout == SEGMENTATION else f"{root}/**"
    return sum(has_image_extension(m.path) for m in FileSystems.match([pattern])[0].metadata_list)


def progress_status(total: int):
    def describe(totals: dict) -> progress.Status:
        return progress.Status(totals.get("sources", 0) + totals.get("rejected", 0), total, "sources",
                               f"{totals.get('rejected', 0)} rejected, {totals.get('examples', 0)} examples, "
                               f"{totals.get('pixels', 0) / 1e6:.0f} MP")
    return describe


def run(argv: list[str] | None = None) -> int:
    args, beam_args = flags.parse(build_parser(), argv)
    config = config_from_args(args)
    try:
        check_apart(config.input, config.output)
    except ValueError as e:
        raise SystemExit(f"tessera preprocess: {e}") from None
    if publish.output_exists(config.output) and not config.overwrite:
        raise SystemExit(f"tessera preprocess: {config.output} exists; pass --overwrite to publish a new version")
    check_input(config)
    publish.clean_leftovers(config.output)
    empty_folders: list[str] = []
    if config.layout == CLASSIFICATION:
        found, empty_folders = class_folders(config.input, list_files=not config.class_names)
        class_names = config.class_names or tuple(found)
    else:
        class_names = source_class_names(config)
    spec = dataset_spec(config, class_names)
    work = publish.temporary_output(config.output)
    started = datetime.datetime.now(datetime.timezone.utc)
    print(f"tessera preprocess: {config.input} -> {config.output} (working in {work})", flush=True)
    printer = progress.ProgressPrinter("tessera preprocess", progress.counter_report(
        f"{work}/{layout.WORK_PARTS}/progress/*.json", progress_status(count_inputs(config))))
    printer.start()
    try:
        with runner.make_pipeline(beam_args) as p:
            build_pipeline(p, config, spec, work)
        printer.stop()
        summary = finalise.finalise(work, config, spec, empty_folders, started, beam_args)
    except BaseException:
        printer.stop()
        publish.delete_tree(work)  # a failed run leaves nothing behind; the output is untouched
        raise
    if summary["rejected_fraction"] > config.max_rejected_fraction:
        kept = publish.keep_only_reports(work)
        print(finalise.describe(summary, config.output), file=sys.stderr)
        raise SystemExit(
            f"tessera preprocess: {summary['rejected']} of {summary['sources_in']} inputs rejected "
            f"({summary['rejected_fraction']:.1%} > --max-rejected-fraction {config.max_rejected_fraction:.1%}); "
            f"nothing was published. Rejected records with reasons: {kept}/{layout.REJECTED_FILE}")
    if not sum(summary["examples"].values()):
        kept = publish.keep_only_reports(work)
        print(finalise.describe(summary, config.output), file=sys.stderr)
        raise SystemExit(f"tessera preprocess: no examples were written ({summary['rejected']} of "
                         f"{summary['sources_in']} inputs rejected, {summary['tiles'].get('kept', 0)} tiles kept); "
                         f"nothing was published. Reports: {kept}")
    version = publish.commit(work, config.output, config.overwrite, summary["fingerprint"], config.keep_versions)
    print(finalise.describe(summary, config.output, version), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(run())
