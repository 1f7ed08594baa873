"""Beam transforms of the prediction job: read and cut strips, predict tiles, stitch and write images.

    inputs --CutStrips--> StripTasks --PredictTiles (RunInference)--> scored strips
           \\-> rejected --WriteRejected                               --StitchImages--> rows

Single-strip images are stitched and written right after inference, in the same fused
stage; images cut into several strips (memory bound) write one part file per strip and
meet again after a GroupByKey on the image id that carries only the parts' summaries.
"""
from __future__ import annotations

import dataclasses
import time
from typing import Any, Iterator

import apache_beam as beam
import numpy as np
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics
from apache_beam.ml.inference.base import PredictionResult, RunInference

from pipelines.beam import files
from pipelines.beam.files import read_bytes
from pipelines.core import images, pixels
from pipelines.predict import large, models, outputs, plan
from pipelines.predict.stitch import StripResult, strip_result
from schemas.decoder import DecoderParams
from schemas.rejected import RejectedInput, rejected_record

REJECTED = "rejected"
LARGE = "large"          # region-readable inputs predicted block by block (pipelines.predict.large)
STRIP_PARTS = "strip_parts"   # tagged output: parts of images predicted in several strips
NAMESPACE = "tessera.predict"


@dataclasses.dataclass(frozen=True)
class ImageInput:
    image_id: str
    path: str
    size_bytes: int = 0
    modified: float = 0.0         # seconds since the epoch, as the file system lists it (0: unknown)

    @property
    def signature(self) -> str:
        """What a row records of its input: a rerun predicts again when it changed."""
        return f"{self.size_bytes}:{self.modified:.3f}"


@dataclasses.dataclass(frozen=True)
class JobSpec:
    """What the workers need besides the model itself."""

    geometry: plan.Geometry
    policy: images.ImagePolicy
    layout: outputs.OutputLayout
    memory_limit_bytes: int
    threshold: float | None = None   # applied to combined scores (see models.ensemble_threshold)
    fit: str = "resize"              # whole-image classification: how a photo becomes input_size x input_size
    input_size: int = 0
    whole_image: bool = False        # classification of the fitted image; else of its tiles, averaged
    input_root: str = ""             # symlinks are followed only to files below it...
    follow_symlinks: bool = False    # ...unless this is set
    large_image_pixels: int = 0      # region-readable inputs above this go block by block (0: never)
    block_side: int = 0              # output pixels per side of a block (pipelines.predict.blocks)
    pixel_size_um: float | None = None  # the pyramid level to predict is the one of this pixel size
    connectivity: int = 4            # large images' objects: 4- or 8-connected components
    decoder: DecoderParams | None = None   # instances: the decoder (None: no instances)
    boundary: bool = False           # a boundary model: decoded from its background/boundary/interior probabilities

    def decide(self, scores: np.ndarray) -> np.ndarray:
        return models.decide(scores, self.threshold)


def reject(image_id: str, source: str, reason: str, detail: str) -> beam.pvalue.TaggedOutput:
    Metrics.counter(NAMESPACE, "rejected").inc()
    Metrics.counter(NAMESPACE, f"rejected_{reason}").inc()
    return beam.pvalue.TaggedOutput(REJECTED, {**rejected_record(source, reason, detail), "image_id": image_id})


class _ReadAndCut(beam.DoFn):
    """ImageInput -> StripTasks (validated, planned under the memory bound), or a rejected record."""

    def __init__(self, spec: JobSpec):
        self.spec = spec
        self.read_ms = Metrics.distribution(NAMESPACE, "read_cut_ms")

    def process(self, item: ImageInput) -> Iterator[Any]:
        started, spec, g = time.time(), self.spec, self.spec.geometry
        try:
            if not item.size_bytes:  # list-file inputs are not listed by the launcher
                item = listed_input(item)
            if large.is_large(item, spec):     # read by region, block by block, elsewhere
                yield beam.pvalue.TaggedOutput(LARGE, item)
                return
            data = files.read_input(item.path, files.file_bytes_limit(spec.policy.max_pixels),
                                    spec.input_root, spec.follow_symlinks, images.looks_like_image, images.HEADER_BYTES)
            height, width = images.image_size(data, item.path, spec.policy)
            if height * width > spec.policy.max_pixels:
                raise RejectedInput("too_large", (
                    f"{item.path}: {width}x{height} = {height * width} pixels exceeds "
                    f"--max-image-pixels {spec.policy.max_pixels}"))
            strips = plan.plan_strips(height, width, len(data), g, spec.memory_limit_bytes, item.path)
            image = images.read_image(data, item.path, spec.policy)
        except RejectedInput as e:
            yield reject(item.image_id, item.path, e.reason, e.detail)
            return
        except OSError as e:  # a directory, no permission, deleted since listed (Beam's BeamIOError too)
            yield reject(item.image_id, item.path, "unreadable", f"{item.path}: {e}")
            return
        del data
        if spec.whole_image:
            fitted = pixels.fit_to_size(image, spec.input_size, spec.fit)
            self.read_ms.update(int((time.time() - started) * 1000))
            task = plan.whole_image_task(item.image_id, item.path, fitted, height, width, started)
            yield dataclasses.replace(task, source_signature=item.signature)
            return
        Metrics.counter(NAMESPACE, "strips").inc(len(strips))
        for task in plan.strip_tasks(item.image_id, item.path, image, g, strips, started):
            self.read_ms.update(int((time.time() - started) * 1000))
            yield dataclasses.replace(task, source_signature=item.signature)  # downstream (inference, stitching) runs inside this yield when fused
            started = time.time()


class CutStrips(beam.PTransform):
    """ImageInputs -> (StripTasks, rejected records)."""

    def __init__(self, spec: JobSpec):
        super().__init__()
        self.spec = spec

    def expand(self, inputs):
        return inputs | "ReadAndCut" >> beam.ParDo(_ReadAndCut(self.spec)).with_outputs(REJECTED, LARGE, main="tasks")


class PredictTiles(beam.PTransform):
    """StripTasks -> PredictionResult(task, scores of its tiles), batched across tasks by tile count."""

    def __init__(self, handler: models.TileModelHandler):
        super().__init__()
        self.handler = handler

    def expand(self, tasks):
        return tasks | "RunInference" >> RunInference(self.handler)


def listed_input(item: ImageInput) -> ImageInput:
    """``item`` with the size and modification time its file system lists for it."""
    found = FileSystems.match([item.path])[0].metadata_list
    if not found:
        raise RejectedInput("missing_file", f"{item.path}: no such file")
    return dataclasses.replace(item, size_bytes=found[0].size_in_bytes,
                               modified=found[0].last_updated_in_seconds or 0.0)


class _StitchStrip(beam.DoFn):
    """A scored strip -> the image's row (single strip / classification) or a part for later.

    Classification images are always one task (never split into strips), so a tile
    classifier's row averages the probabilities of all the image's tiles.
    """

    def __init__(self, spec: JobSpec):
        self.spec = spec
        self.stitch_ms = Metrics.distribution(NAMESPACE, "stitch_write_ms")

    def process(self, result: PredictionResult) -> Iterator[Any]:
        started = time.time()
        out = list(self._stitch(result))
        self.stitch_ms.update(int((time.time() - started) * 1000))
        yield from out

    def _stitch(self, result: PredictionResult) -> Iterator[Any]:
        task, scores, layout = result.example, result.inference, self.spec.layout
        if self.spec.geometry.task != "segmentation":
            image_scores = scores.mean(axis=0)  # the whole image's one score, or the mean over its tiles
            decision = int(self.spec.decide(image_scores))
            row = outputs.classification_row(layout.settings, task.image_id, task.source, task.height,
                                             task.width, image_scores, decision, task.num_tiles)
            yield outputs.finish_row(layout, row, task.started, task.source_signature)
            return
        s = layout.settings
        strip = strip_result(task, scores, self.spec.decide, s.blend, s.save_probabilities,
                             s.instances != "none" and not s.decodes_boundary, s.decodes_boundary)
        if task.strips == 1:
            yield outputs.finish_row(layout, outputs.write_image_outputs(layout, lambda: iter([strip])), task.started,
                             task.source_signature)
            return
        path = layout.path(layout.part(task.image_id, task.strip, task.strips))
        files.write_atomically(path, strip.to_bytes())
        yield beam.pvalue.TaggedOutput(STRIP_PARTS, (task.image_id, {**strip.summary(), "part": path,
                                                                     "source_signature": task.source_signature}))


class _FinishParts(beam.DoFn):
    """(image id, part summaries) -> the image's outputs and row; the parts are then deleted."""

    def __init__(self, spec: JobSpec):
        self.spec = spec
        self.stitch_ms = Metrics.distribution(NAMESPACE, "stitch_write_ms")

    def process(self, keyed: tuple[str, list[dict]]) -> Iterator[dict]:
        started = time.time()
        image_id, parts = keyed
        parts = sorted(parts, key=lambda p: p["strip"])
        if [p["strip"] for p in parts] != list(range(parts[0]["strips"])):
            raise RuntimeError(f"{image_id}: expected strips 0..{parts[0]['strips'] - 1}, "
                               f"got {[p['strip'] for p in parts]}")

        def strips() -> Iterator[StripResult]:
            for part in parts:
                summary = {k: v for k, v in part.items() if k not in ("part", "source_signature")}
                yield StripResult.from_parts(summary, read_bytes(part["part"]))

        layout = self.spec.layout
        row = outputs.finish_row(layout, outputs.write_image_outputs(layout, strips), min(p["started"] for p in parts),
                         parts[0]["source_signature"])
        FileSystems.delete([p["part"] for p in parts])
        self.stitch_ms.update(int((time.time() - started) * 1000))
        yield row


class StitchImages(beam.PTransform):
    """Scored strips -> one row per image, after writing its mask, overlay and probabilities."""

    def __init__(self, spec: JobSpec):
        super().__init__()
        self.spec = spec

    def expand(self, scored):
        stitched = scored | "Stitch" >> beam.ParDo(_StitchStrip(self.spec)).with_outputs(STRIP_PARTS, main="rows")
        finished = (stitched[STRIP_PARTS]
                    | "GroupStrips" >> beam.GroupByKey()
                    | "FinishStrips" >> beam.ParDo(_FinishParts(self.spec)))
        return (stitched.rows, finished) | "Rows" >> beam.Flatten()


class _WriteRejectedRecord(beam.DoFn):
    def __init__(self, layout: outputs.OutputLayout):
        self.layout = layout

    def process(self, record: dict) -> Iterator[dict]:
        outputs.write_json(self.layout.path(self.layout.rejected(record["source"])), record)
        yield record


class WriteRejected(beam.PTransform):
    """Rejected records -> one JSON file each under rejected/ (collected into rejected.jsonl at the end)."""

    def __init__(self, layout: outputs.OutputLayout):
        super().__init__()
        self.layout = layout

    def expand(self, records):
        return records | "WriteRecord" >> beam.ParDo(_WriteRejectedRecord(self.layout))
