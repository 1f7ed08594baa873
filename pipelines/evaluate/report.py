"""What ``tessera evaluate`` leaves behind: the report JSON, the per-image and confusion
Parquets, the confusion PNG, and the table it prints."""
from __future__ import annotations

import io
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipelines.beam.files import write_bytes
from pipelines.evaluate import scores
from pipelines.evaluate.confusion_plot import render_confusion_png
from schemas.example import SEGMENTATION


def output_paths(output: str) -> dict[str, str]:
    stem = output[:-5] if output.endswith(".json") else output
    return {"json": output, "parquet": stem + ".parquet",
            "confusion_parquet": stem + "_confusion.parquet", "confusion_png": stem + "_confusion.png"}


def write_outputs(report: dict, rows: list[dict], confusion: np.ndarray, class_names, paths) -> None:
    columns = list(dict.fromkeys(key for row in rows for key in row))
    write_parquet(paths["parquet"], pa.Table.from_pylist([{c: r.get(c) for c in columns} for r in rows]))
    k = len(class_names)
    write_parquet(paths["confusion_parquet"], pa.table({
        "truth": [class_names[i] for i in range(k) for _ in range(k)],
        "predicted": [class_names[j] for _ in range(k) for j in range(k)],
        "count": pa.array(confusion.ravel().tolist(), type=pa.int64())}))
    title = "pixels" if report["task"] == SEGMENTATION else "images"
    write_bytes(paths["confusion_png"], render_confusion_png(confusion, class_names, f"{title}: truth vs predicted"))
    write_bytes(paths["json"], json.dumps(_json_safe(report), indent=2).encode("utf-8"))


def write_parquet(path: str, table: pa.Table) -> None:
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    write_bytes(path, buffer.getvalue())


def undefined(value):
    """Every float score in ``value`` (nested dicts) replaced by NaN; counts stay."""
    if isinstance(value, dict):
        return {k: undefined(v) for k, v in value.items()}
    return float("nan") if isinstance(value, float) else value


def _json_safe(value):
    """NaN (an undefined score) becomes null; numpy scalars become Python numbers."""
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, (float, np.floating)):
        return None if np.isnan(value) else float(value)
    if isinstance(value, np.integer):
        return int(value)
    return value


# ---------------------------------------------------------------- the printed table

def print_report(report: dict, out) -> None:
    c = report["counts"]
    w = lambda line="": print(line, file=out)  # noqa: E731
    w(f"tessera evaluate ({report['task']}): {c['evaluated']} evaluated; truth {c['truth']}, "
      f"predictions {c['predictions']}, missing predictions {c['missing_predictions']}, "
      f"missing truth {c['missing_truth']}, rejected {c['rejected']}")
    overall = report["overall"]
    names = report["class_names"]
    width = max([12, *(len(n) + 2 for n in names)])
    if report["task"] == SEGMENTATION:
        w(f"\n{'metric':<20}{'overall':>10}{'per-image mean':>16}")
        for metric, value in overall["micro"].items():
            mean = overall["per_image_mean"][metric]
            if c["evaluated"] and _fmt(value) == _fmt(mean) == "n/a":
                continue   # undefined for every image (vrand_isbi without --save-probabilities): not a row of n/a
            w(f"{metric:<20}{_fmt(value):>10}{_fmt(mean):>16}")
        cols = (*scores.CLASS_METRICS, "support")
    else:
        w(f"\naccuracy {_fmt(overall['accuracy'])}   macro-F1 {_fmt(overall['macro_f1'])}")
        cols = ("precision", "recall", "f1", "support")
    w("\n" + f"{'class':<{width}}" + "".join(f"{col:>11}" for col in cols))
    for name, values in overall["per_class"].items():
        w(f"{name:<{width}}" + "".join(f"{_fmt(values[col]):>11}" for col in cols))
    w("\nconfusion matrix (rows truth, columns predicted):")
    w(" " * width + "".join(f"{n[:10]:>11}" for n in names))
    for name, row in zip(names, report["confusion_matrix"]["counts"]):
        w(f"{name:<{width}}" + "".join(f"{v:>11}" for v in row))
    for key in ("missing_predictions", "missing_truth"):
        if report[key]:
            more = f" (+{len(report[key]) - 10} more)" if len(report[key]) > 10 else ""
            w(f"\n{key.replace('_', ' ')}: {', '.join(report[key][:10])}{more}")
    for item in report["rejected"][:10]:
        w(f"rejected {item['source']}: {item['reason']} ({item['detail']})")
    w(f"\nreport: {report['files']['json']}  rows: {report['files']['parquet']}  "
      f"confusion plot: {report['files']['confusion_png']}")


def _fmt(value) -> str:
    if isinstance(value, (int, np.integer)):
        return str(value)
    return "n/a" if value is None or np.isnan(value) else f"{value:.4f}"
