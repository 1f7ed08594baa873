"""Decision threshold of a binary model, calibrated on validation histograms of P(foreground).

``histograms`` is [2, B]: counts of labelled background (row 0) and foreground (row 1)
pixels whose P(foreground) falls in bin i = [i/B, (i+1)/B). A pixel is predicted
foreground when p >= t, and the candidate thresholds are the bin edges i/B, so the counts
at each threshold are exact for those edges.

Object rules (``--calibrate rand|object-f1``) score whole validation images put back
together (``SourceCanvas``): a binary model's threshold (``ObjectCalibration``), or a
boundary model's decoder, thresholds and mode (``DecoderCalibration``, ``schemas.decoder``:
the decoder predict runs).
"""
from __future__ import annotations

import numpy as np

from trainer.metrics import segmentation_scores


def counts_at_thresholds(histograms) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(thresholds [B], tp, fp, fn) for t = i/B, i = 0..B-1."""
    histograms = np.asarray(histograms, np.float64)
    bins = histograms.shape[1]
    negatives, positives = histograms[0], histograms[1]
    tp = positives[::-1].cumsum()[::-1]
    fp = negatives[::-1].cumsum()[::-1]
    fn = positives.sum() - tp
    return np.arange(bins) / bins, tp, fp, fn


def _fbeta(tp, fp, fn, beta: float):
    b2 = beta * beta
    den = (1 + b2) * tp + b2 * fn + fp
    return np.divide((1 + b2) * tp, den, out=np.zeros_like(den), where=den > 0)


def calibrate_threshold(histograms, beta: float = 1.0, target_recall: float = 0.0) -> tuple[float, str]:
    """(threshold, rule). Without a target: the threshold of maximum F-beta (the highest
    one among ties). With ``target_recall``: the highest threshold whose recall still
    reaches the target (the most precise such threshold); 0.0 if the positives are absent."""
    thresholds, tp, fp, fn = counts_at_thresholds(histograms)
    if target_recall > 0:
        positives = tp[0]
        if positives == 0:
            return 0.0, f"recall >= {target_recall:g} on val (no foreground in val: threshold 0)"
        reaching = np.nonzero(tp / positives >= target_recall)[0]
        return float(thresholds[reaching[-1]]), f"recall >= {target_recall:g} on val"
    scores = _fbeta(tp, fp, fn, beta)
    best = np.nonzero(scores == scores.max())[0][-1]
    return float(thresholds[best]), f"max F{beta:g} on val"


def scores_at(histograms, threshold: float, beta: float = 1.0) -> dict[str, float]:
    """Foreground dice, iou, precision, recall, fbeta at ``threshold`` (one of the bin edges),
    with the conventions of ``trainer.metrics`` (empty truth and prediction score 1)."""
    thresholds, tp, fp, fn = counts_at_thresholds(histograms)
    i = int(np.clip(np.searchsorted(thresholds, threshold - 1e-9), 0, len(thresholds) - 1))
    return segmentation_scores(np.array([[0.0, fp[i]], [fn[i], tp[i]]]), beta)


OBJECT_RULES = ("rand", "object-f1", "objects")
# what each object rule maximises, and the card's metrics key for its value
OBJECT_RULE_NAMES = {"rand": "Rand F-score (1 - adapted Rand error)", "object-f1": "object F1 at IoU 0.5",
                     "objects": "mean of Rand F-score, object F1 at IoU 0.5 and foreground Dice"}
OBJECT_RULE_KEYS = {"rand": "rand_fscore", "object-f1": "object_f1", "objects": "objects_score"}
OBJECT_THRESHOLDS = tuple(round(0.05 * i, 2) for i in range(1, 20))   # 0.05 ... 0.95


class ObjectScoreboard:
    """Object scores of ``count`` candidates over validation images, added up: per candidate
    the contingency tables (``rand``: Rand F-score of all images' tables together), the
    matching counts (``object-f1``: object F1 at IoU > 0.5) or both and the foreground's pixel
    counts (``objects``: the mean of Rand F-score, object F1 and foreground Dice — the Rand
    error ignores the truth's background, so alone it favours objects that spill into it;
    object F1 counts every fragment, but a spill into the background that forms one object of
    its own costs it one false positive: Dice sees its pixels); what is kept grows with the
    objects, not the pixels."""

    def __init__(self, metric: str, count: int):
        if metric not in OBJECT_RULES:
            raise ValueError(f"object calibration is {OBJECT_RULES}, got {metric!r}")
        self.metric = metric
        self.tables: list[list] = [[] for _ in range(count)]
        self.counts: list[dict | None] = [None] * count
        self.pixels = np.zeros((count, 3), np.int64)     # foreground tp, fp, fn

    def score(self, i: int, truth_ids, predicted_ids) -> None:
        from schemas import object_scores as scores

        if self.metric in ("rand", "objects"):
            self.tables[i].append(scores.ids_table(truth_ids, predicted_ids))
        if self.metric in ("object-f1", "objects"):
            self.counts[i] = scores.add_counts(self.counts[i], scores.object_counts(truth_ids, predicted_ids))
        if self.metric == "objects":
            truth, predicted = truth_ids > 0, predicted_ids > 0
            self.pixels[i] += (np.count_nonzero(truth & predicted), np.count_nonzero(predicted & ~truth),
                               np.count_nonzero(truth & ~predicted))

    def values(self, metric: str = "") -> np.ndarray:
        """Each candidate's value under ``metric`` (default: the scoreboard's; ``rand`` may be
        asked of an ``objects`` board, which keeps the tables too)."""
        from schemas import object_scores as scores

        metric = metric or self.metric
        rand = np.array([1.0 - scores.adapted_rand(scores.combined_table(t)) for t in self.tables])
        if metric == "rand":
            return rand
        f1 = np.array([scores.object_summary(c).get("object_f1", np.nan) for c in self.counts])
        if metric == "object-f1":
            return f1
        tp, fp, fn = self.pixels.T.astype(np.float64)
        dice = np.divide(2 * tp, 2 * tp + fp + fn, out=np.ones_like(tp), where=2 * tp + fp + fn > 0)
        return (rand + f1 + dice) / 3


class ObjectCalibration(ObjectScoreboard):
    """The threshold that scores best for objects on validation (``--calibrate rand|object-f1``).

    Each validation image (``SourceCanvas``: its cores put back together) is labelled at
    every candidate threshold (4-connected components of the predicted foreground; the
    truth's objects are the components of its mask, as in ``tessera evaluate``) and scored
    against the truth: ``rand`` by the Rand F-score (1 - adapted Rand error) of all images'
    tables together, ``object-f1`` by the object F1 at IoU > 0.5. What is kept per
    threshold grows with the objects, not the pixels."""

    def __init__(self, metric: str):
        super().__init__(metric, len(OBJECT_THRESHOLDS))

    def add(self, foreground, truth) -> None:
        """One image (or core): P(foreground) (H, W) and its truth class ids (H, W; 255 ignored)."""
        from schemas import object_scores as scores
        from schemas.example import IGNORE_LABEL

        ignored = truth == IGNORE_LABEL
        truth_ids = scores.objects_of(truth, ignored)
        for i, threshold in enumerate(OBJECT_THRESHOLDS):
            self.score(i, truth_ids, scores.objects_of((foreground >= threshold).astype(np.uint8), ignored))

    def best(self) -> tuple[float, float, str]:
        """(threshold, value, rule); the threshold nearest 0.5 among equal values."""
        values = np.nan_to_num(self.values(), nan=-1.0)
        ties = np.nonzero(values == values.max())[0]
        best = ties[np.argmin([abs(OBJECT_THRESHOLDS[i] - 0.5) for i in ties])]
        return OBJECT_THRESHOLDS[best], float(values[best]), f"max {OBJECT_RULE_NAMES[self.metric]} on val images"


class SourceCanvas:
    """Puts the validation cores of each source back together, so objects are scored on whole
    images as ``tessera evaluate`` scores them (core by core, objects cut by core borders
    would count twice and merges across them would be missed). The scores put together are
    P(foreground) (C, C) or class probabilities (C, C, K). A source whose values (pixels x
    channels) exceed ``max_pixels`` is scored core by core; a source is complete when all
    its cores have come (those a tile filter dropped stay ignored, given out by ``rest``)."""

    def __init__(self, core: int, max_pixels: int = 16_000_000):
        self.core, self.max_pixels = core, max_pixels
        self.open: dict = {}

    def add(self, source_id, placement, foreground, truth):
        """Yields the (scores, truth) images this core completes; ``foreground`` is the core's
        scores (C, C) or (C, C, K), ``truth`` its class ids (C, C), ``placement`` (y, x, h, w,
        source h, source w)."""
        from schemas.example import IGNORE_LABEL

        y, x, h, w, height, width = (int(v) for v in placement)
        channels = int(np.prod(foreground.shape[2:], dtype=np.int64))
        if height * width * channels > self.max_pixels:
            yield foreground[:h, :w], truth[:h, :w]
            return
        if source_id not in self.open:
            cores = -(-height // self.core) * -(-width // self.core)
            self.open[source_id] = [np.zeros((height, width, *foreground.shape[2:]), np.float32),
                                    np.full((height, width), IGNORE_LABEL, np.uint8), 0, cores]
        canvas = self.open[source_id]
        canvas[0][y:y + h, x:x + w] = foreground[:h, :w]
        canvas[1][y:y + h, x:x + w] = truth[:h, :w]
        canvas[2] += 1
        if canvas[2] == canvas[3]:
            del self.open[source_id]
            yield canvas[0], canvas[1]

    def rest(self):
        for source_id in sorted(self.open):
            yield self.open[source_id][:2]
        self.open = {}


SEED_THRESHOLDS = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
MIN_SIZES = (0, 16, 64, 256)      # px: fragments a decoder leaves count one by one in object F1
FOREGROUND_THRESHOLDS = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8)
def calibration_rule(requested: str, spec, data: str = "the dataset") -> str:
    """The ``--calibrate`` rule a dataset gets: ``auto`` stays ``auto`` for a boundary target (its
    decoder's calibration decides from the validation truth: ``DecoderCalibration``), else is
    ``fbeta`` (a binary model's pixel threshold); a rule that makes no sense for the dataset is
    refused with the ones that do."""
    from schemas.example import SEGMENTATION

    boundary = spec.target == "boundary"
    if requested in ("", "auto"):
        return "auto" if boundary else "fbeta"
    if boundary and requested not in OBJECT_RULES:
        raise ValueError(f"--calibrate {requested} chooses a binary model's pixel threshold; {data} has a boundary "
                         f"target, whose decoder is calibrated for objects: use --calibrate auto (the default), "
                         f"objects, rand or object-f1")
    if requested != "fbeta" and not boundary and not (spec.task == SEGMENTATION and spec.num_classes == 2):
        raise ValueError(f"--calibrate {requested} chooses a binary segmentation model's threshold; "
                         f"{data} has {spec.num_classes} classes ({spec.task})")
    return requested


def decoder_candidates(border_thickness: int) -> list:
    """The decoders tried: seeded and partition (growing ``2 * border_thickness`` px, the band
    the target drew inside each outline, on both sides of a membrane) over seed x foreground x
    the smallest object kept."""
    from schemas.decoder import DecoderParams

    return [DecoderParams(mode, foreground=f, seed=s, min_size=m, expand=2 * border_thickness if mode == "partition"
                          else 0)
            for mode in ("seeded", "partition") for f in FOREGROUND_THRESHOLDS for s in SEED_THRESHOLDS
            for m in MIN_SIZES]


def truth_objects(truth: np.ndarray) -> np.ndarray:
    """A boundary target's objects: the seeded decoder of its one-hot classes (ignored pixels are
    no object): its interiors grown over its boundary band."""
    from schemas.decoder import DecoderParams, decode

    one_hot = (truth[..., None] == np.arange(3, dtype=truth.dtype)).astype(np.float32)
    return decode(DecoderParams("seeded"), probabilities=one_hot)


SEPARATOR_PX = 8           # auto rule: the truth's background lies this close to an object ...
SEPARATOR_FRACTION = 0.9   # ... for at least this fraction of its pixels: it only separates objects


class DecoderCalibration(ObjectScoreboard):
    """The decoder that scores best for objects on validation images (a boundary model's
    ``--calibrate rand|object-f1|objects|auto``): every ``decoder_candidates`` decoder applied to
    each image's probabilities (H, W, 3), scored against ``truth_objects`` as
    ``ObjectCalibration`` scores (what is kept per candidate grows with the objects, not the
    pixels). ``auto`` decides from the truth: where its background is only the thin separator
    between objects that tile the image (EM membranes: >= 90% of it within 8 px of an object),
    the field scores segmentations by the Rand error, so ``rand``; elsewhere (nuclei, buildings
    on open background) ``objects``."""

    def __init__(self, metric: str, border_thickness: int):
        self.candidates = decoder_candidates(border_thickness)
        self.requested = metric
        super().__init__("objects" if metric == "auto" else metric, len(self.candidates))
        self.background = np.zeros(2, np.int64)      # truth background pixels: near an object, all

    def add(self, probabilities, truth) -> None:
        """One image: probabilities (H, W, 3) of background / boundary / interior and its truth
        classes (H, W; 255 ignored)."""
        from scipy import ndimage

        from schemas import object_scores as scores
        from schemas import decoder
        from schemas.example import IGNORE_LABEL

        ignored = truth == IGNORE_LABEL
        objects = truth_objects(truth)
        truth_ids = scores.objects_of(objects, ignored, instances=True)
        if self.requested == "auto" and objects.any():
            background = (objects == 0) & ~ignored
            near = ndimage.distance_transform_edt(objects == 0)[background] <= SEPARATOR_PX
            self.background += (int(near.sum()), int(background.sum()))
        grown = {}       # one watershed per (foreground, seed): the candidates differ after it
        for i, params in enumerate(self.candidates):
            key = (params.foreground, params.seed, params.connectivity)
            if key not in grown:
                grown[key] = decoder.grown(params, probabilities)
            self.score(i, truth_ids, scores.objects_of(decoder.finished(params, grown[key]), ignored,
                                                       instances=True))

    def chosen_metric(self) -> str:
        """The rule scored: the requested one, or ``auto``'s choice from the truths added."""
        if self.requested != "auto":
            return self.requested
        near, total = self.background
        return "rand" if total and near >= SEPARATOR_FRACTION * total else "objects"

    def values(self, metric: str = "") -> np.ndarray:
        return super().values(metric or self.chosen_metric())

    def best(self) -> tuple:
        """(DecoderParams, value, rule); among equal values seeded before partition, then the
        thresholds nearest 0.5, then the smallest min_size."""
        values = np.nan_to_num(self.values(), nan=-1.0)
        ties = np.nonzero(values == values.max())[0]
        best = min(ties, key=lambda i: (self.candidates[i].mode != "seeded",
                                        abs(self.candidates[i].seed - 0.5) + abs(self.candidates[i].foreground - 0.5),
                                        self.candidates[i].min_size, i))
        metric = self.chosen_metric()
        rule = (f"max {OBJECT_RULE_NAMES[metric]} on val images over seeded/partition x seed in "
                f"{SEED_THRESHOLDS[0]}..{SEED_THRESHOLDS[-1]} x foreground in {FOREGROUND_THRESHOLDS[0]}.."
                f"{FOREGROUND_THRESHOLDS[-1]} x min size {MIN_SIZES}")
        if self.requested == "auto":
            near, total = self.background
            share = f"{near / total:.0%}" if total else "no background"
            rule += (f" (auto: {share} of the truth's background within {SEPARATOR_PX} px of an object, "
                     + ("a separator of tiling objects: Rand)" if metric == "rand" else "open background: objects)"))
        return self.candidates[best], float(values[best]), rule
