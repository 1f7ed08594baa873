"""Images larger than memory: region-readable sources predicted block by block over many workers.

    large ImageInput --PlanBlocks--> BlockRefs (the blocks not done yet) --Reshuffle--
        --ReadBlocks--> BlockTasks (each with its source window, read in the inference stage)
        --RunInference--StitchBlock--> the block's chunk of masks/<id>.ome.zarr + a done marker
        --GroupByKey(image)--> FinishLargeImage: pyramid, thumbnail overlay, the row

A block writes whole chunks of the label array (chunk = block), so no two blocks write
one chunk; its marker (``_blocks/<settings>/<id>/<block>.npz``, written atomically after
the chunk) makes it done, so a rerun after a kill computes only the missing blocks. The
row is written last, after the pyramid and the NGFF metadata: an image without its row
is not done, and one with its row has its markers and block parts deleted. Peak memory
per worker: a few blocks (``blocks.block_side`` under ``--memory-limit-mb``) and the
model, whatever the image's size.

Markers hold only for the input they were made from (``block_state``): an input changed
under the same name starts over. Bad inputs become rejected records, never a failed job:
more pixels to predict than ``--max-large-image-pixels`` (refused before any block is
planned), a header or sample that cannot be read, or a block whose window cannot be read
(a damaged tile; read twice, then the image is rejected and its other blocks stop).
"""
from __future__ import annotations

import dataclasses
import io
import time
from typing import Any, Iterator

import apache_beam as beam
import numpy as np
import zarr
from apache_beam.metrics import Metrics
from apache_beam.ml.inference.base import RunInference

from pipelines.beam import files, region_files
from pipelines.beam.zarr_store import store_for
from pipelines.core import images, objects, pixels, regions, tiling
from pipelines.core.pixels import encode_png, overlay, to_rgb8
from pipelines.predict import block_decode, block_state, blocks, geojson_out, label_outputs, outputs
from pipelines.predict.decide import chosen
from pipelines.predict.stitch import preview_step, seam_columns, seam_heat
from schemas import layout as names
from schemas.crashpoints import crashpoint
from schemas.rejected import RejectedInput

NAMESPACE = "tessera.predict"
READY = "ready"   # PlanBlocks' tagged output: large images with every block done
MAX_LARGE_IMAGE_PIXELS = 20_000_000_000   # --max-large-image-pixels: a whole slide of 200k x 100k px
UNREADABLE = (OSError, ValueError, RuntimeError, KeyError, RejectedInput)   # codecs' errors are RuntimeErrors


@dataclasses.dataclass(frozen=True)
class BlockRef:
    image_id: str
    path: str
    level: int
    height: int
    width: int
    block: blocks.Block
    source_signature: str
    factor: float = 1.0                 # the level resampled by this factor (regions.LevelView)
    pixel_size_um: float | None = None  # of the predicted pixels, when known
    intensity_range: tuple[float, float] | None = None   # the image's, for the card's per-image intensity
    scale: float = 1.0                  # full-resolution px per predicted px (outlines are in full resolution)

    def view(self, source) -> regions.LevelView:
        return regions.LevelView(source, self.level, self.factor)

    def described(self) -> dict:
        """What the image's finishing step needs to know of its source."""
        return {"path": self.path, "signature": self.source_signature, "level": self.level,
                "factor": self.factor, "pixel_size_um": self.pixel_size_um, "height": self.height,
                "width": self.width, "scale": self.scale}


class BlockTask:
    """A block to predict. Its source window is read only when its first tile is cut, inside
    the inference stage: no pixels travel between stages (which a runner may buffer whole)."""

    def __init__(self, ref: BlockRef, geometry, policy):
        self.ref, self.geometry, self.policy = ref, geometry, policy
        self.boxes = tuple(blocks.block_boxes(ref.block, ref.height, ref.width, geometry))
        y0, y1, x0, x1 = tiling.source_window(list(self.boxes), geometry.core, geometry.margin, ref.height,
                                              ref.width)
        self.window = (y0, y1, x0, x1)
        self.origin = (y0, x0)
        self._pixels: np.ndarray | None = None
        self.read_seconds = 0.0

    @property
    def num_tiles(self) -> int:
        return len(self.boxes)

    @property
    def nbytes(self) -> int:
        (y0, y1, x0, x1), g = self.window, self.geometry
        return (y1 - y0) * (x1 - x0) * g.channels * g.itemsize

    @property
    def pixels(self) -> np.ndarray:
        if self._pixels is None:
            started = time.time()
            self._pixels = self.read(region_files.cached(self.ref.path))
            self.read_seconds = time.time() - started
        return self._pixels

    def read(self, source) -> np.ndarray:
        """The block's window of ``source``, normalised as the model takes it."""
        y0, y1, x0, x1 = self.window
        window = self.ref.view(source).read(y0, x0, y1 - y0, x1 - x0)
        return images.normalised(window, self.policy, self.ref.intensity_range, self.ref.path)

    def read_or_fail(self) -> tuple[str, str] | None:
        """Read the window now (from the open source, then once more from a fresh one);
        (reason, detail) when it cannot be read."""
        try:
            _ = self.pixels
            return None
        except UNREADABLE:
            pass
        started = time.time()
        try:
            with region_files.opened(self.ref.path) as source:
                self._pixels = self.read(source)
        except UNREADABLE as error:
            if isinstance(error, RejectedInput):
                return error.reason, error.detail
            (a, b), (c, d) = self.ref.block.rows, self.ref.block.cols
            return "unreadable_region", (f"{self.ref.path}: block {self.ref.block.index} (rows {a}-{b}, columns "
                                         f"{c}-{d} of level {self.ref.level}) cannot be read "
                                         f"({type(error).__name__}: {error})")
        self.read_seconds = time.time() - started
        return None

    def tile(self, i: int) -> np.ndarray:
        y, x, g = self.boxes[i][0], self.boxes[i][1], self.geometry
        return tiling.cut_from_window(self.pixels, self.origin, y, x, g.core, g.margin, self.ref.height,
                                      self.ref.width)

    def __reduce__(self):  # travels without its pixels
        return (BlockTask, (self.ref, self.geometry, self.policy))


def label_path(layout: outputs.OutputLayout, image_id: str) -> str:
    return layout.path(names.label_image_path(image_id))


def marker_path(layout: outputs.OutputLayout, image_id: str, index: int) -> str:
    return layout.path(names.block_marker_path(layout.settings.fingerprint(), image_id, index))


def probabilities_path(layout: outputs.OutputLayout, image_id: str) -> str:
    return layout.path(names.probability_image_path(image_id))


def _block_arrays(layout, ref: BlockRef, side: int, create: bool) -> tuple:
    """The label array and (with --save-probabilities) the (K, H, W) float16 probability array."""
    settings = layout.settings
    arrays = [label_outputs.block_array(label_path(layout, ref.image_id), (ref.height, ref.width), side, "uint8",
                                        settings.fingerprint(), create)]
    if settings.save_probabilities:
        channels = len(getattr(settings, "probability_classes", settings.class_names))
        arrays.append(label_outputs.block_array(probabilities_path(layout, ref.image_id),
                                                (channels, ref.height, ref.width), side, "float16",
                                                settings.fingerprint(), create))
    return tuple(arrays)


class PlanBlocks(beam.DoFn):
    """A large image -> BlockRefs of its blocks not done yet (for this input: markers of
    another are deleted first); ``ready``: image ids whose blocks are all done (an earlier run
    stopped before finishing them). ``refusal``: (reason, detail) that rejects every large
    image (no block fits --memory-limit-mb, a halo its decoder cannot use). An image with more
    than ``max_pixels`` to predict, or whose header or sample cannot be read, is rejected."""

    def __init__(self, spec, refusal: tuple[str, str] | None = None, max_pixels: int = MAX_LARGE_IMAGE_PIXELS):
        self.spec, self.refusal, self.max_pixels = spec, refusal, max_pixels

    def process(self, item) -> Iterator[Any]:
        refusal, ref = self.refusal, None
        if not refusal:
            try:
                ref = self.first_ref(item)
            except UNREADABLE as error:
                refusal = ((error.reason, error.detail) if isinstance(error, RejectedInput) else
                           ("unreadable", f"{item.path}: its header or overview cannot be read "
                                          f"({type(error).__name__}: {error})"))
        if refusal:
            block_state.reject(self.spec.layout, item.image_id, item.path, *refusal)
        else:
            yield from self.planned(item, ref)

    def first_ref(self, item) -> BlockRef:
        """The ref of the image's first block, from its header and a bounded sample
        (RejectedInput when it has too many pixels to predict)."""
        spec = self.spec
        with region_files.opened(item.path) as source:
            view = regions.level_view(source, spec.pixel_size_um)
            height, width = view.shape
            if height * width > self.max_pixels:
                raise RejectedInput("too_large", (
                    f"{item.path}: {width}x{height} = {height * width} pixels to predict (level {view.level}) "
                    f"exceeds --max-large-image-pixels {self.max_pixels}; raise it to predict this image"))
            size = view.pixel_size
            scale = source.downsample(view.level) * view.factor
            intensity = None if spec.policy.intensity == "fixed" else pixels.intensity_range(   # one range for
                regions.sample_values(source), spec.policy.intensity)                          # every block
        first = blocks.plan_blocks(height, width, spec.block_side)[0]
        return BlockRef(item.image_id, item.path, view.level, height, width, first, item.signature, view.factor,
                        size, intensity, scale)

    def planned(self, item, ref: BlockRef) -> Iterator[Any]:
        spec, layout = self.spec, self.spec.layout
        height, width = ref.height, ref.width
        made_from = block_state.identity(ref.described(), spec.block_side, ref.intensity_range)
        block_state.start_over_if_changed(layout, item.image_id, made_from)
        block_state.clear_failure(layout, item.image_id)          # blocks not done are tried again
        plan = blocks.plan_blocks(height, width, spec.block_side)
        _block_arrays(layout, ref, spec.block_side, create=True)
        if spec.decoder is not None:
            block_decode.prepare_arrays(spec, item.image_id, height, width)
        done = files.children(layout.path(names.block_markers_dir(layout.settings.fingerprint(), item.image_id)))
        pending = [b for b in plan if f"{b.index:06d}.npz" not in done]
        Metrics.counter(NAMESPACE, "blocks").inc(len(pending))
        if not pending:
            yield beam.pvalue.TaggedOutput(READY, (item.image_id, ref.described()))
        for block in pending:
            yield dataclasses.replace(ref, block=block)


class ReadBlocks(beam.DoFn):
    """A BlockRef -> its BlockTask with the window read, in the stage that predicts it; a
    window that cannot be read rejects the image (and the blocks of a rejected image are skipped)."""

    def __init__(self, spec):
        self.spec = spec

    def process(self, ref: BlockRef) -> Iterator[BlockTask]:
        layout = self.spec.layout
        task = failure = None
        if block_state.failed(layout, ref.image_id):
            Metrics.counter(NAMESPACE, "blocks_skipped_failed").inc()
        else:
            task = BlockTask(ref, self.spec.geometry, self.spec.policy)
            failure = task.read_or_fail()
        if failure:
            Metrics.counter(NAMESPACE, "blocks_unreadable").inc()
            (a, b), (c, d) = ref.block.rows, ref.block.cols
            block_state.fail(layout, ref.image_id, ref.path, *failure, region=[a, b, c, d], block=ref.block.index)
        elif task is not None:
            yield task


class StitchBlock(beam.DoFn):
    """A scored block -> its chunk of the label image, then its done marker (summary + preview)."""

    def __init__(self, spec):
        self.spec = spec

    def setup(self):
        self.stitch_ms = Metrics.distribution(NAMESPACE, "stitch_write_ms")
        self.read_ms = Metrics.distribution(NAMESPACE, "read_cut_ms")

    def process(self, result) -> Iterator[tuple[str, tuple[str, str]]]:
        started = time.time()
        task, scores, spec = result.example, result.inference, self.spec
        self.read_ms.update(int(task.read_seconds * 1000))  # the read happened inside inference
        ref, layout = task.ref, spec.layout
        seams = [0, 0.0, 0, None]
        stitched = blocks.stitch_block(ref.block, list(task.boxes), scores, layout.settings.blend, seams)
        mask = spec.decide(stitched).astype(np.uint8)
        (a, b), (c, d) = ref.block.rows, ref.block.cols
        arrays = _block_arrays(layout, ref, spec.block_side, create=False)
        confidence = chosen(stitched, mask)
        decoded = spec.decoder is not None       # masks and objects come from the decoder's pass
        if decoded:
            block_decode.write_inputs(spec, ref.image_id, ref.block.rows, ref.block.cols, stitched, mask, confidence)
        else:
            arrays[0][a:b, c:d] = mask
        if len(arrays) > 1:
            arrays[1][:, a:b, c:d] = np.moveaxis(stitched, -1, 0).astype(np.float16)
        step = preview_step(ref.height, ref.width)
        rows, cols = slice((-a) % step, b - a, step), slice((-c) % step, d - c, step)
        oy, ox = a - task.origin[0], c - task.origin[1]
        image = task.pixels[oy:oy + (b - a), ox:ox + (d - c)]
        classes = stitched.shape[-1]
        opened = {}
        if not decoded:
            complete, opened = objects.block_objects(mask, confidence, (a, c), spec.connectivity,
                                                     objects.faces_of(ref.block, ref.height, ref.width))
            complete["object_id"] = np.array([objects.object_id(ref.block.index, i) for i in complete["local_id"]],
                                             np.int64)
            folder = layout.path(names.block_markers_dir(layout.settings.fingerprint(), ref.image_id))
            files.write_atomically(f"{folder}/{ref.block.index:06d}.objects.parquet", label_outputs.parquet_bytes(
                label_outputs.objects_table(ref.image_id, complete, layout.settings.class_names,
                                            ref.pixel_size_um)))
        buffer = io.BytesIO()
        np.savez(buffer, counts=np.bincount(mask.ravel(), minlength=classes)[:classes],
                 confidence=np.float64(confidence.sum(dtype=np.float64)), tiles=len(task.boxes),
                 preview_image=to_rgb8(image[rows, cols]), preview_mask=mask[rows, cols], at=np.array([a, c]),
                 seams=np.array(seams[:3], np.float64),
                 **({} if seams[3] is None else {"preview_seams": seam_heat(seams[3], a, c, step)}),
                 **{f"open_{k}": v for k, v in opened.items()})
        files.write_atomically(marker_path(layout, ref.image_id, ref.block.index), buffer.getvalue())
        Metrics.counter(NAMESPACE, "blocks_done").inc()
        self.stitch_ms.update(int((time.time() - started) * 1000))
        crashpoint("predict:block-done")
        yield ref.image_id, ref.described()


class FinishLargeImage(beam.DoFn):
    """All blocks done -> the label pyramid with its NGFF metadata (and, with a decoder, the
    instance pyramid), a thumbnail overlay, the objects table streamed from the blocks' parts, the row."""

    def __init__(self, spec):
        self.spec = spec

    def process(self, keyed: tuple[str, Any]) -> Iterator[dict]:
        if not block_state.failed(self.spec.layout, keyed[0]):    # else rejected (a block unreadable): no row
            yield from self.finished(keyed)

    def finished(self, keyed: tuple[str, Any]) -> Iterator[dict]:
        image_id, described = keyed
        source = next(iter(described))
        path, signature, pixel_size = source["path"], source["signature"], source["pixel_size_um"]
        spec, layout, started = self.spec, self.spec.layout, time.time()
        decoded = spec.decoder is not None
        level0 = zarr.open_array(store_for(f"{label_path(layout, image_id)}/0"), mode="r")
        height, width = level0.shape
        folder = layout.path(names.block_markers_dir(layout.settings.fingerprint(), image_id))
        listed = files.children(folder)
        markers = sorted(n for n in listed if len(n) == 10 and n.endswith(".npz"))    # NNNNNN.npz
        count = len(blocks.plan_blocks(height, width, level0.chunks[0]))
        done = [n for n in listed if n.endswith(".decoded.npz")] if decoded else markers
        if len(markers) != count or len(done) != count:
            raise RuntimeError(f"{image_id}: {len(done)} of {count} blocks done")
        classes = len(layout.settings.class_names)
        counts, confidence, tiles, seams = np.zeros(classes, np.int64), 0.0, 0, np.zeros(3, np.float64)
        step = preview_step(height, width)
        thumb_h, thumb_w = -(-height // step), -(-width // step)
        thumb_image, thumb_mask = np.zeros((thumb_h, thumb_w, 3), np.uint8), np.zeros((thumb_h, thumb_w), np.uint8)
        parts, heats = {}, []
        for name in markers:
            with np.load(io.BytesIO(files.read_bytes(f"{folder}/{name}"))) as part:
                parts[int(name.split(".")[0])] = {k[len("open_"):]: part[k] for k in part.files
                                                  if k.startswith("open_")}
                tiles += int(part["tiles"])
                seams += part["seams"]
                a, c = (-(-int(v) // step) for v in part["at"])
                ph, pw = part["preview_mask"].shape
                thumb_image[a:a + ph, c:c + pw] = part["preview_image"]
                if "preview_seams" in part.files:
                    heats.append((int(part["at"][0]) // step, int(part["at"][1]) // step, part["preview_seams"]))
        for name in (sorted(done) if decoded else markers):     # the masks' counts and previews
            with np.load(io.BytesIO(files.read_bytes(f"{folder}/{name}"))) as part:
                counts += part["counts"]
                confidence += float(part["confidence"])
                a, c = (-(-int(v) // step) for v in part["at"])
                ph, pw = part["preview_mask"].shape
                thumb_mask[a:a + ph, c:c + pw] = part["preview_mask"]
        levels = label_outputs.finish_pyramid(label_path(layout, image_id), image_id, pixel_size, labels=True)
        instances = None
        if decoded:
            label_outputs.finish_pyramid(block_decode.instances_path(layout, image_id), image_id, pixel_size,
                                         labels=True, colors=False)
            instances = names.instance_image_path(image_id)
        probabilities = None
        if layout.settings.save_probabilities:
            label_outputs.finish_pyramid(probabilities_path(layout, image_id), image_id, pixel_size, labels=False)
            label_outputs.name_channels(probabilities_path(layout, image_id),
                                        getattr(layout.settings, "probability_classes", layout.settings.class_names))
            probabilities = names.probability_image_path(image_id)
        if layout.settings.mask_format == "ome-tiff":
            label_outputs.write_ome_tiff(levels, layout.path(names.label_tiff_path(image_id)), pixel_size)
        overlay_path = names.overlay_path(image_id)
        files.write_atomically(layout.path(overlay_path), encode_png(overlay(thumb_image, thumb_mask, 0.5)))
        seam_map = names.seam_map_path(image_id) if layout.settings.overlap > 0 else None
        if seam_map:
            outputs.write_seam_map(layout.path(seam_map), (thumb_h, thumb_w), heats)
        side = level0.chunks[0]
        merged = objects.merge_objects({} if decoded else parts, (-(-height // side), -(-width // side)),
                                       spec.connectivity)
        per_class = label_outputs.write_objects(layout, image_id, merged, [f"{folder}/{n}" for n in sorted(listed)
                                                              if n.endswith(".objects.parquet")], pixel_size)
        if decoded:      # the blocks' features, joined in block order; the decoder's inputs are no longer needed
            geojson_out.write_collection(layout.path(names.geojson_path(image_id)), [
                f"{folder}/{n}" for n in sorted(listed) if n.endswith(".features.json")])
            files.delete_if_present([block_decode.inputs_path(layout, image_id)])
        label_outputs.finish_container(layout.path(names.label_container_path(image_id)), image_id,
                                       layout.settings.class_names, decoded, label_outputs.instance_properties(
                                           layout.path(names.objects_path(image_id)), int(per_class[1:].sum()))
                                       if decoded else None)
        pixels = height * width
        row = {
            "image_id": image_id, "source": path, "task": layout.settings.task,
            "height": height, "width": width, "class_names": list(layout.settings.class_names),
            "class_fractions": [float(n) / pixels for n in counts],
            "class_components": [int(n) for n in per_class], "components": int(per_class[1:].sum()),
            "mean_confidence": confidence / pixels, "label": None, "probabilities": None,
            "mask_path": names.label_container_path(image_id), "overlay_path": overlay_path,
            "probabilities_path": probabilities, "tiles": tiles, "strips": count, **outputs.common_row(layout.settings),
            **seam_columns(int(seams[0]), float(seams[1]), int(seams[2])), "seam_map_path": seam_map,
            "instances_path": instances,
            "source_level": source["level"], "pixel_size_um": pixel_size,
            "resample_factor": None if source["factor"] == 1.0 else source["factor"],
        }
        finished = outputs.finish_row(layout, row, started, signature)
        # the row marks the image done; its blocks' markers and parts are no longer read
        files.delete_if_present([f"{folder}/{name}" for name in files.children(folder)] + [folder])
        yield finished


def is_large(item, spec) -> bool:
    """Whether ``item`` takes the block path: a region-readable source whose pixels to predict
    are more than ``spec.large_image_pixels``, or are not its level 0 as stored (another
    pyramid level, or resampled to the model's pixel size). Only the header is read."""
    if not spec.large_image_pixels or not regions.is_region_readable(item.path):
        return False
    with region_files.opened(item.path) as source:
        if source is None:
            return False
        view = regions.level_view(source, spec.pixel_size_um)
        height, width = view.shape
        return height * width > spec.large_image_pixels or (view.level, view.factor) != (0, 1.0)


class PredictLargeImages(beam.PTransform):
    """Large ImageInputs -> one row per image: blocks planned, spread over the workers,
    each read, predicted and written in one fused stage, then each image finished."""

    def __init__(self, spec, handler, halo: int = blocks.DEFAULT_HALO, max_pixels: int = MAX_LARGE_IMAGE_PIXELS):
        super().__init__()
        self.spec, self.handler, self.halo, self.max_pixels = spec, handler, halo, max_pixels
        if not spec.block_side:       # no block fits the memory bound: each large image is rejected
            self.refusal = ("too_large_for_memory", blocks.refusal(spec.geometry, spec.memory_limit_bytes, halo)
                            or "no block side was planned")
        else:
            self.refusal = block_decode.refusal(spec, halo) if spec.decoder is not None else None

    def expand(self, large):
        spec = self.spec
        planned = large | "PlanBlocks" >> beam.ParDo(PlanBlocks(spec, self.refusal, self.max_pixels)).with_outputs(
            READY, main="refs")
        done = (planned.refs
                | "SpreadBlocks" >> beam.Reshuffle()
                | "ReadBlocks" >> beam.ParDo(ReadBlocks(spec))
                | "PredictBlocks" >> RunInference(self.handler)
                | "StitchBlocks" >> beam.ParDo(StitchBlock(spec))
                | "BlocksByImage" >> beam.GroupByKey())
        ready = planned[READY] | "ReadyByImage" >> beam.Map(lambda kv: (kv[0], [kv[1]]))
        predicted = (done, ready) | "ImagesPredicted" >> beam.Flatten()
        if spec.decoder is not None:       # instances: the blocks decoded again, each with its halo
            predicted = predicted | "DecodeBlocks" >> block_decode.DecodeBlocks(spec, self.halo)
        return predicted | "FinishImages" >> beam.ParDo(FinishLargeImage(spec))
