"""Beam transforms of the preprocessing job: list and pair sources, assign splits;
and the per-source work (decode, cut tiles, augment) that the shard writer calls.

Each composite only wires DoFns around the pure code in ``sources``, ``images``,
``tiling`` and ``augment``. Bad inputs leave through the ``rejected`` tagged output
with a reason, and are counted.
"""
from __future__ import annotations

import dataclasses
import json
from typing import Any, Iterator

import apache_beam as beam
import numpy as np
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics

from pipelines.preprocess import static_augment
from pipelines.beam import files
from pipelines.core import images
from pipelines.core import pixels
from pipelines.core import sources
from pipelines.core import tiling
from schemas.example import IGNORE_LABEL, DatasetSpec, example_id

REJECTED = "rejected"
NAMESPACE = "tessera.preprocess"


def reject(record: dict) -> beam.pvalue.TaggedOutput:
    Metrics.counter(NAMESPACE, "rejected").inc()
    Metrics.counter(NAMESPACE, f"rejected_{record['reason']}").inc()
    return beam.pvalue.TaggedOutput(REJECTED, record)


def _match_files(pattern: str) -> list[tuple[str, int]]:
    return sorted((m.path, m.size_in_bytes) for m in FileSystems.match([pattern])[0].metadata_list)


class _PairFiles(beam.DoFn):
    """(key, {'images': [...], 'masks': [...]}) -> Source, or rejected records."""

    def process(self, keyed: tuple[str, dict]) -> Iterator[Any]:
        key, files = keyed
        sizes = dict(list(files["images"]) + list(files["masks"]))
        source, bad = sources.pair(key, [p for p, _ in files["images"]], [p for p, _ in files["masks"]])
        for record in bad:
            yield reject(record)
        if source is not None:
            yield dataclasses.replace(source, num_bytes=sizes[source.image_path] + sizes[source.mask_path])


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
                    | f"Key{kind}" >> beam.Map(lambda f: (sources.segmentation_key(f[0], self.root)[0], f)))

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

    def process(self, listed: tuple[str, int]) -> Iterator[Any]:
        path, size = listed
        if not sources.has_image_extension(path):
            yield reject(sources.rejected(path, "not_an_image", "not an image file extension"))
            return
        try:
            source = sources.classification_source(path, self.root)
        except ValueError as error:
            yield reject(sources.rejected(path, "no_class_folder", str(error)))
            return
        if source.label not in self.class_names:
            yield reject(sources.rejected(path, "unknown_class", f"class {source.label!r} is not in {self.class_names}"))
        else:
            yield dataclasses.replace(source, num_bytes=size)


class RejectDuplicateIds(beam.PTransform):
    """Sources sharing an id (``cup/a.png`` and ``cup/a.jpg``) are all rejected: neither is guessed."""

    def expand(self, pcoll):
        def unique(keyed):
            key, group = keyed
            group = sorted(group, key=lambda s: s.image_path)
            if len(group) == 1:
                yield group[0]
                return
            paths = [s.image_path for s in group]
            for s in group:
                yield reject(sources.rejected(s.image_path, "duplicate_id",
                                              f"{len(group)} files share the id {key!r}: {paths}"))

        return (pcoll
                | "ById" >> beam.Map(lambda s: (s.id, s))
                | "GroupById" >> beam.GroupByKey()
                | "Unique" >> beam.FlatMap(unique).with_outputs(REJECTED, main="sources"))


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


def decode_source(source: sources.Source, image_policy: images.ImagePolicy,
                  mask_policy: images.MaskPolicy | None) -> tuple[np.ndarray, np.ndarray | None]:
    """(image (H,W,C), mask (H,W) or None); raises RejectedInput with the reason."""
    try:
        image = images.read_image(files.read_bytes(source.image_path), source.image_path, image_policy)
        mask = None
        if source.mask_path:
            mask = images.read_mask(files.read_bytes(source.mask_path), source.mask_path, mask_policy)
            images.check_pair(image, mask, source.id)
    except OSError as error:  # includes Beam's BeamIOError: the file could not be read at all
        raise images.RejectedInput("unreadable", str(error)) from error
    return image, mask


def rejected_source(source: sources.Source, error: images.RejectedInput) -> dict:
    files = [source.image_path] + ([source.mask_path] if source.mask_path else [])
    return sources.rejected(" + ".join(files), error.reason, error.detail, files)


@dataclasses.dataclass(frozen=True)
class TileSettings:
    spec: DatasetSpec
    augment_copies: int = 0
    augment_config: static_augment.AugmentConfig = static_augment.AugmentConfig()
    fit: str = "resize"           # whole-image classification: resize | pad | crop


def tile_examples(source: sources.Source, image: np.ndarray, mask: np.ndarray | None,
                  settings: TileSettings) -> Iterator[dict]:
    """Every example of one decoded source: copy 0 of each tile, plus augmented copies in train."""
    spec = settings.spec
    height, width = image.shape[:2]
    if spec.whole_image:
        boxes = [(0, 0, height, width)]
        cut = lambda box: (pixels.fit_to_size(image, spec.core, settings.fit), None)  # noqa: E731
    else:
        boxes = tiling.core_grid(height, width, spec.core)
        cut = lambda box: (  # noqa: E731
            tiling.cut_tile(image, box[0], box[1], spec.core, spec.margin),
            None if mask is None else tiling.cut_mask_tile(mask[..., None], box[0], box[1], spec.core, spec.margin))
    copies = settings.augment_copies if source.split == "train" else 0
    for box in boxes:
        tile, mask_tile = cut(box)
        for copy in range(copies + 1):
            out_image, out_mask, params = static_augment.augment(
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


def source_stats(source: sources.Source, mask: np.ndarray | None, spec: DatasetSpec) -> dict:
    return {"split": source.split, "label": source.label,
            "class_pixels": None if mask is None else class_pixels(mask, spec.num_classes)}


