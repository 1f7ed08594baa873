"""Region-readable sources: images too large to decode whole, read region by region.

A :class:`RegionSource` knows its size, dtype, channels, pyramid levels and pixel size
(µm/px at level 0, when the file says) from its header, and ``read(level, y, x, h, w)``
decodes only the tiles or chunks that region touches:

- tiled TIFF / BigTIFF, OME-TIFF, SVS- and NDPI-style pyramids, through ``tifffile``'s
  ``aszarr`` and ``zarr`` (JPEG, JPEG 2000, LZW, deflate, zstd tiles via ``imagecodecs``);
- OME-Zarr (NGFF 0.4 and 0.5 multiscales) and plain zarr arrays.

Strip TIFFs, PNG, JPEG and the rest are not region-readable: ``open_region_source``
returns None for them and the whole-image path reads them under its pixel limit. Pure
core: no Beam, no TensorFlow; a caller on an object store passes an open file.
"""
from __future__ import annotations

import dataclasses
import posixpath
import re
import xml.etree.ElementTree as ElementTree
from typing import Any

import numpy as np
import tifffile
import zarr

from schemas.rejected import RejectedInput

REGION_EXTENSIONS = (".tif", ".tiff", ".svs", ".ndpi", ".btf", ".tf8")
_MICROMETRES = {"µm": 1.0, "um": 1.0, "micrometer": 1.0, "micron": 1.0, "nm": 1e-3, "nanometer": 1e-3,
                "mm": 1e3, "millimeter": 1e3, "cm": 1e4, "centimeter": 1e4, "m": 1e6, "meter": 1e6}


@dataclasses.dataclass(frozen=True)
class RegionSource:
    """One image as a pyramid of arrays (level 0 first); channels are always last."""

    name: str
    levels: tuple[Any, ...]             # zarr arrays, (H, W[, C]) or with leading singleton axes
    axes: str                           # of each level's array, e.g. "YXS", "CYX", "TCZYX"
    pixel_size_um: float | None = None  # at level 0
    kind: str = "tiff"

    @property
    def shape(self) -> tuple[int, int]:
        return self.level_shape(0)

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self.levels[0].dtype)

    @property
    def channels(self) -> int:
        sizes = dict(zip(self.axes, self.levels[0].shape))
        return int(sizes.get("S", sizes.get("C", 1)))

    def level_shape(self, level: int) -> tuple[int, int]:
        sizes = dict(zip(self.axes, self.levels[level].shape))
        return int(sizes["Y"]), int(sizes["X"])

    def downsample(self, level: int) -> float:
        """How many level-0 pixels one pixel of ``level`` spans (along x)."""
        return self.shape[1] / self.level_shape(level)[1]

    def pixel_size(self, level: int) -> float | None:
        return None if self.pixel_size_um is None else self.pixel_size_um * self.downsample(level)

    def read(self, level: int, y: int, x: int, h: int, w: int) -> np.ndarray:
        """(h, w, C) pixels of ``level`` starting at (y, x); the region must lie inside it."""
        height, width = self.level_shape(level)
        if not (0 <= y and 0 <= x and h > 0 and w > 0 and y + h <= height and x + w <= width):
            raise ValueError(f"{self.name}: region y={y} x={x} h={h} w={w} is outside level {level} "
                             f"({height}x{width})")
        index = tuple(slice(y, y + h) if a == "Y" else slice(x, x + w) if a == "X" else slice(None)
                      for a in self.axes)
        region = np.asarray(self.levels[level][index])
        kept = [a for a in self.axes]
        for axis in reversed(range(len(kept))):  # leading singleton axes (T, Z) go
            if kept[axis] not in "YXSC" and region.shape[axis] == 1:
                region = region.squeeze(axis)
                kept.pop(axis)
        if set(kept) - set("YXSC"):
            raise RejectedInput("unsupported_axes", f"{self.name}: axes {self.axes} (only one plane of Y, X "
                                "and channels can be read as an image)")
        order = [kept.index("Y"), kept.index("X")] + [kept.index(a) for a in kept if a in "SC"]
        region = np.transpose(region, order)
        return region if region.ndim == 3 else region[..., None]


@dataclasses.dataclass(frozen=True)
class LevelView:
    """The pixels to predict: one level of a source, resampled by ``factor`` (output pixel
    size / level pixel size) when no level has the wanted pixel size (factor 1: as stored).

    Resampling is separable, with a triangle kernel widened to the factor when shrinking
    (so it averages instead of aliasing), evaluated from absolute output coordinates in a
    fixed order: any region is bit-identical to the same pixels of any larger region.
    """

    source: RegionSource
    level: int
    factor: float = 1.0

    @property
    def shape(self) -> tuple[int, int]:
        height, width = self.source.level_shape(self.level)
        if self.factor == 1.0:
            return height, width
        return max(1, round(height / self.factor)), max(1, round(width / self.factor))

    @property
    def pixel_size(self) -> float | None:
        size = self.source.pixel_size(self.level)
        return None if size is None else size * self.factor

    def read(self, y: int, x: int, h: int, w: int) -> np.ndarray:
        if self.factor == 1.0:
            return self.source.read(self.level, y, x, h, w)
        height, width = self.shape
        if not (0 <= y and 0 <= x and h > 0 and w > 0 and y + h <= height and x + w <= width):
            raise ValueError(f"{self.source.name}: region y={y} x={x} h={h} w={w} is outside {height}x{width}")
        level_h, level_w = self.source.level_shape(self.level)
        rows, row_weights = _taps(y, h, self.factor, level_h)
        cols, col_weights = _taps(x, w, self.factor, level_w)
        y0, x0 = int(rows.min()), int(cols.min())
        window = self.source.read(self.level, y0, x0, int(rows.max()) + 1 - y0, int(cols.max()) + 1 - x0)
        window = window.astype(np.float32)
        along_y = sum(row_weights[:, k, None, None] * window[rows[:, k] - y0] for k in range(rows.shape[1]))
        out = sum(col_weights[None, :, k, None] * along_y[:, cols[:, k] - x0] for k in range(cols.shape[1]))
        dtype = self.source.dtype
        if np.issubdtype(dtype, np.integer):
            info = np.iinfo(dtype)
            return np.clip(np.rint(out), info.min, info.max).astype(dtype)
        return out.astype(dtype)


def _taps(start: int, count: int, factor: float, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Source indices (clamped to the level) and normalised weights, (count, taps) each,
    of output pixels [start, start + count) for a resampling ``factor``."""
    support = max(factor, 1.0)
    centres = (np.arange(start, start + count, dtype=np.float64) + 0.5) * factor - 0.5
    first = np.floor(centres - support).astype(np.int64) + 1
    taps = int(np.ceil(2 * support)) + 1
    index = first[:, None] + np.arange(taps)[None, :]
    weights = np.clip(1 - np.abs(index - centres[:, None]) / support, 0, None)
    weights /= weights.sum(axis=1, keepdims=True)
    return np.clip(index, 0, size - 1), weights.astype(np.float32)


def level_view(source: RegionSource, pixel_size_um: float | None, tolerance: float = 0.1,
               resample: bool = True, max_upsample: float = 2.0) -> LevelView:
    """What to read for a model of ``pixel_size_um``: the level within ``tolerance`` of it;
    else (``resample``) the finest level finer than it, shrunk to it, or level 0 enlarged
    at most ``max_upsample`` times. Refuses (RejectedInput) a source without a pixel size,
    or a size it cannot reach."""
    if pixel_size_um is None:
        return LevelView(source, 0)
    if source.pixel_size_um is None:
        raise RejectedInput("pixel_size_unknown", f"{source.name}: the file records no pixel size, so no level "
                            f"can be matched to {pixel_size_um} µm/px; pass its pixel size explicitly")
    sizes = [source.pixel_size(level) for level in range(len(source.levels))]
    best = min(range(len(sizes)), key=lambda i: abs(sizes[i] - pixel_size_um))
    if abs(sizes[best] - pixel_size_um) <= tolerance * pixel_size_um:
        return LevelView(source, best)
    finer = [i for i, size in enumerate(sizes) if size < pixel_size_um]
    level = max(finer, key=lambda i: sizes[i]) if finer else 0
    factor = pixel_size_um / sizes[level]
    if not resample or factor < 1 / max_upsample:
        raise RejectedInput("pixel_size_mismatch", f"{source.name}: levels have {[round(s, 4) for s in sizes]} "
                            f"µm/px, none within {tolerance:.0%} of {pixel_size_um} µm/px"
                            + ("" if not resample else f", and enlarging more than {max_upsample:g}x is refused"))
    return LevelView(source, level, factor)


def _ome_pixel_size(tif: tifffile.TiffFile) -> float | None:
    try:
        root = ElementTree.fromstring(tif.ome_metadata)
    except (ElementTree.ParseError, TypeError):
        return None
    for element in root.iter():
        if element.tag.endswith("Pixels") and "PhysicalSizeX" in element.attrib:
            unit = element.attrib.get("PhysicalSizeXUnit", "µm")
            return float(element.attrib["PhysicalSizeX"]) * _MICROMETRES.get(unit, 1.0)
    return None


def _tiff_pixel_size(tif: tifffile.TiffFile) -> float | None:
    """µm/px from OME-XML, an SVS description ("MPP = 0.25"), or the resolution tags."""
    if tif.is_ome:
        size = _ome_pixel_size(tif)
        if size:
            return size
    page = tif.pages.first
    match = re.search(r"\bMPP\s*=\s*([0-9.]+)", page.description or "")
    if match:
        return float(match.group(1))
    tags = page.tags
    if "XResolution" in tags and "ResolutionUnit" in tags:
        numerator, denominator = tags["XResolution"].value
        unit = {2: 25_400.0, 3: 10_000.0}.get(int(tags["ResolutionUnit"].value))  # inch, centimetre in µm
        if unit and numerator and denominator:
            return unit * denominator / numerator
    return None


def open_tiff(file, name: str) -> RegionSource | None:
    """A tiled (or pyramidal) TIFF as a RegionSource; None for a strip TIFF (read it whole).
    ``file`` is a path or an open binary file (kept open by the caller while reading)."""
    try:
        tif = tifffile.TiffFile(file, name=posixpath.basename(name))
    except (tifffile.TiffFileError, OSError, ValueError) as e:
        raise RejectedInput("unreadable", f"{name}: not a readable TIFF ({type(e).__name__}: {e})") from e
    if not tif.series or not tif.series[0].pages:
        tif.close()
        raise RejectedInput("unreadable", f"{name}: a TIFF without any image")
    series = tif.series[0]
    if not series.pages[0].is_tiled and len(series.levels) == 1:
        tif.close()
        return None
    levels = tuple(zarr.open(series.aszarr(level=i), mode="r") for i in range(len(series.levels)))
    return RegionSource(name, levels, series.axes, _tiff_pixel_size(tif), "tiff")


def open_zarr(store, name: str | None = None) -> RegionSource:
    """An OME-Zarr image (multiscales, NGFF 0.4 or 0.5) or a plain zarr array (one level);
    ``store`` is a local path or a zarr store (e.g. on an object store), ``name`` its path."""
    path = name or str(store)
    try:
        node = zarr.open(store, mode="r")
    except (FileNotFoundError, ValueError, KeyError) as e:
        raise RejectedInput("unreadable", f"{path}: not a zarr array or group ({type(e).__name__}: {e})") from e
    if isinstance(node, zarr.Array):
        axes = "YX" if node.ndim == 2 else "YXS"
        return RegionSource(path, (node,), axes, None, "zarr")
    attrs = dict(node.attrs)
    multiscales = attrs.get("ome", attrs).get("multiscales")
    if not multiscales:
        raise RejectedInput("unreadable", f"{path}: a zarr group without multiscales metadata")
    image = multiscales[0]
    axes = "".join({"y": "Y", "x": "X", "c": "C", "z": "Z", "t": "T"}[a["name"] if isinstance(a, dict) else a]
                   for a in image["axes"])
    datasets = image["datasets"]
    levels = tuple(node[d["path"]] for d in datasets)
    size = None
    for transform in datasets[0].get("coordinateTransformations", []):
        if transform.get("type") == "scale":
            unit = next((a.get("unit", "micrometer") for a in image["axes"]
                         if isinstance(a, dict) and a["name"] == "x"), "micrometer")
            size = float(transform["scale"][axes.index("X")]) * _MICROMETRES.get(unit, 1.0)
    return RegionSource(path, levels, axes, size, "zarr")


def sample_values(source: RegionSource, max_pixels: int = 4_000_000, chunks: int = 64) -> np.ndarray:
    """Values of a bounded look at the whole source: its largest level with at most
    ``max_pixels`` pixels, read whole, or (no level is that small) ``chunks`` chunks spread
    evenly over its smallest level. For per-image decisions (mask value modes, intensity
    ranges) that every block of a large image must share."""
    small = [i for i in range(len(source.levels)) if np.prod(source.level_shape(i)) <= max_pixels]
    if small:
        level = min(small)
        return source.read(level, 0, 0, *source.level_shape(level))
    level = len(source.levels) - 1
    height, width = source.level_shape(level)
    sizes = dict(zip(source.axes, source.levels[level].chunks))
    ch, cw = min(int(sizes["Y"]), height), min(int(sizes["X"]), width)
    rows, cols = -(-height // ch), -(-width // cw)
    picks = np.unique(np.linspace(0, rows * cols - 1, min(chunks, rows * cols)).round().astype(int)).tolist()
    parts = [source.read(level, (i // cols) * ch, (i % cols) * cw, min(ch, height - (i // cols) * ch),
                         min(cw, width - (i % cols) * cw)) for i in picks]
    return np.concatenate([p.reshape(-1, p.shape[-1]) for p in parts])


def is_region_readable(path: str) -> bool:
    """Whether ``path`` may be region-readable by its name (a TIFF family file or a zarr store)."""
    lower = path.rstrip("/").lower()
    return lower.endswith(REGION_EXTENSIONS) or lower.endswith(".zarr")
