"""Planning one image's prediction: the core grid, horizontal strips under a memory bound, strip tasks.

Memory bound (``--memory-limit-mb``, per DoFn thread): the arrays the job itself holds for
one image must fit. They are, in bytes (H x W image, C channels of ``itemsize`` bytes,
K classes, T = core + 2 margin, S = stride between cores, B = --batch-size):

- decoding: file bytes + 3.5 x H W C itemsize at the peak of decoding (measured with
  Pillow 12 on PNG: its RGBX decode buffer, the chunks and the bytes of ``tobytes`` and
  the array), after which only the decoded array (1 x) stays while the strips are cut;
- per strip of ``r`` core rows spanning ``e`` image rows and ``o`` output rows:
  2 x (e + 2 margin) W C itemsize      strip pixels (one strip buffered for batching + the next),
  r n_cols core^2 K 4                  per-tile probabilities (float32) of the strip,
  e W (K + 1) 4                        the blending accumulator (Stitcher),
  o W (9 + 2K if probabilities saved,  mask, confidence, component labels, float16 probabilities
       + 4K if decoded (boundary))     (float32 for a boundary model's decoder),
  B T^2 (2 C itemsize + 3 K 4)         one inference batch with its TTA/ensemble sums.

Peak = max(decoding, decoded array + the largest strip[, instance decoding]). The largest number of core rows
per strip that fits is used; an image whose decoding, or decoded array plus a one-core-row
strip, exceeds the bound is rejected with reason ``too_large_for_memory`` before it is
decoded. With instances (``--instances``, or a boundary model) the whole image is decoded
at the end: ``instance_bytes`` per pixel (the decoder's measured peak, the whole-image inputs
it reads and what is held meanwhile) plus the decoded image (and, for an image in one strip,
that strip) must fit too, else the image is rejected with that reason (large region-readable
images are decoded block by block instead). The model's own memory (weights, TF runtime,
activations of one batch) comes on top; ``--batch-size`` controls the latter.
"""
from __future__ import annotations

import dataclasses
import time

import numpy as np

from pipelines.core import tiling
from schemas.rejected import RejectedInput

Box = tiling.Box


@dataclasses.dataclass(frozen=True)
class Geometry:
    """What planning needs to know about the models and the job's settings."""

    task: str
    core: int
    margin: int
    channels: int
    itemsize: int           # 1 (uint8 input) or 2 (uint16)
    classes: int
    stride: int
    batch_size: int = 16
    save_probabilities: bool = False
    instances: bool = False          # --instances: the finishing step labels the whole mask
    decoder_mode: str = "components"     # ...with this schemas.decoder mode
    boundary: bool = False           # ...reading a boundary model's (H, W, 3) float32 probabilities

    @property
    def tile(self) -> int:
        return self.core + 2 * self.margin


def stride_for(core: int, overlap: float) -> int:
    """Distance between neighbouring cores for a fractional ``overlap`` in [0, 0.5]."""
    if not 0.0 <= overlap <= 0.5:
        raise ValueError(f"overlap must be in [0, 0.5], got {overlap}")
    return max(1, core - int(round(overlap * core)))


def row_starts(height: int, geometry: Geometry) -> list[int]:
    grid = tiling.core_grid(height, 1, geometry.core, geometry.stride)
    return sorted({y for y, _, _, _ in grid})


def col_count(width: int, geometry: Geometry) -> int:
    return len(tiling.core_grid(1, width, geometry.core, geometry.stride))


def strip_rows(height: int, geometry: Geometry, rows_per_strip: int) -> list[tuple[int, int]]:
    """Output row ranges [a, b) of strips made of ``rows_per_strip`` consecutive core rows."""
    starts = row_starts(height, geometry)
    bounds = starts[::rows_per_strip] + [height]
    return [(a, b) for a, b in zip(bounds[:-1], bounds[1:])]


def involved_rows(starts: list[int], core: int, a: int, b: int) -> list[int]:
    """Core-row starts whose cores intersect output rows [a, b)."""
    return [y for y in starts if y < b and y + core > a]


def image_bytes(height: int, width: int, g: Geometry) -> int:
    return height * width * g.channels * g.itemsize


# Per pixel, decoding a whole image: the peak of schemas.decoder.decode beyond its inputs
# (ru_maxrss on a 2000 x 2000 image of ~2000 objects, rounded up), the whole-image inputs it
# reads (class mask 1 + confidence 2; a boundary model's float32 probabilities 12), and its
# results held while the outputs are written (labels 4, mask 1, confidence 2); the objects
# table (``objects.label_table``, ~40) runs after the decoder's work arrays are freed.
DECODE_BYTES = {"components": 48, "watershed": 80, "seeded": 40, "partition": 60}
DECODE_INPUT_BYTES = {False: 3, True: 12}
DECODE_HELD_BYTES = 7


def instance_bytes(g: Geometry) -> int:
    """Bytes per pixel of decoding a whole image with ``g``'s decoder."""
    return DECODE_BYTES[g.decoder_mode] + DECODE_INPUT_BYTES[g.boundary] + DECODE_HELD_BYTES


def decode_cost(height: int, width: int, file_bytes: int, g: Geometry) -> int:
    return file_bytes + int(3.5 * image_bytes(height, width, g))


def strip_cost(width: int, n_rows: int, extent: int, out_rows: int, n_cols: int, g: Geometry) -> int:
    k = g.classes
    pixels = 2 * (extent + 2 * g.margin) * width * g.channels * g.itemsize
    predictions = n_rows * n_cols * g.core * g.core * k * 4
    accumulator = extent * width * (k + 1) * 4
    kept = 4 * k if g.instances and g.boundary else 2 * k if g.save_probabilities else 0
    outputs = out_rows * width * (9 + kept)
    batch = g.batch_size * g.tile * g.tile * (2 * g.channels * g.itemsize + 3 * k * 4)
    return pixels + predictions + accumulator + outputs + batch


def strips_cost(height: int, width: int, g: Geometry, strips: list[tuple[int, int]]) -> int:
    """The largest per-strip cost of a plan."""
    starts, n_cols = row_starts(height, g), col_count(width, g)
    worst = 0
    for a, b in strips:
        rows = involved_rows(starts, g.core, a, b)
        extent = rows[-1] + g.core - rows[0]
        worst = max(worst, strip_cost(width, len(rows), extent, b - a, n_cols, g))
    return worst


def peak_bytes(height: int, width: int, file_bytes: int, g: Geometry, strips: list[tuple[int, int]]) -> int:
    """Estimated peak bytes of a plan: what is compared with the bound. With instances, the
    whole-image decoding at the end too: the image and (a single strip's image) the strip's
    arrays are still held while it runs."""
    image, held = image_bytes(height, width, g), strips_cost(height, width, g, strips)
    peak = max(decode_cost(height, width, file_bytes, g), image + held)
    if g.instances:
        peak = max(peak, image + height * width * instance_bytes(g) + (held if len(strips) == 1 else 0))
    return peak


def plan_strips(height: int, width: int, file_bytes: int, g: Geometry, limit_bytes: int,
                name: str = "image") -> list[tuple[int, int]]:
    """Strips [a, b) whose estimated peak stays within ``limit_bytes``, or RejectedInput."""
    if g.task != "segmentation":
        return [(0, height)]

    def fits(k: int) -> bool:
        return peak_bytes(height, width, file_bytes, g, strip_rows(height, g, k)) <= limit_bytes

    decoding = height * width * instance_bytes(g) + image_bytes(height, width, g) if g.instances else 0
    if decoding > limit_bytes:
        raise RejectedInput("too_large_for_memory", (
            f"{name}: {height}x{width} is decoded whole for its instances ({g.decoder_mode} decoder, about "
            f"{decoding / 2**20:.0f} MiB, --memory-limit-mb {limit_bytes / 2**20:.0f}); raise the limit, or save "
            "it as a tiled TIFF / OME-Zarr: large region-readable images are decoded block by block"))
    n = len(row_starts(height, g))
    if fits(n):
        return strip_rows(height, g, n)
    if not fits(1):
        need = peak_bytes(height, width, file_bytes, g, strip_rows(height, g, 1)) / 2**20
        raise RejectedInput("too_large_for_memory", (
            f"{name}: {height}x{width} needs about {need:.0f} MiB even in strips of one core row "
            f"(decoding alone {decode_cost(height, width, file_bytes, g) / 2**20:.0f} MiB); "
            f"--memory-limit-mb is {limit_bytes / 2**20:.0f}. Saved as a tiled (pyramidal) TIFF or OME-Zarr it is "
            f"read by region and predicted block by block, e.g. `vips tiffsave {name} out.tif --tile --pyramid` "
            f"or tifffile.imwrite(..., tile=(256, 256))"))
    lo, hi = 1, n  # the largest k that fits (the cost grows with k)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid - 1)
    return strip_rows(height, g, lo)


@dataclasses.dataclass(frozen=True, eq=False)
class StripTask:
    """The cores of one horizontal strip of one image, with the pixels to cut their tiles from.

    ``pixels`` holds image rows ``origin .. origin + len(pixels)`` (mirrored beyond the
    border) at full width, so every tile is cut lazily by :meth:`tile`. Classification
    tasks hold the fitted image itself as their one tile (``whole``).
    """

    image_id: str
    source: str
    height: int
    width: int
    strip: int
    strips: int
    rows: tuple[int, int]
    boxes: tuple[Box, ...]
    origin: int
    pixels: np.ndarray
    core: int
    margin: int
    whole: bool = False
    started: float = 0.0
    source_signature: str = ""    # the input's size and modification time when it was listed

    @property
    def num_tiles(self) -> int:
        return len(self.boxes)

    @property
    def nbytes(self) -> int:
        return self.pixels.nbytes

    def tile(self, i: int) -> np.ndarray:
        if self.whole:
            return self.pixels
        y, x, _, _ = self.boxes[i]
        return tiling.cut_tile(self.pixels, y - self.origin, x, self.core, self.margin)

    def image_rows(self) -> np.ndarray:
        """The source pixels of the output rows [a, b) (segmentation)."""
        a, b = self.rows
        return self.pixels[a - self.origin:b - self.origin]


def task_tiles(task: StripTask) -> int:
    """The weight of a task in an inference batch (BatchElements' element_size_fn)."""
    return task.num_tiles


def strip_tasks(image_id: str, source: str, image: np.ndarray, g: Geometry,
                strips: list[tuple[int, int]], started: float | None = None):
    """Yield one StripTask per strip; each holds only its own rows of ``image``."""
    height, width = image.shape[:2]
    grid = tiling.core_grid(height, width, g.core, g.stride)
    started = time.time() if started is None else started
    for index, (a, b) in enumerate(strips):
        boxes = tuple(box for box in grid if box[0] < b and box[0] + g.core > a)
        top = min(y for y, _, _, _ in boxes)
        bottom = max(y for y, _, _, _ in boxes) + g.core
        origin = top - g.margin
        rows = tiling.mirror_index(np.arange(origin, bottom + g.margin), height)
        yield StripTask(image_id, source, height, width, index, len(strips), (a, b), boxes, origin,
                        np.ascontiguousarray(image[rows]), g.core, g.margin, started=started)


def whole_image_task(image_id: str, source: str, fitted: np.ndarray, height: int, width: int,
                     started: float | None = None) -> StripTask:
    size = fitted.shape[0]
    return StripTask(image_id, source, height, width, 0, 1, (0, height), ((0, 0, size, size),), 0,
                     fitted, size, 0, whole=True, started=time.time() if started is None else started)
