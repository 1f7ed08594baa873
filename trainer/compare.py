"""``tessera compare``: the same network trained with and without the static augmentation
copies of one dataset, compared on the same validation split.

    tessera preprocess --layout classification --input photos/ --output ds --augment-copies 4
    tessera compare --data ds --output cmp --model transfer --freeze-epochs 3 --epochs 12

Both runs read the same dataset, so the splits are identical by construction: the run
"without" leaves out every example whose ``copy`` is not 0. Every ``tessera train`` flag
applies to both runs. Writes ``OUTPUT/with-static-augmentation/`` and
``OUTPUT/without-static-augmentation/`` (two complete model directories),
``OUTPUT/comparison.json`` and ``OUTPUT/learning_curves.png``, and prints both
validation reports side by side. Rerunning resumes either run where it stopped.
"""
from __future__ import annotations

import argparse
import io
import json
import sys

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from trainer.config import build_parser as train_parser, parse_config

RUNS = {"with-static-augmentation": True, "without-static-augmentation": False}
COLOURS = {"with-static-augmentation": (31, 82, 160), "without-static-augmentation": (230, 120, 20)}


def build_parser() -> argparse.ArgumentParser:
    parser = train_parser()
    parser.prog = "tessera compare"
    parser.description = __doc__.split("\n\n")[0]
    parser.add_argument("--output", required=True, help="directory for both runs and the comparison")
    return parser


def side_by_side(metrics: dict[str, dict[str, float]]) -> str:
    """A text table: one row per metric, one column per run, and their difference."""
    names = list(metrics)
    keys = [k for k in metrics[names[0]] if k in metrics[names[1]]]
    lines = [f"{'metric':<12}" + "".join(f"{n:>30}" for n in names) + f"{'difference':>14}"]
    for key in keys:
        a, b = metrics[names[0]][key], metrics[names[1]][key]
        lines.append(f"{key:<12}{a:>30.4f}{b:>30.4f}{a - b:>+14.4f}")
    return "\n".join(lines)


def _panel(draw, box, title: str, series: dict[str, list[float]], font) -> None:
    left, top, right, bottom = box
    draw.rectangle(box, outline=(0, 0, 0))
    draw.text((left, top - 18), title, fill=(0, 0, 0), font=font)
    values = [v for ys in series.values() for v in ys if np.isfinite(v)]
    if not values:
        return
    low, high = min(values), max(values)
    high = high if high > low else low + 1.0
    epochs = max(len(ys) for ys in series.values())
    draw.text((left - 46, top), f"{high:.3g}", fill=(0, 0, 0), font=font)
    draw.text((left - 46, bottom - 12), f"{low:.3g}", fill=(0, 0, 0), font=font)
    draw.text((right - 60, bottom + 4), f"epoch {epochs}", fill=(0, 0, 0), font=font)
    for name, ys in series.items():
        points = [(left + (right - left) * (i / max(1, epochs - 1)), bottom - (bottom - top) * (y - low) / (high - low))
                  for i, y in enumerate(ys) if np.isfinite(y)]
        if len(points) > 1:
            draw.line(points, fill=COLOURS[name], width=2)
        for x, y in points:
            draw.ellipse((x - 3, y - 3, x + 3, y + 3), fill=COLOURS[name])


def learning_curves_png(histories: dict[str, list[dict]], monitor: str) -> bytes:
    """Two panels (training loss, the monitored validation metric) per epoch, one line per run."""
    font = ImageFont.load_default(size=12)
    image = Image.new("RGB", (900, 380), "white")
    draw = ImageDraw.Draw(image)
    for i, key in enumerate(("loss", monitor)):
        series = {name: [float(row.get(key, np.nan)) for row in rows] for name, rows in histories.items()}
        title = "training loss" if key == "loss" else key
        _panel(draw, (70 + i * 440, 40, 70 + i * 440 + 360, 320), title, series, font)
    for i, name in enumerate(histories):
        draw.rectangle((70 + i * 300, 350, 82 + i * 300, 362), fill=COLOURS[name])
        draw.text((88 + i * 300, 349), name, fill=(0, 0, 0), font=font)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def run(argv: list[str] | None = None) -> int:
    import tensorflow as tf

    from trainer.loop import train

    argv = list(sys.argv[1:] if argv is None else argv)
    splitter = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    splitter.add_argument("--output")
    known, rest = splitter.parse_known_args(argv)
    if not known.output or any(a.startswith("--model-dir") for a in rest):
        build_parser().print_usage(sys.stderr)
        print("tessera compare: --output is required (and replaces --model-dir)", file=sys.stderr)
        return 2
    output = known.output.rstrip("/")
    results, metrics = {}, {}
    for name, static in RUNS.items():
        flag = "--static-copies" if static else "--no-static-copies"
        try:   # each run keeps its own directories: AIP_* output variables do not apply here
            cfg = parse_config(rest + ["--model-dir", f"{output}/{name}", flag], env={})
        except ValueError as error:
            print(f"tessera compare: {error}", file=sys.stderr)
            return 2
        print(f"\n== {name}", flush=True)
        results[name] = train(cfg)
        metrics[name] = results[name].card.metrics
    monitor = results[name].card.config["monitor"]
    histories = {name: result.history for name, result in results.items()}
    with tf.io.gfile.GFile(f"{output}/comparison.json", "w") as handle:
        handle.write(json.dumps({"monitor": monitor, "validation": metrics, "history": histories}, indent=2))
    with tf.io.gfile.GFile(f"{output}/learning_curves.png", "wb") as handle:
        handle.write(learning_curves_png(histories, monitor))
    print(f"\nvalidation ({output}/comparison.json, curves in {output}/learning_curves.png)")
    print(side_by_side(metrics))
    return 0


if __name__ == "__main__":
    sys.exit(run())
