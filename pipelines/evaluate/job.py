"""``tessera evaluate``: score a prediction directory against ground truth.

    tessera evaluate --predictions ./pred --truth ./labels --output report.json
    tessera evaluate --predictions ./pred --truth ./photos --output cls.json   # class folders
    tessera evaluate --predictions ./pred --truth labels.csv --output cls.json # image_id,label

Segmentation: ``--truth`` is a folder of masks paired with ``<predictions>/masks/<id>.png``
by relative path without extension, read with the preprocessing mask mapping
(``--mask-values``). Classification (``predictions.parquet`` has a ``label`` column, or
``--task classification``): truth is a class-per-folder tree or a CSV ``image_id,label``.
A prediction directory without ``_SUCCESS`` (an unfinished run) is refused unless
``--allow-incomplete``; that and other bad flags exit with status 2.

Writes ``report.json``, ``report.parquet`` (one row per image id seen on either side, with
its ``status``), ``report_confusion.parquet`` (truth, predicted, count) and
``report_confusion.png`` beside it, and prints a table. Metric conventions: pipelines/evaluate/scores.py.
A plain Python command (no Beam pipeline); ``--workers N`` scores images in N processes.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import json
import sys

import numpy as np
from apache_beam.io.filesystems import FileSystems

from pipelines.beam import flags
from pipelines.beam.files import (
    check_apart,
    exists,
    file_bytes_limit,
    read_bytes,
    read_input,
)
from pipelines.core.images import image_size, read_mask, read_mask_values
from pipelines.core.masks import MaskPolicy, parse_mask_values
from pipelines.evaluate import objects, scores
from pipelines.evaluate import report as report_files
from pipelines.evaluate.inputs import (
    check_complete,
    check_size,
    detect_task,
    instance_paths,
    instances_exist,
    is_label_image,
    label_image_exists,
    list_files,
    match_ids,
    predicted_labels,
    prediction_mask_paths,
    probability_paths,
    read_instance_labels,
    read_label_image,
    read_prediction,
    read_predictions_table,
    read_probabilities,
    read_truth_labels,
    resolve_class_names,
)
from schemas import cli
from schemas.example import CLASSIFICATION, IGNORE_LABEL, SEGMENTATION
from schemas.layout import CONFIG_FILE, PREDICTIONS_FILE
from schemas.rejected import RejectedInput, rejected_record

OBJECT_METRICS = ("object_precision", "object_recall", "object_f1", "object_ap50", "object_f1_50_95",
                  "object_ap_50_95", "object_pq", "object_sq", "object_rq")


@dataclasses.dataclass(frozen=True)
class EvaluateConfig:
    predictions: str
    truth: str
    output: str = "report.json"
    mask_values: str = "auto"
    class_names: tuple[str, ...] = ()
    beta: float = 1.0
    task: str = "auto"
    workers: int = 1
    allow_incomplete: bool = False
    max_pixels: int = 100_000_000     # larger truth or predicted masks are rejected from their header
    seam_band: int = 8                # error rate within this many px of tile core edges vs inside (0: off)
    truth_instances: bool = False     # truth masks are instance label images (an id per object, 0 none)


def build_parser() -> argparse.ArgumentParser:
    d = EvaluateConfig("", "")
    p = cli.ArgumentParser(prog="tessera evaluate", allow_abbrev=False, description=__doc__,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--predictions", required=True, help="directory written by tessera predict (required)")
    p.add_argument("--truth", required=True,
                   help="mask folder, class-per-folder tree, or CSV image_id,label (required)")
    p.add_argument("--output", default=d.output,
                   help=f"report JSON; .parquet/.png are written beside it (default: {d.output})")
    p.add_argument("--mask-values", default=d.mask_values,
                   help="truth mask mapping, as in preprocess: auto | binary | ids | instances | v:c,v:c,... "
                        f"(default: {d.mask_values})")
    p.add_argument("--class-names", default="",
                   help="a,b,... (default: from the predictions' table, card or config; else background,foreground)")
    p.add_argument("--beta", type=float, default=d.beta, help=f"beta of the F-beta score (default: {d.beta})")
    p.add_argument("--task", choices=("auto", SEGMENTATION, CLASSIFICATION), default=d.task,
                   help=f"auto: from the predictions' table, or classification for a CSV truth (default: {d.task})")
    p.add_argument("--workers", type=int, default=d.workers,
                   help=f"processes scoring images (0: all cores) (default: {d.workers})")
    p.add_argument("--max-pixels", type=int, default=d.max_pixels,
                   help="truth, predicted and instance masks with more pixels are rejected from their header, "
                        "before decoding; scoring holds about 60 bytes per pixel of an image in each worker "
                        f"(default: {d.max_pixels}, about 6 GB)")
    p.add_argument("--seam-band", type=int, default=d.seam_band,
                   help="report the error rate within this many px of the prediction tiles' core edges vs "
                        f"the interior (from the predictions' config.json; 0: off) (default: {d.seam_band})")
    p.add_argument("--truth-instances", action="store_true",
                   help="truth masks hold an id per object (0 background): objects are those ids, so touching "
                        "cells stay apart (default: off: connected components of each class)")
    p.add_argument("--allow-incomplete", action="store_true",
                   help="score a prediction directory without _SUCCESS (an unfinished or failed run) (default: off)")
    return p


def run(argv: list[str] | None = None) -> int:
    args, _ = flags.parse(build_parser(), argv, beam=False)
    config = EvaluateConfig(
        predictions=args.predictions.rstrip("/"), truth=args.truth.rstrip("/"), output=args.output,
        mask_values=args.mask_values, beta=args.beta, task=args.task, workers=args.workers,
        allow_incomplete=args.allow_incomplete, max_pixels=args.max_pixels, seam_band=args.seam_band,
        truth_instances=args.truth_instances,
        class_names=tuple(n.strip() for n in args.class_names.split(",") if n.strip()))
    try:
        for reads, flag in ((config.predictions, "--predictions"), (config.truth, "--truth")):
            if config.output:
                check_apart(reads, config.output, flag)
        report = evaluate(config)
    except ValueError as e:  # inconsistent inputs or flags: a message, not a traceback
        print(f"tessera evaluate: error: {e}", file=sys.stderr)
        return 2
    return 0 if report["counts"]["evaluated"] > 0 else 1


# ---------------------------------------------------------------- segmentation

@dataclasses.dataclass(frozen=True)
class PairTask:
    image_id: str
    truth_path: str
    prediction_path: str
    policy: MaskPolicy
    grid: tuple[int, int, int] | None = None   # (core, stride, band px) of the prediction run's tiles
    probabilities_path: str | None = None      # the image's class probabilities (.npy), when saved
    truth_instances: bool = False
    instances_path: str | None = None          # predicted instance labels (.tif, .ome.zarr): the predicted objects


def score_pair(task: PairTask) -> dict:
    """Confusion counts and the adapted-Rand contingency table of one image, or a rejection."""
    large = is_label_image(task.prediction_path)
    if not (label_image_exists(task.prediction_path) if large else exists(task.prediction_path)):
        return {"image_id": task.image_id, "status": "rejected", "source": task.prediction_path,
                "reason": "prediction_file_missing",
                "detail": f"{PREDICTIONS_FILE} lists {task.prediction_path}, which does not exist"}
    source = task.truth_path
    try:   # both sizes come from the headers, checked before either image is decoded
        limit = file_bytes_limit(task.policy.max_pixels)
        truth_data = read_input(source, limit)
        size = image_size(truth_data, source, task.policy)
        check_size(source, size, task.policy.max_pixels, None)
        source = task.prediction_path
        if large:
            pred = read_label_image(source, task.policy.num_classes, task.policy.max_pixels, size)
        else:
            pred = read_prediction(read_input(source, limit), source, task.policy.num_classes,
                                   task.policy.max_pixels, size)
        source = task.truth_path
        truth_ids = None
        if task.truth_instances:
            truth_ids = read_mask_values(truth_data, source, task.policy)
            truth = (truth_ids > 0).astype(np.uint8)
        else:
            truth = read_mask(truth_data, source, task.policy)
        del truth_data
    except RejectedInput as e:
        return {"image_id": task.image_id, "status": "rejected", "source": source,
                "reason": e.reason, "detail": e.detail}
    if truth.shape != pred.shape:   # (the headers agreed: not expected)
        return {"image_id": task.image_id, "status": "rejected", "source": source, "reason": "size_mismatch",
                "detail": f"truth {truth.shape} vs prediction {pred.shape}"}
    seams = None
    if task.grid is not None:
        core, stride, band = task.grid
        seams = scores.seam_errors(truth, pred, scores.seam_band(*truth.shape, core, stride, band))
    ignored = objects.ignored_of(truth)
    truth_ids = objects.objects_of(truth if truth_ids is None else truth_ids, ignored, truth_ids is not None)
    pred_ids, pred_objects = objects.objects_of(pred, ignored), "components"
    if task.instances_path and instances_exist(task.instances_path):
        try:
            instances = read_instance_labels(task.instances_path, task.policy.max_pixels, truth.shape)
        except RejectedInput as e:
            return {"image_id": task.image_id, "status": "rejected", "source": task.instances_path,
                    "reason": e.reason, "detail": e.detail}
        if instances.shape != truth.shape:
            return {"image_id": task.image_id, "status": "rejected", "source": task.instances_path,
                    "reason": "size_mismatch", "detail": f"truth {truth.shape} vs instances {instances.shape}"}
        pred_ids, pred_objects = objects.objects_of(instances, ignored, instances=True), "instances"
    vrand = (float("nan"), float("nan"))
    if task.probabilities_path and exists(task.probabilities_path):
        try:   # the header first: read only when it is this image's size
            probabilities = read_probabilities(task.probabilities_path, truth.shape)
        except RejectedInput as e:
            return {"image_id": task.image_id, "status": "rejected", "source": task.probabilities_path,
                    "reason": e.reason, "detail": e.detail}
        if probabilities is not None:
            vrand = objects.vrand_isbi(truth_ids, objects.foreground_of(probabilities), ignored)
    return {"image_id": task.image_id, "status": "evaluated", "seams": seams,
            "confusion": scores.confusion_matrix(truth, pred, task.policy.num_classes),
            "rand_table": scores.ids_table(truth_ids, pred_ids),
            "objects": objects.object_counts(truth_ids, pred_ids), "vrand_isbi": vrand, "pred_objects": pred_objects,
            "height": truth.shape[0], "width": truth.shape[1],
            "ignored_pixels": int(np.sum(truth == IGNORE_LABEL))}


def map_tasks(fn, tasks: list, workers: int) -> list:
    if workers == 1 or len(tasks) < 2:
        return [fn(t) for t in tasks]
    with concurrent.futures.ProcessPoolExecutor(max_workers=workers or None) as pool:
        return list(pool.map(fn, tasks, chunksize=max(1, len(tasks) // (8 * (workers or 4)))))


def flat_scores(confusion: np.ndarray, class_names: tuple[str, ...], beta: float) -> dict:
    row = scores.segmentation_summary(confusion, beta)
    per_class = scores.class_scores(confusion, beta)
    for i, name in enumerate(class_names):
        row.update({f"{metric}:{name}": float(per_class[metric][i]) for metric in scores.CLASS_METRICS})
    return row


def evaluate_segmentation(config: EvaluateConfig, class_names, truth, preds, bad, probabilities=None,
                          instances=None):
    k = len(class_names)
    policy = dataclasses.replace(parse_mask_values(config.mask_values, k), max_pixels=config.max_pixels)
    grid = tile_grid(config)
    probabilities, instances = probabilities or {}, instances or {}
    tasks = [PairTask(i, truth[i], preds[i], policy, grid, probabilities.get(i), config.truth_instances,
                      instances.get(i))
             for i in sorted(truth.keys() & preds.keys())]
    results = map_tasks(score_pair, tasks, config.workers)
    rows, tables, micro, seams = [], [], np.zeros((k, k), dtype=np.int64), np.zeros(4, np.int64)
    found = None
    for task, res in zip(tasks, results):
        row = {"image_id": task.image_id, "status": res["status"], "reason": res.get("reason"),
               "truth_path": task.truth_path, "prediction_path": task.prediction_path}
        if res["status"] == "rejected":
            bad.append(rejected_record(res["source"], res["reason"], res["detail"]))
        else:
            micro += res["confusion"]
            tables.append(res["rand_table"])
            found = objects.add_counts(found, res["objects"])
            if res["seams"] is not None:
                seams += res["seams"]
            row.update(height=res["height"], width=res["width"], ignored_pixels=res["ignored_pixels"],
                       labelled_pixels=int(res["confusion"].sum()), **flat_scores(res["confusion"], class_names, config.beta),
                       adapted_rand_error=scores.adapted_rand(res["rand_table"]), confusion=res["confusion"].tolist(),
                       **objects.object_summary(res["objects"]), **objects.information_variation(res["rand_table"]),
                       vrand_isbi=res["vrand_isbi"][0], vrand_isbi_threshold=res["vrand_isbi"][1],
                       pred_objects=res["pred_objects"])
        rows.append(row)
    done = [r for r in rows if r["status"] == "evaluated"]
    metric_names = (*scores.CLASS_METRICS, "pixel_error", "adapted_rand_error", *OBJECT_METRICS, "vi",
                    "vi_merge", "vi_split", "vrand_isbi")
    combined = scores.combined_table(tables)
    overall = {
        "micro": {**scores.segmentation_summary(micro, config.beta),
                  "adapted_rand_error": scores.adapted_rand(combined),
                  **{m: v for m, v in objects.object_summary(found).items() if m in OBJECT_METRICS},
                  **objects.information_variation(combined),
                  "vrand_isbi": _nanmean([r["vrand_isbi"] for r in done])},
        "per_image_mean": {m: _nanmean([r[m] for r in done]) for m in metric_names},
    }
    if grid is not None:
        overall["tile_seams"] = {
            "band_px": grid[2], "core": grid[0], "stride": grid[1],
            "error_near_seams": float(seams[0] / seams[1]) if seams[1] else float("nan"),
            "error_inside": float(seams[2] / seams[3]) if seams[3] else float("nan"),
            "pixels_near_seams": int(seams[1]), "pixels_inside": int(seams[3])}
    per_class = scores.class_scores(micro, config.beta)
    overall["per_class"] = {name: {**{m: float(per_class[m][i]) for m in scores.CLASS_METRICS},
                                   "support": int(per_class["support"][i])} for i, name in enumerate(class_names)}
    return rows, overall, micro


def tile_grid(config: EvaluateConfig) -> tuple[int, int, int] | None:
    """(core, stride, band) of the tiles the predictions were made from (their config.json),
    or None when that is not known or --seam-band is 0."""
    path = FileSystems.join(config.predictions, CONFIG_FILE)
    if not config.seam_band or not exists(path):
        return None
    geometry = json.loads(read_bytes(path)).get("geometry") or {}
    if not geometry.get("core") or not geometry.get("stride"):
        return None
    return int(geometry["core"]), int(geometry["stride"]), config.seam_band


def _nanmean(values) -> float:
    values = np.asarray(values, dtype=np.float64)
    return float(np.nanmean(values)) if np.any(~np.isnan(values)) else float("nan")


# ---------------------------------------------------------------- classification

def evaluate_classification(config: EvaluateConfig, table, class_names, truth, preds, bad):
    confidence = {}
    if "probabilities" in table.column_names:
        confidence = {i: (max(p) if p else None) for i, p in
                      zip(table["image_id"].to_pylist(), table["probabilities"].to_pylist())}
    matched = match_ids(truth.keys(), preds.keys())
    rows, pairs = [], []
    for pred_id, truth_id in sorted(matched.items()):
        row = {"image_id": pred_id, "truth_id": truth_id, "truth_label": truth[truth_id],
               "predicted_label": preds[pred_id], "confidence": confidence.get(pred_id)}
        if preds[pred_id] is None:
            bad.append(rejected_record(pred_id, "no_predicted_label", "the predictions row has no label"))
            rows.append({**row, "status": "rejected", "reason": "no_predicted_label"})
            continue
        pairs.append((row["truth_label"], row["predicted_label"]))
        rows.append({**row, "status": "evaluated", "correct": row["truth_label"] == row["predicted_label"]})
    if not class_names:
        class_names = tuple(sorted({x for pair in pairs for x in pair}))
    confusion = scores.label_confusion([t for t, _ in pairs], [p for _, p in pairs], list(class_names))
    summary = scores.classification_summary(confusion)
    overall = {"accuracy": summary["accuracy"], "macro_f1": summary["macro_f1"], "per_class": {
        name: {m: summary[m][i] for m in ("precision", "recall", "f1", "support")}
        for i, name in enumerate(class_names)}}
    missing_pred = sorted(set(truth) - set(matched.values()))
    missing_truth = sorted(set(preds) - set(matched))
    return rows, overall, confusion, class_names, missing_pred, missing_truth


# ---------------------------------------------------------------- the command

def evaluate(config: EvaluateConfig, out=None) -> dict:
    """Score, write the report files, print the table; returns the report dict."""
    if not config.allow_incomplete:
        check_complete(config.predictions)
    table = read_predictions_table(config.predictions)
    task = detect_task(config.task, config.truth, table)
    class_names = resolve_class_names(config.class_names, config.predictions, table)
    if task == CLASSIFICATION:
        if table is None or "label" not in table.column_names:
            raise ValueError(f"{config.predictions}: no {PREDICTIONS_FILE} with a label column")
        truth, bad = _require_truth(config.truth, *read_truth_labels(config.truth))
        preds = predicted_labels(table, class_names)
        rows, overall, confusion, class_names, missing_pred, missing_truth = evaluate_classification(
            config, table, class_names, truth, preds, bad)
    else:
        class_names = class_names or ("background", "foreground")
        truth, bad = _require_truth(config.truth, *list_files(config.truth))
        preds, pred_bad = prediction_mask_paths(config.predictions, table)
        bad += pred_bad
        missing_pred, missing_truth = sorted(truth.keys() - preds.keys()), sorted(preds.keys() - truth.keys())
        rows, overall, confusion = evaluate_segmentation(config, class_names, truth, preds, bad,
                                                         probability_paths(config.predictions, table),
                                                         instance_paths(config.predictions, table))
    if not any(r["status"] == "evaluated" for r in rows):
        overall = report_files.undefined(overall)  # nothing scored: no numbers, not the 1.0 of "both empty"
    rows += [{"image_id": i, "status": "missing_prediction"} for i in missing_pred]
    rows += [{"image_id": i, "status": "missing_truth"} for i in missing_truth]
    paths = report_files.output_paths(config.output)
    report = {
        "task": task, "class_names": list(class_names), "config": dataclasses.asdict(config),
        "counts": {"truth": len(truth), "predictions": len(preds),
                   "evaluated": sum(r["status"] == "evaluated" for r in rows),
                   "missing_predictions": len(missing_pred), "missing_truth": len(missing_truth),
                   "rejected": len(bad)},
        "overall": overall,
        "confusion_matrix": {"rows": "truth", "columns": "prediction", "counts": confusion.tolist()},
        "missing_predictions": missing_pred, "missing_truth": missing_truth, "rejected": bad,
        "files": paths, "conventions": "see pipelines/evaluate/scores.py (zero-division rule, foreground mean, Rand)",
    }
    report_files.write_outputs(report, rows, confusion, class_names, paths)
    report_files.print_report(report, out or sys.stdout)
    return report


def _require_truth(path: str, truth: dict, bad: list) -> tuple[dict, list]:
    if not truth and not bad:
        raise ValueError(f"--truth {path}: no truth found there")
    return truth, bad
