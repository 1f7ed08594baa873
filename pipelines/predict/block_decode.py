"""Instances of large images (a decoder is set): blocks decoded with a context halo
(``pipelines.core.block_instances``), after every block of the image is predicted.

    predicted image --PlanOwned--> blocks --ListOwned--> <block>.owned.npz (its objects' anchors)
        --GroupByKey(image)--PlanDecoded--> blocks (+ the id offsets of the blocks in reach)
        --WriteDecoded--> its chunks of instances/<id>.ome.zarr (uint32) and masks/<id>.ome.zarr,
                          its owned objects' rows (with outlines) and GeoJSON features,
                          <block>.decoded.npz --GroupByKey(image)--> finish (joins the parts)

The first pass (``StitchBlock``) stores each block's decoder inputs in
``_blocks/<settings>/<id>.inputs.zarr`` (class ids and float16 confidence; a boundary model's
float32 probabilities, so decoding reads exactly what the whole-image path reads). Both
passes decode the block's window again rather than storing it. Every step writes its block's
files and then its marker, so a rerun after a kill redoes only the blocks without one. An
object larger than the halo rejects its image (reason ``halo_too_small``, with the remedy).
Only small records cross the shuffles; no step holds more than one window and the anchors
of the blocks within its reach.
"""
from __future__ import annotations

import dataclasses
import io
from typing import Any, Iterator

import apache_beam as beam
import numpy as np
import zarr
from apache_beam.metrics import Metrics

from pipelines.beam import files
from pipelines.beam.zarr_store import store_for
from pipelines.core import block_instances as bi
from pipelines.core.outlines import polygons
from pipelines.predict import block_state, blocks, geojson_out, label_outputs, plan
from pipelines.core.objects import label_table
from pipelines.predict.stitch import preview_step
from schemas import decoder as dec
from schemas import layout as names
from schemas.crashpoints import crashpoint

NAMESPACE = "tessera.predict"
READY = "ready"
def refusal(spec, halo: int) -> tuple[str, str] | None:
    """Why no large image can be decoded with this halo, as a rejection (reason, detail), or None:
    the halo must exceed the decoder's reach, and a block's window (block + 2 halo per side)
    decoded must fit --memory-limit-mb."""
    try:
        bi.check_halo(spec.decoder, halo)
    except ValueError as e:
        return "halo_too_small", str(e)
    window = spec.block_side + 2 * halo
    need = window * window * plan.instance_bytes(spec.geometry)
    if need > spec.memory_limit_bytes:
        return "too_large_for_memory", (
            f"decoding a block of {spec.block_side} px with its halo of {halo} px needs about {need / 2**20:.0f} MiB: "
            f"raise --memory-limit-mb above {spec.memory_limit_bytes / 2**20:.0f} or lower --halo")
    return None


def inputs_path(layout, image_id: str) -> str:
    return layout.path(names.block_inputs_path(layout.settings.fingerprint(), image_id))


def instances_path(layout, image_id: str) -> str:
    return layout.path(names.instance_image_path(image_id))


def marker(layout, image_id: str, index: int, stage: str) -> str:
    return layout.path(names.block_marker_path(layout.settings.fingerprint(), image_id, index, stage))


def prepare_arrays(spec, image_id: str, height: int, width: int) -> None:
    """The decoder inputs' arrays and the instance label array (kept when a resumed run's match)."""
    layout, side, fingerprint = spec.layout, spec.block_side, spec.layout.settings.fingerprint()
    path = inputs_path(layout, image_id)
    if spec.boundary:
        label_outputs.block_array(path, (3, height, width), side, "float32", fingerprint, True)
    else:
        label_outputs.block_array(path, (height, width), side, "uint8", fingerprint, True)
        group = zarr.open_group(store_for(path), mode="a", zarr_format=label_outputs.ZARR_FORMAT)
        if "confidence" not in group:
            group.create_array("confidence", shape=(height, width), chunks=(side, side), dtype="float16",
                               fill_value=0)
    label_outputs.block_array(instances_path(layout, image_id), (height, width), side, "uint32", fingerprint, True)


def write_inputs(spec, image_id: str, rows, cols, stitched: np.ndarray, mask: np.ndarray,
                 confidence: np.ndarray) -> None:
    """A predicted block's decoder inputs: its chunk of the inputs array(s)."""
    (a, b), (c, d) = rows, cols
    group = zarr.open_group(store_for(inputs_path(spec.layout, image_id)), mode="r+",
                            zarr_format=label_outputs.ZARR_FORMAT)
    if spec.boundary:
        group["0"][:, a:b, c:d] = np.moveaxis(stitched, -1, 0).astype(np.float32)
    else:
        group["0"][a:b, c:d] = mask
        group["confidence"][a:b, c:d] = confidence.astype(np.float16)


class WindowReader:
    """Reads a window of an image's stored decoder inputs as ``decode`` takes them; keeps the
    last window's mask-making parts (P(background), or classes and confidence)."""

    def __init__(self, spec, image_id: str):
        self.params, self.boundary = spec.decoder, spec.boundary
        self.group = zarr.open_group(store_for(inputs_path(spec.layout, image_id)), mode="r",
                                     zarr_format=label_outputs.ZARR_FORMAT)
        self.last: dict[str, np.ndarray] = {}

    def __call__(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        if self.boundary:
            probabilities = np.moveaxis(np.asarray(self.group["0"][:, y0:y1, x0:x1]), 0, -1)
            self.last = {"probabilities": probabilities}
            if self.params.needs_boundary_model:
                return probabilities
            return dec.boundary_foreground(probabilities, self.params.foreground)
        classes = np.asarray(self.group["0"][y0:y1, x0:x1])
        self.last = {"classes": classes, "confidence": np.asarray(self.group["confidence"][y0:y1, x0:x1])}
        return classes

    def object_classes_and_confidence(self, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """What the objects' table is computed from (``DecodedImage.for_table``), last window."""
        if self.boundary:
            return dec.foreground_classes(labels), (1.0 - self.last["probabilities"][..., 0]).astype(np.float16)
        return self.mask_and_confidence(labels)

    def mask_and_confidence(self, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """As ``predict.instances.decode_image`` makes them, for the last window."""
        if self.boundary:
            probabilities = self.last["probabilities"]
            mask = dec.foreground_classes(labels, probabilities, self.params.foreground)
            background = probabilities[..., 0]
            return mask, np.where(mask > 0, 1.0 - background, background).astype(np.float16)
        classes = self.last["classes"]
        if self.params.min_size > 1:
            classes = np.where(labels > 0, classes, 0).astype(np.uint8)
        return classes, self.last["confidence"]


@dataclasses.dataclass(frozen=True)
class DecodeTask:
    image_id: str
    described: dict
    index: int
    offsets: tuple[tuple[int, int], ...] = ()    # (block, offset) of the blocks within the window

    def block(self, side: int) -> blocks.Block:
        return blocks.plan_blocks(self.described["height"], self.described["width"], side)[self.index]


def _decode(spec, halo: int, task: DecodeTask) -> tuple[bi.BlockDecoding, WindowReader]:
    side, h, w = spec.block_side, task.described["height"], task.described["width"]
    block = task.block(side)
    reader = WindowReader(spec, task.image_id)
    found = bi.decode_block(spec.decoder, reader, block.rows, block.cols, halo, h, w,
                            f"{task.image_id}: block {task.index}")
    return found, reader


def _listed(spec, image_id: str) -> dict[str, float]:
    layout = spec.layout
    return files.children(layout.path(names.block_markers_dir(layout.settings.fingerprint(), image_id)))


class PlanOwned(beam.DoFn):
    """A predicted image -> DecodeTasks of its blocks whose objects are not listed yet (none
    for an image rejected because a block could not be read)."""

    def __init__(self, spec):
        self.spec = spec

    def process(self, keyed: tuple[str, Any]) -> Iterator[Any]:
        image_id, described = keyed
        source = next(iter(described))
        failed = block_state.failed(self.spec.layout, image_id)     # rejected: a block could not be read
        side, listed = self.spec.block_side, {} if failed else _listed(self.spec, image_id)
        pending = [] if failed else [b.index for b in blocks.plan_blocks(source["height"], source["width"], side)
                                     if f"{b.index:06d}.owned.npz" not in listed]
        if not pending and not failed:
            yield beam.pvalue.TaggedOutput(READY, (image_id, [source]))
        for index in pending:
            yield DecodeTask(image_id, source, index)


class ListOwned(beam.DoFn):
    """A block -> its owned objects' anchor keys (``<block>.owned.npz``); a halo too small
    rejects the image."""

    def __init__(self, spec, halo: int):
        self.spec, self.halo = spec, halo

    def process(self, task: DecodeTask) -> Iterator[tuple[str, dict]]:
        spec = self.spec
        try:
            found, _ = _decode(spec, self.halo, task)
        except bi.HaloTooSmall as e:
            block_state.reject(spec.layout, task.image_id, task.described["path"], "halo_too_small", str(e))
            found = None
        if found is not None:
            keys = bi.anchor_keys(found.anchors[found.owned() - 1], task.described["width"])
            buffer = io.BytesIO()
            np.savez(buffer, count=np.int64(len(keys)), keys=keys)
            files.write_atomically(marker(spec.layout, task.image_id, task.index, "owned"), buffer.getvalue())
            crashpoint("predict:block-owned")
            yield task.image_id, task.described


class PlanDecoded(beam.DoFn):
    """An image whose blocks are all listed -> DecodeTasks (with the id offsets of the blocks
    within each window) of the blocks not written yet; none while a block is missing (rejected)."""

    def __init__(self, spec, halo: int):
        self.spec, self.halo = spec, halo

    def process(self, keyed: tuple[str, Any]) -> Iterator[Any]:
        image_id, described = keyed
        source = next(iter(described))
        plan_ = blocks.plan_blocks(source["height"], source["width"], self.spec.block_side)
        listed = _listed(self.spec, image_id)
        pending = []                      # none while a block was refused: the image is rejected
        if all(f"{b.index:06d}.owned.npz" in listed for b in plan_):
            pending = [b for b in plan_ if f"{b.index:06d}.decoded.npz" not in listed]
            if not pending:
                yield beam.pvalue.TaggedOutput(READY, (image_id, [source]))
        if pending:
            yield from self.tasks(image_id, source, plan_, pending)

    def tasks(self, image_id: str, source: dict, plan_: list, pending: list) -> Iterator[DecodeTask]:
        spec, counts = self.spec, []
        for b in plan_:               # counts only: np.load reads the one member
            with np.load(io.BytesIO(files.read_bytes(marker(spec.layout, image_id, b.index, "owned")))) as part:
                counts.append(int(part["count"]))
        offsets = bi.offsets_of(counts)
        for b in pending:
            near = _blocks_in_window(b, self.halo, source["height"], source["width"], spec.block_side)
            yield DecodeTask(image_id, source, b.index, tuple((i, int(offsets[i])) for i in near))


def _blocks_in_window(block: blocks.Block, halo: int, height: int, width: int, side: int) -> list[int]:
    y0, y1, x0, x1 = bi.window(block.rows, block.cols, halo, height, width)
    columns = -(-width // side)
    return [r * columns + c for r in range(y0 // side, (y1 - 1) // side + 1)
            for c in range(x0 // side, (x1 - 1) // side + 1)]


class WriteDecoded(beam.DoFn):
    """A block -> its chunks of the instance and mask pyramids, its owned objects' rows, then
    ``<block>.decoded.npz`` (class counts, confidence, preview)."""

    def __init__(self, spec, halo: int):
        self.spec, self.halo = spec, halo

    def process(self, task: DecodeTask) -> Iterator[tuple[str, dict]]:
        spec, layout = self.spec, self.spec.layout
        side, width = spec.block_side, task.described["width"]
        found, reader = _decode(spec, self.halo, task)
        offsets = dict(task.offsets)
        keys = {}
        for owner in offsets:
            with np.load(io.BytesIO(files.read_bytes(marker(layout, task.image_id, owner, "owned")))) as part:
                keys[owner] = part["keys"]
        lookup = bi.final_ids(found, side, width, offsets, keys)
        mask, confidence = reader.mask_and_confidence(found.labels)
        block = task.block(side)
        (a, b), (c, d) = block.rows, block.cols
        inner = found.inner
        zarr.open_array(store_for(f"{instances_path(layout, task.image_id)}/0"), mode="r+",
                        zarr_format=label_outputs.ZARR_FORMAT)[a:b, c:d] = bi.block_labels(found, lookup)
        zarr.open_array(store_for(f"{layout.path(names.label_image_path(task.image_id))}/0"), mode="r+",
                        zarr_format=label_outputs.ZARR_FORMAT)[a:b, c:d] = mask[inner]
        owned = found.owned()
        table = label_table(found.labels, len(found.anchors), *reader.object_classes_and_confidence(found.labels),
                            found.origin)
        table = {k: v[owned - 1] for k, v in table.items()}
        table["object_id"] = lookup[owned].astype(np.int64)
        outlines = polygons(found.labels, ids=owned, origin=found.origin, scale=task.described.get("scale", 1.0))
        rows = label_outputs.objects_table(task.image_id, table, layout.settings.class_names,
                                           task.described["pixel_size_um"], outlines)
        fingerprint = layout.settings.fingerprint()
        folder = layout.path(names.block_markers_dir(fingerprint, task.image_id))
        files.write_atomically(f"{folder}/{task.index:06d}.objects.parquet", label_outputs.parquet_bytes(rows))
        geojson_out.write_part(layout.path(names.block_features_path(fingerprint, task.image_id, task.index)),
                               geojson_out.table_features(rows, layout.settings.class_names))
        classes = len(layout.settings.class_names)
        step = preview_step(task.described["height"], width)
        block_mask = mask[inner]
        buffer = io.BytesIO()
        np.savez(buffer, counts=np.bincount(block_mask.ravel(), minlength=classes)[:classes],
                 confidence=np.float64(confidence[inner].sum(dtype=np.float64)), objects=np.int64(len(owned)),
                 preview_mask=block_mask[(-a) % step::step, (-c) % step::step], at=np.array([a, c]))
        files.write_atomically(marker(layout, task.image_id, task.index, "decoded"), buffer.getvalue())
        Metrics.counter(NAMESPACE, "blocks_decoded").inc()
        crashpoint("predict:block-decoded")
        yield task.image_id, task.described


class DecodeBlocks(beam.PTransform):
    """(image id, [source]) of images whose blocks are predicted -> the same, once every block's
    instances are written (two passes over the blocks, each spread over the workers)."""

    def __init__(self, spec, halo: int):
        super().__init__()
        self.spec, self.halo = spec, halo

    def expand(self, predicted):
        spec, halo = self.spec, self.halo
        first = predicted | "PlanOwned" >> beam.ParDo(PlanOwned(spec)).with_outputs(READY, main="tasks")
        listed = (first.tasks | "SpreadOwned" >> beam.Reshuffle() | "ListOwned" >> beam.ParDo(ListOwned(spec, halo))
                  | "OwnedByImage" >> beam.GroupByKey())
        second = ((listed, first[READY]) | "ListedImages" >> beam.Flatten()
                  | "PlanDecoded" >> beam.ParDo(PlanDecoded(spec, halo)).with_outputs(READY, main="tasks"))
        written = (second.tasks | "SpreadDecoded" >> beam.Reshuffle()
                   | "WriteDecoded" >> beam.ParDo(WriteDecoded(spec, halo)) | "DecodedByImage" >> beam.GroupByKey())
        return (written, second[READY]) | "DecodedImages" >> beam.Flatten()
