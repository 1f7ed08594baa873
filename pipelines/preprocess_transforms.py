"""Beam transforms of the preprocessing job: list and pair sources, decode, cut tiles.

Each composite only wires DoFns around the pure code in ``sources``, ``images``,
``tiling`` and ``augment``. Bad inputs leave through the ``rejected`` tagged output
with a reason, and are counted.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import time
from typing import Any, Iterator

import apache_beam as beam
import numpy as np
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics

from pipelines import augment, images, sources, tiling
from schemas.example import CLASSIFICATION, IGNORE_LABEL, DatasetSpec, example_id

REJECTED = "rejected"
NAMESPACE = "tessera.preprocess"


def _reject(record: dict) -> beam.pvalue.TaggedOutput:
    Metrics.counter(NAMESPACE, "rejected").inc()
    Metrics.counter(NAMESPACE, f"rejected_{record['reason']}").inc()
    return beam.pvalue.TaggedOutput(REJECTED, record)


def _match_files(pattern: str) -> list[str]:
    return sorted(m.path for m in FileSystems.match([pattern])[0].metadata_list)


class _PairFiles(beam.DoFn):
    """(key, {'images': [...], 'masks': [...]}) -> Source, or rejected records."""

    def process(self, keyed: tuple[str, dict]) -> Iterator[Any]:
        key, files = keyed
        source, bad = sources.pair(key, list(files["images"]), list(files["masks"]))
        for record in bad:
            yield _reject(record)
        if source is not None:
            yield source


class ReadImagePairs(beam.PTransform):
    """Segmentation sources: ``root/images/**`` paired with ``root/masks/**`` by relative stem."""

    def __init__(self, root: str):
        super().__init__()
        self.root = root.rstrip("/")

    def expand(self, pbegin):
        def keyed_files(kind: str):
            return (pbegin
                    | f"Match{kind}" >> beam.Create([f"{self.root}/{kind}/**"])
                    | f"List{kind}" >> beam.FlatMap(_match_files)
                    | f"Key{kind}" >> beam.Map(lambda p: sources.segmentation_key(p, self.root)[0:1] + (p,)))

        return ({"images": keyed_files("images"), "masks": keyed_files("masks")}
                | "GroupById" >> beam.CoGroupByKey()
                | "Pair" >> beam.ParDo(_PairFiles()).with_outputs(REJECTED, main="sources"))


class ReadClassFolders(beam.PTransform):
    """Classification sources: ``root/<class>/**`` with the class from the folder name."""

    def __init__(self, root: str, class_names: tuple[str, ...]):
        super().__init__()
        self.root = root.rstrip("/")
        self.class_names = class_names

    def expand(self, pbegin):
        return (pbegin
                | "Match" >> beam.Create([f"{self.root}/**"])
                | "List" >> beam.FlatMap(_match_files)
                | "ToSource" >> beam.ParDo(_ClassSource(self.root, self.class_names)).with_outputs(
                    REJECTED, main="sources"))


class _ClassSource(beam.DoFn):
    def __init__(self, root: str, class_names: tuple[str, ...]):
        self.root, self.class_names = root, class_names

    def process(self, path: str) -> Iterator[Any]:
        if not sources.has_image_extension(path):
            yield _reject(sources.rejected(path, "not_an_image", "not an image file extension"))
            return
        try:
            source = sources.classification_source(path, self.root)
        except ValueError as error:
            yield _reject(sources.rejected(path, "no_class_folder", str(error)))
            return
        if source.label not in self.class_names:
            yield _reject(sources.rejected(path, "unknown_class", f"class {source.label!r} is not in {self.class_names}"))
        else:
            yield source


class AssignSplits(beam.PTransform):
    """Sets ``Source.split``: explicit split folders win; else a stable hash of the id.

    ``stratify`` (classification): per class, so every class reaches every split it can.
    """

    def __init__(self, fractions: tuple[float, ...], stratify: bool, salt: str = ""):
        super().__init__()
        self.fractions, self.stratify, self.salt = fractions, stratify, salt

    def expand(self, pcoll):
        fractions, salt = self.fractions, self.salt
        if not self.stratify:
            return pcoll | "HashSplit" >> beam.Map(
                lambda s: s if s.split else dataclasses.replace(s, split=sources.assign_split(s.id, fractions, salt)))

        def stratified(keyed):
            _, group = keyed
            group = list(group)
            fixed = [s for s in group if s.split]
            splits = sources.stratified_splits([s.id for s in group if not s.split], fractions, salt)
            return fixed + [dataclasses.replace(s, split=splits[s.id]) for s in group if not s.split]

        return (pcoll
                | "ByClass" >> beam.Map(lambda s: (s.label, s))
                | "GroupByClass" >> beam.GroupByKey()
                | "Stratify" >> beam.FlatMap(stratified))


class _Decode(beam.DoFn):
    def __init__(self, image_policy: images.ImagePolicy, mask_policy: images.MaskPolicy | None):
        self.image_policy, self.mask_policy = image_policy, mask_policy

    @staticmethod
    def _read(path: str) -> bytes:
        with FileSystems.open(path) as handle:
            return handle.read()

    def process(self, source: sources.Source) -> Iterator[Any]:
        files = [source.image_path] + ([source.mask_path] if source.mask_path else [])
        try:
            image = images.read_image(self._read(source.image_path), source.image_path, self.image_policy)
            mask = None
            if source.mask_path:
                mask = images.read_mask(self._read(source.mask_path), source.mask_path, self.mask_policy)
                images.check_pair(image, mask, source.id)
        except images.RejectedInput as error:
            yield _reject(sources.rejected(" + ".join(files), error.reason, error.detail, files))
            return
        except OSError as error:  # includes Beam's BeamIOError: the file could not be read at all
            yield _reject(sources.rejected(" + ".join(files), "unreadable", str(error), files))
            return
        Metrics.counter(NAMESPACE, "sources_decoded").inc()
        Metrics.distribution(NAMESPACE, "source_megapixels_x1000").update(int(image.shape[0] * image.shape[1] / 1000))
        yield source, image, mask


class DecodeSources(beam.PTransform):
    """Source -> (source, image (H,W,C), mask (H,W) or None); unreadable inputs -> rejected."""

    def __init__(self, image_policy: images.ImagePolicy, mask_policy: images.MaskPolicy | None):
        super().__init__()
        self.image_policy, self.mask_policy = image_policy, mask_policy

    def expand(self, pcoll):
        return pcoll | "Decode" >> beam.ParDo(_Decode(self.image_policy, self.mask_policy)).with_outputs(
            REJECTED, main="decoded")


@dataclasses.dataclass(frozen=True)
class TileSettings:
    spec: DatasetSpec
    augment_copies: int = 0
    augment_config: augment.AugmentConfig = augment.AugmentConfig()
    fit: str = "resize"           # whole-image classification: resize | pad | crop


def tile_examples(source: sources.Source, image: np.ndarray, mask: np.ndarray | None,
                  settings: TileSettings) -> Iterator[dict]:
    """Every example of one decoded source: copy 0 of each tile, plus augmented copies in train."""
    spec = settings.spec
    height, width = image.shape[:2]
    if spec.whole_image:
        boxes = [(0, 0, height, width)]
        cut = lambda box: (images.fit_to_size(image, spec.core, settings.fit), None)  # noqa: E731
    else:
        boxes = tiling.core_grid(height, width, spec.core)
        cut = lambda box: (  # noqa: E731
            tiling.cut_tile(image, box[0], box[1], spec.core, spec.margin),
            None if mask is None else tiling.cut_mask_tile(mask[..., None], box[0], box[1], spec.core, spec.margin))
    copies = settings.augment_copies if source.split == "train" else 0
    for box in boxes:
        tile, mask_tile = cut(box)
        for copy in range(copies + 1):
            out_image, out_mask, params = augment.augment(
                tile, mask_tile, source.id, box[0], box[1], copy, settings.augment_config)
            example = {
                "image": out_image, "id": example_id(source.id, box[0], box[1], copy),
                "source_id": source.id, "core_y": box[0], "core_x": box[1], "core_h": box[2], "core_w": box[3],
                "margin": 0 if spec.whole_image else spec.margin, "source_h": height, "source_w": width,
                "copy": copy, "augmentation": json.dumps(params, sort_keys=True),
                "split": source.split, "image_path": source.image_path, "mask_path": source.mask_path or "",
            }
            if out_mask is not None:
                labelled = out_mask[out_mask != IGNORE_LABEL]
                example["mask"] = out_mask
                example["fg_fraction"] = float(np.mean(labelled != 0)) if labelled.size else 0.0
            else:
                example["label"] = source.label
                example["fg_fraction"] = 0.0
            yield example


def class_pixels(mask: np.ndarray, num_classes: int) -> list[int]:
    """Labelled pixels per class of a whole source mask (each pixel counted once)."""
    labelled = mask[mask != IGNORE_LABEL]
    return np.bincount(labelled.ravel(), minlength=num_classes)[:num_classes].tolist()


class _Cut(beam.DoFn):
    def __init__(self, settings: TileSettings):
        self.settings = settings

    def setup(self):
        self._last_log, self._sources, self._tiles = time.monotonic(), 0, 0

    def process(self, decoded) -> Iterator[Any]:
        source, image, mask = decoded
        n = 0
        for example in tile_examples(source, image, mask, self.settings):
            n += 1
            yield example
        Metrics.counter(NAMESPACE, "examples").inc(n)
        Metrics.counter(NAMESPACE, f"sources_{source.split}").inc()
        stats = {"split": source.split, "label": source.label,
                 "class_pixels": class_pixels(mask, self.settings.spec.num_classes) if mask is not None else None}
        yield beam.pvalue.TaggedOutput("source_stats", stats)
        self._sources, self._tiles = self._sources + 1, self._tiles + n
        if time.monotonic() - self._last_log > 10:
            logging.info("preprocess worker: %d sources, %d examples so far", self._sources, self._tiles)
            self._last_log = time.monotonic()


class CutTiles(beam.PTransform):
    """(source, image, mask) -> example dicts (tiles + static augmentation) and per-source stats."""

    def __init__(self, settings: TileSettings):
        super().__init__()
        self.settings = settings

    def expand(self, pcoll):
        return pcoll | "Cut" >> beam.ParDo(_Cut(self.settings)).with_outputs("source_stats", main="examples")


def is_classification(spec: DatasetSpec) -> bool:
    return spec.task == CLASSIFICATION
