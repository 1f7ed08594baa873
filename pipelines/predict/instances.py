"""Instance labels of a predicted image (``--instances``): which decoder, and decoding a whole image.

The decoder itself is ``schemas.decoder`` (the one the trainer calibrates): modes
``components`` and ``watershed`` read the decided class-id mask of any model; ``seeded`` and
``partition`` read a boundary model's probabilities of background / boundary / interior. A
boundary model's masks and objects are then of its output classes (background, its object
class); the class modes read such a model's foreground (P(boundary) + P(interior) >= the
decoder's ``foreground``). Which decoder runs (``resolve_decoder``): the model card's, with the
settings the user gave on top. Pure numpy.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Iterator, Sequence

import numpy as np

from pipelines.core.objects import label_table
from pipelines.predict.stitch import StripResult, preview_rows, preview_step
from schemas import decoder as dec
from schemas.model_card import ModelCard

METHODS = ("auto", "none", *dec.CLASS_MODES)    # --instances
OVERRIDES = ("mode", "foreground", "seed", "min_size", "expand", "connectivity", "min_distance")


def instance_labels(mask: np.ndarray, method: str = "components", connectivity: int = 4,
                    min_distance: int = 5) -> np.ndarray:
    """(H, W) uint32 instance ids of the classes > 0 of ``mask`` (``schemas.decoder.decode`` in
    mode ``method``), numbered in raster order of their first pixel."""
    if method not in dec.CLASS_MODES:
        raise ValueError(f"instances must be one of {dec.CLASS_MODES}, got {method!r}")
    params = dec.DecoderParams(mode=method, connectivity=connectivity, min_distance=min_distance)
    return dec.decode(params, classes=mask)


def resolve_decoder(instances: str, cards: Sequence[ModelCard], overrides: dict, where: str = "the model"
                    ) -> dec.DecoderParams | None:
    """The decoder predict runs, or None (no instances).

    ``instances``: ``none``; ``components`` / ``watershed`` (that mode); ``auto``: the card's
    decoder for a boundary model (``seeded`` at 0.5 when its card has none), or when any decoder
    setting is given, else none.
    ``overrides``: decoder fields the user set (the rest come from the card, ``OVERRIDES``)."""
    card = cards[0]
    given = {k: v for k, v in overrides.items() if v is not None}
    unknown = set(given) - set(OVERRIDES)
    if unknown:
        raise ValueError(f"unknown decoder settings {sorted(unknown)}")
    if card.task != "segmentation":
        if given:
            raise ValueError(f"decoder settings {sorted(given)} apply to segmentation models; {where} is a classifier")
        return None
    if instances not in METHODS:
        raise ValueError(f"--instances must be one of {METHODS}, got {instances!r}")
    if instances == "none":
        if set(given) - {"connectivity"}:
            raise ValueError(f"decoder settings {sorted(set(given) - {'connectivity'})} need instances; "
                             "drop --instances none")
        return None
    if instances in dec.CLASS_MODES:
        if given.get("mode", instances) != instances:
            raise ValueError(f"--instances {instances} and --decoder {given['mode']} disagree; give one of them")
        given["mode"] = instances
    elif not card.is_boundary_model and not set(given) - {"connectivity"}:
        return None                      # auto, a plain model, nothing asked for
    decoders = {json_key(c.decoder_params()) for c in cards}
    if len(decoders) > 1 and "mode" not in given:
        raise ValueError(f"the ensemble's models record different decoders ({sorted(decoders)}); choose one "
                         "with --decoder and its thresholds")
    base = card.decoder_params() if card.decoder or not card.is_boundary_model else dec.DecoderParams("seeded")
    params = dec.DecoderParams.from_dict({**base.to_dict(), **given})
    if params.needs_boundary_model and not card.is_boundary_model:
        raise ValueError(f"the {params.mode} decoder reads the probabilities of {dec.BOUNDARY_CLASSES} of a model "
                         f"trained on a boundary target; {where} predicts {list(card.class_names)}: use "
                         "--instances components or watershed, or train on a boundary-target dataset")
    return params


def json_key(params: dec.DecoderParams) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(params.to_dict().items()))


@dataclasses.dataclass(frozen=True, eq=False)
class DecodedImage:
    labels: np.ndarray        # (H, W) uint32 instance ids
    mask: np.ndarray          # (H, W) uint8 output classes: an object's class where an object is, else 0
    confidence: np.ndarray    # (H, W) float16: the probability of the class in ``mask``
    # a boundary model's objects for their table: class 1 on every object pixel (partition's
    # expansion included, which the mask leaves background) and P(object) there
    object_classes: np.ndarray | None = None
    object_confidence: np.ndarray | None = None

    def for_table(self) -> tuple[np.ndarray, np.ndarray]:
        """(classes, confidence) the objects' table is computed from."""
        if self.object_classes is None:
            return self.mask, self.confidence
        return self.object_classes, self.object_confidence


def decode_image(params: dec.DecoderParams, boundary: bool, strips: Callable[[], Iterator[StripResult]]
                 ) -> DecodedImage:
    """Decode one image from its strips (read once; one whole-image array per input kept).

    Boundary models (``boundary``): the strips carry float32 probabilities (o, W, 3); masks
    are ``decoder.foreground_classes`` of the objects, the confidence P(object) there and
    P(background) elsewhere. Other models: the strips' decided masks; an object dropped by
    ``min_size`` leaves the mask too (masks, instances and objects agree)."""
    probabilities = classes = confidence = None
    for r in strips():
        a, b = r.rows
        if boundary:
            if r.probabilities is None or r.probabilities.dtype != np.float32 or r.probabilities.shape[-1] != 3:
                raise ValueError(f"{r.image_id}: a boundary model's strips must carry (o, W, 3) float32 probabilities")
            if probabilities is None:
                probabilities = np.empty((r.height, r.width, 3), np.float32)
            probabilities[a:b] = r.probabilities
        else:
            if classes is None:
                classes = np.empty((r.height, r.width), np.uint8)
                confidence = np.empty((r.height, r.width), np.float16)
            classes[a:b] = r.mask
            confidence[a:b] = r.confidence
    if boundary:
        if params.needs_boundary_model:
            labels = dec.decode(params, probabilities=probabilities)
        else:
            labels = dec.decode(params, classes=dec.boundary_foreground(probabilities, params.foreground))
        mask = dec.foreground_classes(labels, probabilities, params.foreground)
        background = probabilities[..., 0]
        confidence = np.where(mask > 0, 1.0 - background, background).astype(np.float16)
        return DecodedImage(labels, mask, confidence, dec.foreground_classes(labels),
                            (1.0 - background).astype(np.float16))
    labels = dec.decode(params, classes=classes)
    if params.min_size > 1:
        classes = np.where(labels > 0, classes, 0).astype(np.uint8)
    return DecodedImage(labels, classes, confidence)


def with_decoded_masks(strips: Callable[[], Iterator[StripResult]], decoded: DecodedImage, classes: int
                       ) -> Callable[[], Iterator[StripResult]]:
    """The strips again, their masks (and what is counted from them) those of ``decoded``."""
    def again() -> Iterator[StripResult]:
        for r in strips():
            a, b = r.rows
            mask = decoded.mask[a:b]
            step = preview_step(r.height, r.width)
            yield dataclasses.replace(
                r, mask=mask, preview_mask=mask[preview_rows(a, b, step), ::step],
                class_counts=tuple(int(c) for c in np.bincount(mask.ravel(), minlength=classes)[:classes]),
                confidence_sum=float(decoded.confidence[a:b].sum(dtype=np.float64)),
                confidence=decoded.confidence[a:b])
    return again


def instance_table(labels: np.ndarray, mask: np.ndarray, confidence: np.ndarray) -> dict:
    """Per instance (ids 1..n) the fields ``label_outputs.objects_table`` takes (object_id =
    the instance id): ``objects.label_table`` of the instance image."""
    n = int(labels.max()) if labels.size else 0
    return {"object_id": np.arange(1, n + 1, dtype=np.int64), **label_table(labels, n, mask, confidence)}


def add_flags(p, d) -> None:
    """The instance and decoder flags of ``tessera predict`` (defaults from the PredictConfig ``d``)."""
    p.add_argument("--connectivity", type=int, choices=(0, 4, 8), default=d.connectivity,
                   help="objects (objects.parquet of large images, instances): 4- or 8-connected "
                        "(0: the model card's decoder's, 4 without one)")
    p.add_argument("--instances", choices=METHODS, default=d.instances,
                   help="write instances/<id>.tif (an id per object) and objects/<id>.parquet: auto = the model "
                        "card's decoder for a boundary model (or when a decoder setting is given), none for "
                        "others; components = connected components per class; watershed = split at the necks "
                        "between touching objects")
    p.add_argument("--decoder", choices=dec.MODES, default=None,
                   help="the decoder instead of the card's: components | watershed (any model) | seeded | "
                        "partition (boundary models: seeds of P(interior) grown over P(boundary); partition "
                        "also assigns the boundary to the cells); None: the card's")
    p.add_argument("--seed-threshold", type=float, default=d.seed_threshold,
                   help="seeded/partition: seeds where P(interior) >= this (-1: the card's)")
    p.add_argument("--foreground-threshold", type=float, default=d.foreground_threshold,
                   help="boundary models: foreground where P(boundary) + P(interior) >= this (-1: the card's)")
    p.add_argument("--min-size", type=int, default=d.min_size,
                   help="objects smaller than this many px are dropped from instances and masks (-1: the card's)")
    p.add_argument("--expand", type=int, default=d.expand,
                   help="partition: px an object grows into the background (-1: the card's)")
    p.add_argument("--min-distance", type=int, default=d.min_distance,
                   help="watershed: seeds (distance maxima) at least this many px apart (-1: the card's, else 5)")
    p.add_argument("--halo", type=int, default=d.halo,
                   help="large images with instances: px of context decoded around each block; must exceed the "
                        "largest object (with the objects touching it), else the image is rejected (halo_too_small)")


def decoder_overrides(config) -> dict:
    """The decoder settings a ``PredictConfig`` gives (None: the model card's)."""
    given = {"mode": config.decoder or None, "seed": config.seed_threshold, "foreground": config.foreground_threshold,
             "min_size": config.min_size, "expand": config.expand, "min_distance": config.min_distance,
             "connectivity": config.connectivity or None}
    return {k: (None if v in (-1, -1.0) else v) for k, v in given.items()}
