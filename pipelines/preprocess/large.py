"""Sources larger than memory: planned from their headers, cut block by block over many workers.

A region-readable source (tiled / pyramidal TIFF, OME-TIFF, SVS, OME-Zarr; see
``pipelines.core.regions``) with more pixels than ``--large-image-pixels``, or read at
another pyramid level than its first, becomes :class:`SourceBlock` work units: squares of
whole cores sized by ``--memory-limit-mb``. Each unit reads its image (and mask) window —
its cores plus the margin, mirrored only at the true border — and cuts the same tiles, with
the same ids, seeds and bytes, as the whole-image path would. Units of one source go to
different shards, so one slide keeps every worker busy; a worker holds one unit's window.
"""
from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Iterator

import numpy as np

from pipelines.beam import region_files
from pipelines.core import images, masks, pixels, regions, sources, tiling
from pipelines.preprocess import examples
from schemas.example import IGNORE_LABEL
from schemas.rejected import RejectedInput

MAX_BLOCK_SIDE = 8192


@dataclasses.dataclass(frozen=True)
class LargeSettings:
    large_image_pixels: int = 64_000_000   # region-readable sources above this go block by block
    memory_limit_mb: int = 512             # per unit: its image and mask windows
    pixel_size_um: float | None = None     # read the pyramid level of this pixel size
    level: int | None = None               # or this level
    intensity: str = "fixed"               # per-image normalisation: its range from a look at the whole


@dataclasses.dataclass(frozen=True)
class SourceBlock:
    """One work unit of a large source: output cores whose origin is in rows x cols of ``level``."""

    source: sources.Source
    level: int
    mask_level: int | None
    height: int
    width: int
    index: int
    count: int
    rows: tuple[int, int]
    cols: tuple[int, int]
    mask_mode: str | None = None        # the mask policy's mode, ``auto`` resolved once per source
    pixel_size_um: float | None = None
    intensity_range: tuple[float, float] | None = None   # the source's, for --intensity percentile|zscore

    @property
    def id(self) -> str:
        return self.source.id

    @property
    def split(self) -> str | None:
        return self.source.split

    @property
    def region(self) -> list[int]:
        return [*self.rows, *self.cols]


def block_side(core: int, margin: int, bytes_per_pixel: int, limit_bytes: int) -> int:
    """The largest multiple of ``core`` whose window (+ margins) fits ``limit_bytes``."""
    def cost(side: int) -> int:
        return (side + 2 * margin) ** 2 * bytes_per_pixel
    if cost(core) > limit_bytes:
        raise ValueError(f"a block of one core ({core} px) needs about {cost(core) / 2**20:.0f} MiB; raise "
                         f"--memory-limit-mb above {limit_bytes / 2**20:.0f}")
    side = core
    while side + core <= MAX_BLOCK_SIDE and cost(side + core) <= limit_bytes:
        side += core
    return side


def window_bytes_per_pixel(channels: int, itemsize: int, mask_itemsize: int) -> int:
    """Bytes per window pixel: the read image, its conformed copy, the raw mask, its class ids."""
    return 2 * channels * itemsize + (mask_itemsize + 1 if mask_itemsize else 0)


def _level(source: regions.RegionSource, settings: LargeSettings) -> int:
    if settings.level is not None:
        if not 0 <= settings.level < len(source.levels):
            raise RejectedInput("no_such_level", f"{source.name}: --level {settings.level}, but it has "
                                f"{len(source.levels)} levels")
        return settings.level
    return regions.level_view(source, settings.pixel_size_um, resample=False).level


def _mask_level(mask: regions.RegionSource, shape: tuple[int, int], name: str) -> int:
    for level in range(len(mask.levels)):
        if mask.level_shape(level) == shape:
            return level
    raise RejectedInput("size_mismatch", f"{name}: no level of the mask is {shape[0]}x{shape[1]} (HxW) like the "
                        f"image's; mask levels are {[mask.level_shape(i) for i in range(len(mask.levels))]}")


def _resolve_mask_mode(mask: regions.RegionSource, policy: masks.MaskPolicy, name: str) -> str:
    """``auto`` decided once per source, from a bounded look at the whole mask
    (``regions.sample_values``); a block holding values outside that decision is rejected
    with the reason."""
    if policy.mode != "auto":
        return policy.mode
    values = np.unique(regions.sample_values(mask)).tolist()
    try:
        return masks.auto_mask_mode([v for v in values if v not in policy.ignore_values], policy.num_classes, name)
    except RejectedInput as error:
        raise RejectedInput(error.reason, error.detail + policy.remedy) from None


def plan_source(source: sources.Source, settings: LargeSettings, spec, mask_policy: masks.MaskPolicy | None
                ) -> tuple[list[SourceBlock] | None, float | None]:
    """(the work units of ``source``, or None when it takes the whole-image path — not region
    readable, or small and read at its first level —; its pixel size: the header's, else
    ``--pixel-size``). Headers only; RejectedInput with a reason for a source that cannot be
    cut (mask not region-readable or of another size, no matching level)."""
    if not regions.is_region_readable(source.image_path):
        return None, settings.pixel_size_um
    with region_files.opened(source.image_path) as image:
        if image is None:
            return None, settings.pixel_size_um
        if not settings.large_image_pixels or spec.whole_image:
            return None, image.pixel_size_um or settings.pixel_size_um
        level = _level(image, settings)
        height, width = image.level_shape(level)
        if height * width <= settings.large_image_pixels and level == 0:
            return None, image.pixel_size_um or settings.pixel_size_um
        pixel_size = image.pixel_size(level) or settings.pixel_size_um
        intensity = None if settings.intensity == "fixed" else \
            pixels.intensity_range(regions.sample_values(image), settings.intensity)
        itemsize = 2 if spec.dtype == "uint16" else 1
        mask_level = mode = None
        mask_itemsize = 0
        if source.mask_path:
            if not regions.is_region_readable(source.mask_path):
                raise RejectedInput("mask_not_region_readable", (
                    f"{source.mask_path}: the image is {height}x{width} and read by region, so its mask must be "
                    "too: save it as a tiled TIFF (tifffile.imwrite(..., tile=(256, 256))) or a zarr array"))
            with region_files.opened(source.mask_path) as mask:
                if mask is None:
                    raise RejectedInput("mask_not_region_readable", f"{source.mask_path}: a strip TIFF; save it "
                                        "tiled (tifffile.imwrite(..., tile=(256, 256))) or as a zarr array")
                mask_level = _mask_level(mask, (height, width), source.id)
                mode = _resolve_mask_mode(mask, mask_policy or masks.MaskPolicy(), source.mask_path)
                mask_itemsize = mask.dtype.itemsize
    side = block_side(spec.core, spec.margin, window_bytes_per_pixel(spec.channels, itemsize, mask_itemsize),
                      settings.memory_limit_mb * 2**20)
    cells = [((a, min(a + side, height)), (c, min(c + side, width)))
             for a in range(0, height, side) for c in range(0, width, side)]
    return [SourceBlock(source, level, mask_level, height, width, i, len(cells), rows, cols, mode, pixel_size,
                        intensity) for i, (rows, cols) in enumerate(cells)], pixel_size


@dataclasses.dataclass(frozen=True)
class BlockPixels:
    """What one unit read: its image window (conformed), mask class ids and instance ids."""

    origin: tuple[int, int]
    image: np.ndarray
    mask: np.ndarray | None
    instances: np.ndarray | None
    boxes: list


def unit_boxes(block: SourceBlock, spec) -> list[tiling.Box]:
    """The cores of the unit: those of the level's grid whose origin lies in its square."""
    (a, b), (c, d), core = block.rows, block.cols, spec.core
    return [(y, x, min(core, block.height - y), min(core, block.width - x))
            for y in range(a, b, core) for x in range(c, d, core)]


def read_block(block: SourceBlock, spec, image_policy: images.ImagePolicy,
               mask_policy: masks.MaskPolicy | None) -> BlockPixels:
    """Read a unit's windows (all its reading: a corrupt tile fails here, before any example)."""
    source, boxes = block.source, unit_boxes(block, spec)
    y0, y1, x0, x1 = tiling.source_window(boxes, spec.core, spec.margin, block.height, block.width)
    image = region_files.cached(source.image_path).read(block.level, y0, x0, y1 - y0, x1 - x0)
    image = images.normalised(image, image_policy, block.intensity_range, source.image_path)
    mask = instances = None
    if source.mask_path:
        raw = region_files.cached(source.mask_path).read(block.mask_level, y0, x0, y1 - y0, x1 - x0)[..., 0]
        mask = masks.class_ids(raw, mask_policy or masks.MaskPolicy(), source.mask_path, mode=block.mask_mode)
        instances = examples.instance_ids(raw, source.mask_path) if block.mask_mode == "instances" else None
    return BlockPixels((y0, x0), image, mask, instances, boxes)


def block_examples(block: SourceBlock, read: BlockPixels, settings: examples.TileSettings,
                   counts: Counter) -> Iterator[dict]:
    """The examples of one unit, equal to those the whole-image path cuts at its cores."""
    spec = settings.spec
    origin, (height, width) = read.origin, (block.height, block.width)

    def cut_labels(labels: np.ndarray, y: int, x: int, outside: int) -> np.ndarray:
        tile = tiling.cut_from_window(labels[..., None], origin, y, x, spec.core, spec.margin, height, width)
        rows, cols = tiling.valid_region(y, x, spec.core, spec.margin, height, width)
        out = np.full_like(tile, outside)
        out[rows, cols] = tile[rows, cols]
        return out

    def cut(box):
        y, x = box[0], box[1]
        return (tiling.cut_from_window(read.image, origin, y, x, spec.core, spec.margin, height, width),
                None if read.mask is None else cut_labels(read.mask, y, x, IGNORE_LABEL),
                None if read.instances is None else cut_labels(read.instances, y, x, 0))

    extra = {"source_level": block.level, "pixel_size_um": block.pixel_size_um}
    yield from examples.cut_examples(block.source, read.boxes, cut, (height, width), settings, counts, extra)
