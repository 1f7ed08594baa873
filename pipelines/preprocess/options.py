"""``tessera preprocess``'s settings: the frozen config, its flags (each says what it does and its
default) and their checks. The job (``pipelines.preprocess.job``) only reads them."""
from __future__ import annotations

import argparse
import dataclasses

from schemas import versions
from schemas.example import CLASSIFICATION, SEGMENTATION

COLOR_MODES = ("auto", "rgb", "grayscale")
NO_DEFAULT = " (default: none)%(default).0s"   # for flags whose default is empty (the formatter prints nothing)

LAYOUTS_HELP = """\
input layouts (--input):
  segmentation (--layout segmentation, the default):
    INPUT/images/<name>.<ext>    the images
    INPUT/masks/<name>.<ext>     one mask per image: the same relative path and file stem
                                 (extensions may differ: images/a.jpg pairs with masks/a.png)
  classification (--layout classification):
    INPUT/<class>/<name>.<ext>   one folder per class; the folder name is the label
  Subfolders are allowed (their path is part of the id). A first folder train/, val/ or test/
  (right under images/ and masks/, or above the class folders) puts what it holds in that split;
  everything else is split by --split-fractions, --split-file or --folds/--fold.
  Image files: png, jpg, tif(f), bmp, gif; large tiled/pyramidal TIFF, OME-TIFF, SVS, NDPI and
  OME-Zarr are read by region. --output must lie outside --input.
"""


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
    split_file: str = ""                 # CSV/JSON: source id -> train/val/test (instead of the hash split)
    folds: int = 0                       # k-fold: fold --fold of --folds is val, the others train
    fold: int = 0
    mask_values: str = "auto"
    class_names: tuple[str, ...] = ()    # segmentation default: background, foreground
    color_mode: str = "auto"             # auto: grayscale when every source's header is, else rgb
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
    target: str = "auto"                  # boundary: background / boundary / interior from the masks' objects;
    #                                       auto: boundary for segmentation masks of one object class
    border_thickness: int = 2             # px of boundary inside each object's edge
    distance_map: bool = False            # boundary: store each object pixel's distance to its edge too
    distance_max: float = 32.0            # px: the stored distance map's clip (255 = this)


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Defaults after every flag's help; the layouts in the epilog as written."""


def build_parser() -> argparse.ArgumentParser:
    d = PreprocessConfig("", "")
    p = argparse.ArgumentParser(prog="tessera preprocess", allow_abbrev=False, formatter_class=HelpFormatter,
                                description="raw image folders -> overlap-tiled, augmented, sharded TFDS dataset "
                                            "(Apache Beam; DirectRunner by default, other runners by their flags)",
                                epilog=LAYOUTS_HELP)
    p.add_argument("--input", required=True, default=argparse.SUPPRESS,
                   help="required: the raw folder (local or gs://), laid out as below")
    p.add_argument("--output", required=True, default=argparse.SUPPRESS,
                   help="required: the dataset folder to create or to publish a new version in (local or gs://); "
                        "outside --input")
    p.add_argument("--layout", choices=[SEGMENTATION, CLASSIFICATION], default=d.layout,
                   help="segmentation: images/ + masks/ pairs; classification: one folder per class (see below)")
    p.add_argument("--tile-size", type=int, default=d.tile_size, help="core size C of each tile, in px")
    p.add_argument("--margin", type=int, default=d.margin, help="mirrored context M around each core, in px")
    p.add_argument("--augment-copies", type=int, default=d.augment_copies, help="static augmented copies per train tile")
    s = p.add_argument_group("splits (per source image; a train/ val/ test/ folder always wins)")
    s.add_argument("--split-fractions", default="0.8,0.1,0.1",
                   help="train,val,test fractions of the stable hash split (classification: per class)")
    s.add_argument("--split-salt", default=d.split_salt, help="changes the hash split and the folds (keep it fixed "
                                                             "across runs)" + NO_DEFAULT)
    s.add_argument("--split-file", default=d.split_file,
                   help="CSV (id,split rows) or JSON ({id: split}) giving each source's split (train, val or test) "
                        "instead of the hash; the id is the path under images/ (or the input, for classification) "
                        "without extension, e.g. sub/a. Sources it does not name are rejected (not_in_split_file)" + NO_DEFAULT)
    s.add_argument("--folds", type=int, default=d.folds,
                   help="k-fold split instead of the fractions: sources in stable hash order (per class for "
                        "classification) are dealt into K folds; fold --fold is val, the others train (0: off)")
    s.add_argument("--fold", type=int, default=d.fold, help="with --folds: which fold (0..K-1) is the val split")
    p.add_argument("--mask-values", default=d.mask_values,
                   help="what mask pixel values mean: auto (decided per mask from its values), binary (0/255 or "
                        "0/1), ids (class ids, 255 = ignore), instances (object ids, 0 = background: one object "
                        "class), or an explicit map v:c,v:c,... (c a class id or 'ignore')")
    p.add_argument("--class-names", default="", help="comma-separated class names (segmentation: background "
                                                     "first; none given: background,foreground, or the class folders)" + NO_DEFAULT)
    p.add_argument("--color-mode", choices=COLOR_MODES, default=d.color_mode,
                   help="channels stored: rgb (3; gray replicated), grayscale (1; colour by ITU-R 601-2 luma) or "
                        "auto: grayscale when every source's header says gray (L, I;16, 1-channel TIFF, a gray "
                        "palette), else rgb; decided once per dataset from the headers and recorded in config.json")
    p.add_argument("--bit-depth", choices=["scale8", "keep16"], default=d.bit_depth,
                   help="stored sample type: scale8 (uint8; 16-bit sources scaled by 255/65535) or keep16 (uint16; "
                        "8-bit sources multiplied by 257)")
    p.add_argument("--intensity", choices=["fixed", "percentile", "zscore"], default=d.intensity,
                   help="per-image normalisation onto the stored range: percentile (1st-99.8th -> full range, as "
                        "CSBDeep/StarDist), zscore (mean -/+ 3 sd -> full range), or fixed (--bit-depth only); "
                        "recorded in the dataset and the model card, and predict applies the same")
    p.add_argument("--max-pixels", type=int, default=d.max_pixels,
                   help="refuse larger images (and masks) from their header, before decoding")
    p.add_argument("--image-size", type=int, default=d.image_size,
                   help="classification: the side whole images are brought to (0: --tile-size)")
    p.add_argument("--fit", choices=["resize", "pad", "crop"], default=d.fit,
                   help="classification: how a whole image reaches --image-size: resize (long side scaled to it, aspect "
                        "kept, zero-padded), pad (not scaled: zero-padded or centre-cropped) or crop (short side "
                        "scaled to it, centre-cropped)")
    p.add_argument("--tiles", action="store_true", help="classification: tiles inheriting the label instead of "
                                                        "whole images")
    p.add_argument("--max-rejected-fraction", type=float, default=d.max_rejected_fraction,
                   help="publish nothing when more than this fraction of the inputs is rejected (the rejected "
                        "records are kept beside --output)")
    p.add_argument("--shard-bytes", type=int, default=d.shard_bytes,
                   help="target shard size in bytes (estimated from input file sizes)")
    p.add_argument("--min-shards", type=int, default=d.min_shards,
                   help="at least this many shards per split (capped by its number of sources)")
    p.add_argument("--png-compression", type=int, default=d.png_compression, choices=range(10), metavar="{0..9}",
                   help="zlib level of the PNG-encoded tiles in the shards: 0 fastest and largest, 9 smallest")
    p.add_argument("--overwrite", action="store_true",
                   help="publish a new version of an existing output (readers switch when it is complete)")
    p.add_argument("--follow-symlinks", action="store_true",
                   help="read symlinked inputs whose target lies outside --input (refused by default)")
    p.add_argument("--keep-versions", type=int, default=d.keep_versions,
                   help="versions of the output kept (the newest ones); older ones are deleted")
    add_large_and_tile_flags(p, d)
    return p


def add_large_and_tile_flags(p: argparse.ArgumentParser, d: PreprocessConfig) -> None:
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
                   help="none, or unet: store w0 * exp(-(d1 + d2)^2 / 2 sigma^2) per tile, objects from instance masks "
                        "or the mask's connected components (a background that separates them)")
    w.add_argument("--weight-map-w0", type=float, default=d.weight_map_w0, help="w0: the border term's weight")
    w.add_argument("--weight-map-sigma", type=float, default=d.weight_map_sigma, help="sigma in pixels")
    o = p.add_argument_group("instance target (touching objects)")
    o.add_argument("--target", choices=["auto", "classes", "boundary"], default=d.target,
                   help="classes: the masks' class ids; boundary: the mask becomes background / boundary / "
                        "interior, derived per tile (after static augmentation) from the objects: instance ids "
                        "(--mask-values instances) or the connected components of the one object class (a "
                        "background that separates them), so touching objects come apart; auto (default): "
                        "boundary for segmentation masks of one object class (two --class-names), else classes")
    o.add_argument("--border-thickness", type=int, default=d.border_thickness,
                   help="boundary: object pixels within this many px of another label are boundary")
    o.add_argument("--distance-map", action="store_true",
                   help="boundary: also store each object pixel's distance to its object's edge")
    o.add_argument("--distance-max", type=float, default=d.distance_max,
                   help="px: the stored distance map is clipped here (uint8, 255 = this)")


def config_from_args(args: argparse.Namespace) -> PreprocessConfig:
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(PreprocessConfig) if hasattr(args, f.name)}
    try:
        values["split_fractions"] = tuple(float(x) for x in args.split_fractions.split(","))
    except ValueError:
        raise SystemExit(f"--split-fractions must be three numbers such as 0.8,0.1,0.1, got {args.split_fractions}")
    values["class_names"] = tuple(c.strip() for c in args.class_names.split(",") if c.strip())
    config = PreprocessConfig(**values)
    config = dataclasses.replace(config, target=resolved_target(config))
    check(config)
    return config


def resolved_target(config: PreprocessConfig) -> str:
    """``--target auto``: objects (``boundary``) for segmentation masks of one object class, the
    masks' classes otherwise (several object classes, classification)."""
    if config.target != "auto":
        return config.target
    one_class = len(config.class_names or ("background", "foreground")) == 2
    return "boundary" if config.layout == SEGMENTATION and one_class else "classes"


def check(config: PreprocessConfig) -> None:
    """Settings that contradict each other: SystemExit with the flags to change."""
    if len(config.split_fractions) != 3 or abs(sum(config.split_fractions) - 1) > 1e-6 or min(config.split_fractions) < 0:
        raise SystemExit("--split-fractions must be three non-negative numbers summing to 1, got "
                         + ",".join(map(str, config.split_fractions)))
    if config.folds < 0 or config.folds == 1 or (config.folds and not 0 <= config.fold < config.folds):
        raise SystemExit(f"--folds K needs K >= 2 and --fold in 0..K-1, got --folds {config.folds} --fold {config.fold}")
    if config.fold and not config.folds:
        raise SystemExit("--fold needs --folds K")
    if (config.folds or config.split_file) and (config.split_fractions != PreprocessConfig.split_fractions
                                                or (config.folds and config.split_file)):
        raise SystemExit("choose one split: --split-fractions, --split-file or --folds/--fold")
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
