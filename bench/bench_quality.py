"""Quality benchmark on real EM data: the ISBI 2012 slices in ../shared/data/isbi2012-em.

Trains on slices 0-16 (validation 17-19: the best checkpoint and the calibration) and scores
slices 20-24, each training within the same CPU time budget, for these configurations, each
adding one thing to the one before:

    A  today's defaults (float32; the threshold of max F1 on val)
    B  + the threshold calibrated for rand on val      (A's model, its card's threshold)
    C  + the U-Net border weight map (preprocess --weight-map unet; a new training)
    D  + bf16 (--mixed-precision auto: mixed_bfloat16 on a CPU with AVX512-BF16/AMX; more
         epochs in the same time)
    E  + dihedral test-time augmentation (D's model)
    F  + watershed instances (D's model, E's predictions split)
    G  D with the best checkpoint by val_loss instead of val_dice (--monitor val_loss), with
       dihedral TTA

Printed side by side: pixel error, adapted Rand error, V_rand (ISBI protocol, from the
probabilities), object F1 at IoU 0.5 and VI, with the epochs each training got.

    python bench/bench_quality.py                    # 25 min per training, ~80 min on 2 cores
    python bench/bench_quality.py --budget 2m        # a quick check of the whole flow
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.path.join(os.path.dirname(REPO), "shared", "data", "isbi2012-em")
TRAIN, VAL, TEST = range(0, 17), range(17, 20), range(20, 25)
METRICS = (("pixel_error", "pixel error"), ("adapted_rand_error", "adapted Rand"), ("vrand_isbi", "V_rand"),
           ("object_f1", "object F1"), ("vi", "VI (bits)"))


def tessera(*argv: str) -> None:
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "tessera.cli", *argv], cwd=REPO, capture_output=True, text=True)
    if result.returncode:
        raise SystemExit(f"tessera {argv[0]} failed ({result.returncode}):\n{result.stdout[-3000:]}\n"
                         f"{result.stderr[-3000:]}")
    print(f"  tessera {argv[0]}: {time.monotonic() - started:.0f} s", flush=True)


def lay_out(data: str, work: str) -> None:
    """raw/{images,masks}/{train,val}/ for preprocess, test/{images,masks}/ for predict and evaluate."""
    for kind in ("images", "masks"):
        for split, slices in (("train", TRAIN), ("val", VAL)):
            os.makedirs(f"{work}/raw/{kind}/{split}")
            for i in slices:
                shutil.copy(f"{data}/{kind}/slice_{i:02d}.png", f"{work}/raw/{kind}/{split}/")
        os.makedirs(f"{work}/test/{kind}")
        for i in TEST:
            shutil.copy(f"{data}/{kind}/slice_{i:02d}.png", f"{work}/test/{kind}/")


def train(work: str, name: str, dataset: str, budget: str, precision: str, re_export: bool, *extra: str) -> dict:
    model = f"{work}/{name}"
    tessera("train", "--data", f"{work}/{dataset}", "--model-dir", model, "--time-budget", budget,
            "--epochs", "100000", "--mixed-precision", precision, "--calibrate", "rand", "--verbose", "0", *extra)
    if re_export:
        export_again(model)
    card = json.load(open(f"{model}/current/model_card.json"))
    history = open(f"{model}/history.csv").read().strip().splitlines()
    return {"model": model, "card": card, "epochs": len(history) - 1}


def export_again(model_dir: str) -> None:
    """Exports a finished training's best checkpoint again with the code as it is now."""
    code = ("import sys, tensorflow as tf; from trainer import export; from trainer.config import from_dict; "
            "from trainer.data import open_dataset, with_weight_map; from trainer.steps import loss_spec_for; "
            "card = export.load_card(sys.argv[1]); cfg = from_dict(card.config); "
            "info = with_weight_map(open_dataset(cfg.data), cfg.loss.weight_map); "
            "export.export(cfg, info, tf.train.latest_checkpoint(cfg.checkpoint_dir), loss_spec_for(cfg, info), "
            "{'best_epoch': card.metrics['best_epoch']})")
    subprocess.run([sys.executable, "-c", code, model_dir], cwd=REPO, check=True, capture_output=True)


def predict_and_score(work: str, name: str, model: str, *flags: str) -> dict:
    out = f"{work}/pred-{name}"
    tessera("predict", "--model-dir", model, "--input", f"{work}/test/images", "--output", out,
            "--save-probabilities", *flags)
    report = f"{work}/report-{name}.json"
    tessera("evaluate", "--predictions", out, "--truth", f"{work}/test/masks", "--output", report)
    return json.load(open(report))["overall"]["micro"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default=DATA)
    parser.add_argument("--budget", default="25m", help="CPU time per training (tessera train --time-budget)")
    parser.add_argument("--work", default="", help="work here (default: a temporary folder); a rerun on the same "
                        "folder reuses its datasets and resumes its trainings (done ones export at once)")
    parser.add_argument("--re-export", action="store_true",
                        help="export the trainings found in --work again with this code (calibration changes)")
    args = parser.parse_args()
    if not os.path.isdir(f"{args.data}/images"):
        raise SystemExit(f"no ISBI slices in {args.data} (expected images/ and masks/)")
    work = args.work or tempfile.mkdtemp(prefix="tessera-quality-")
    print(f"ISBI 2012 quality benchmark, {args.budget} per training, work in {work}", flush=True)
    if not os.path.isdir(f"{work}/raw"):
        lay_out(args.data, work)
    common = ("--input", f"{work}/raw", "--color-mode", "grayscale")
    for name, extra in (("ds", ()), ("ds-weights", ("--weight-map", "unet"))):
        if not os.path.isdir(f"{work}/{name}/current"):
            tessera("preprocess", *common, "--output", f"{work}/{name}", *extra)
    a = train(work, "model-a", "ds", args.budget, "off", args.re_export)
    c = train(work, "model-c", "ds-weights", args.budget, "off", args.re_export)
    d = train(work, "model-d", "ds-weights", args.budget, "auto", args.re_export)
    g = train(work, "model-d2", "ds-weights", args.budget, "auto", args.re_export, "--monitor", "val_loss")
    runs = {
        "A defaults": (a, ("--threshold", str(a["card"]["calibration"]["pixel_threshold"]))),
        "B + calibrated for rand": (a, ()),
        "C + weight map": (c, ()),
        "D + bf16": (d, ()),
        "E + dihedral TTA": (d, ("--tta", "dihedral")),
        "F + watershed": (d, ("--tta", "dihedral", "--instances", "watershed")),
        "G D, val_loss ckpt, TTA": (g, ("--tta", "dihedral")),
    }
    results = {}
    for name, (trained, flags) in runs.items():
        results[name] = predict_and_score(work, name[0], trained["model"], *flags)
        threshold = dict(zip(flags[::2], flags[1::2])).get("--threshold", trained["card"]["threshold"])
        results[name].update(epochs=trained["epochs"], threshold=float(threshold),
                             best_epoch=int(trained["card"]["metrics"]["best_epoch"]),
                             precision=trained["card"]["config"]["mixed_precision"])
    print(f"\nslices 20-24 of ISBI 2012, trained on 0-16 (val 17-19), {args.budget} per training")
    print(f"{'configuration':26s}{'epochs':>7s}{'best':>5s}{'thr':>6s}" + "".join(f"{label:>14s}" for _, label in METRICS))
    for name, scores in results.items():
        print(f"{name:26s}{scores['epochs']:>7d}{scores['best_epoch']:>5d}{scores['threshold']:>6.2f}"
              + "".join(f"{scores[key]:>14.4f}" for key, _ in METRICS))
    with open(f"{work}/quality.json", "w") as handle:
        json.dump(results, handle, indent=2)
    print(f"\n{work}/quality.json")


if __name__ == "__main__":
    main()
