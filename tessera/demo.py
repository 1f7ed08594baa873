"""``tessera demo``: the whole flow on a dataset it generates itself.

generate -> preprocess -> inspect -> train -> predict -> evaluate, each step the same
command a user would type, with small settings so it finishes in a few minutes on a
laptop CPU. Everything lands under ``--workdir`` (default ``./tessera-demo``)::

    tessera demo                              # segmentation
    tessera demo --task classification
"""
from __future__ import annotations

import argparse
import json
import pathlib
import shutil
import sys
import time

from schemas import cli
from tessera import synthetic


def build_parser() -> argparse.ArgumentParser:
    p = cli.ArgumentParser(prog="tessera demo", allow_abbrev=False, description=__doc__.split("\n")[0])
    p.add_argument("--workdir", default="tessera-demo", help="where every output goes (replaced)")
    p.add_argument("--task", choices=["segmentation", "classification"], default="segmentation")
    p.add_argument("--epochs", type=int, default=0, help="training epochs (0: the task's default)")
    p.add_argument("--quick", action="store_true", help="tiny settings (used by the tests)")
    return p


def step(title: str, command: list[str]) -> None:
    from tessera.cli import main

    print(f"\n== {title}\n$ tessera {' '.join(command)}", flush=True)
    started = time.monotonic()
    code = main(command)
    if code:
        raise SystemExit(f"tessera demo: step {title!r} failed with exit code {code}")
    print(f"   ({time.monotonic() - started:.1f} s)", flush=True)


def segmentation(work: pathlib.Path, epochs: int, quick: bool) -> dict:
    raw, new = work / "raw", work / "new-images"
    synthetic.write_segmentation_folder(raw, count=12 if quick else 40, size=(96, 128), seed=0)
    synthetic.write_segmentation_folder(new, count=3 if quick else 8, size=(150, 190), seed=1)
    step("preprocess", ["preprocess", "--input", str(raw), "--output", str(work / "dataset"),
                        "--tile-size", "48", "--margin", "8", "--augment-copies", "1" if quick else "2",
                        "--mask-values", "binary"])
    step("inspect", ["inspect", str(work / "dataset"), "--output", str(work / "tiles.png")])
    step("train", ["train", "--data", str(work / "dataset"), "--model-dir", str(work / "model"),
                   "--model", "unet", "--loss", "ce+dice", "--epochs", str(epochs or (6 if quick else 12)),
                   "--batch-size", "8"])
    step("predict", ["predict", "--model-dir", str(work / "model"), "--input", str(new / "images"),
                     "--output", str(work / "predictions"), "--tta", "flips"])
    step("evaluate", ["evaluate", "--predictions", str(work / "predictions"), "--truth", str(new / "masks"),
                      "--output", str(work / "report.json"), "--mask-values", "binary"])
    return {"dataset": work / "dataset", "contact sheet": work / "tiles.png", "model": work / "model",
            "predictions (masks, overlays)": work / "predictions", "report": work / "report.json"}


def classification(work: pathlib.Path, epochs: int, quick: bool) -> dict:
    raw, new = work / "raw", work / "new-images"
    synthetic.write_classification_folder(raw, per_class=12 if quick else 30, seed=0)
    synthetic.write_classification_folder(new, per_class=3 if quick else 8, seed=1)
    step("preprocess", ["preprocess", "--layout", "classification", "--input", str(raw),
                        "--output", str(work / "dataset"), "--image-size", "64", "--augment-copies", "2"])
    step("inspect", ["inspect", str(work / "dataset"), "--output", str(work / "tiles.png")])
    step("train", ["train", "--data", str(work / "dataset"), "--model-dir", str(work / "model"),
                   "--model", "small-cnn", "--epochs", str(epochs or (3 if quick else 15)), "--batch-size", "16"])
    step("predict", ["predict", "--model-dir", str(work / "model"), "--input", str(new),
                     "--output", str(work / "predictions"), "--tta", "flips"])
    step("evaluate", ["evaluate", "--predictions", str(work / "predictions"), "--truth", str(new),
                      "--output", str(work / "report.json")])
    return {"dataset": work / "dataset", "contact sheet": work / "tiles.png", "model": work / "model",
            "predictions": work / "predictions", "report (+ confusion matrix PNG)": work / "report.json"}


def run(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    work = pathlib.Path(args.workdir).resolve()
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    print(f"tessera demo ({args.task}) in {work}")
    flow = segmentation if args.task == "segmentation" else classification
    outputs = flow(work, args.epochs, args.quick)
    print("\n== done. Where things are:")
    for what, path in outputs.items():
        print(f"  {what:<32} {path}")
    card = json.loads((work / "model" / "current" / "model_card.json").read_text())
    report = json.loads((work / "report.json").read_text())
    headline = "dice" if args.task == "segmentation" else "accuracy"
    print(f"  validation {headline} (model card): {card['metrics'].get(headline, float('nan')):.4f}")
    overall = report["overall"].get("micro", report["overall"])
    shown = {k: v for k, v in overall.items() if isinstance(v, (int, float))}
    print("  on the new images: " + ", ".join(f"{k} {v:.4f}" for k, v in shown.items()))
    return 0


if __name__ == "__main__":
    sys.exit(run())
