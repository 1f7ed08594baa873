"""Instance quality with the defaults: objects out of `tessera predict`, scored by `tessera evaluate`.

Two datasets, each trained once within one CPU time budget with `tessera train`'s defaults
(the flags below are only the datasets' own: grayscale inputs, instance masks), then
predicted and scored on held-out images:

    isbi    the ISBI 2012 EM slices in ../shared/data/isbi2012-em: train 0-16, val 17-19
            (best checkpoint, decoder calibration), score 20-24; cells are the components of
            the truth's cell class (membranes between them). Target: adapted Rand <= 0.05.
    nuclei  generated touching nuclei (tessera/nuclei.py, instance masks): 40 training and
            8 validation images of 256^2, 12 test images; truth objects are the instance ids.
            Target: object F1 at IoU 0.5 >= 0.90.

Printed side by side: adapted Rand error, object F1 at IoU 0.5 and over 0.5:0.95, panoptic
quality, VI, pixel error and the training's epochs.

    python bench/bench_instances.py                      # 30 min per training, ~65 min on 2 cores
    python bench/bench_instances.py --budget 2m --only nuclei    # a quick check of the flow
    python bench/bench_instances.py --only nuclei --distance-map  # preprocess --distance-map: the
                                                                  # model trains a distance head too
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
from bench.bench_quality import tessera  # noqa: E402  (each command in a fresh process, timed)

ISBI = os.path.join(os.path.dirname(REPO), "shared", "data", "isbi2012-em")
METRICS = (("adapted_rand_error", "adapted Rand"), ("object_f1", "object F1"), ("object_f1_50_95", "F1 .5:.95"),
           ("object_pq", "PQ"), ("vi", "VI (bits)"), ("pixel_error", "pixel error"))
# The datasets' own flags (what a user states about their data), nothing of the recipe.
DATASETS = {
    "isbi": {"preprocess": ("--color-mode", "grayscale"), "evaluate": ()},
    "nuclei": {"preprocess": ("--color-mode", "grayscale", "--mask-values", "instances"),
               "evaluate": ("--mask-values", "instances", "--truth-instances")},
}


def lay_out_isbi(work: str) -> None:
    """raw/{images,masks}/{train,val}/ for preprocess, test/{images,masks}/ for predict and evaluate."""
    for kind in ("images", "masks"):
        for split, slices in (("train", range(0, 17)), ("val", range(17, 20))):
            os.makedirs(f"{work}/raw/{kind}/{split}")
            for i in slices:
                shutil.copy(f"{ISBI}/{kind}/slice_{i:02d}.png", f"{work}/raw/{kind}/{split}/")
        os.makedirs(f"{work}/test/{kind}")
        for i in range(20, 25):
            shutil.copy(f"{ISBI}/{kind}/slice_{i:02d}.png", f"{work}/test/{kind}/")


def lay_out_nuclei(work: str) -> None:
    from tessera.nuclei import write_nuclei_folder

    write_nuclei_folder(f"{work}/raw-all/train", count=40, seed=1, prefix="train")
    write_nuclei_folder(f"{work}/raw-all/val", count=8, seed=2, prefix="val")
    write_nuclei_folder(f"{work}/test", count=12, seed=3, prefix="test")
    for kind in ("images", "masks"):
        for split in ("train", "val"):
            shutil.copytree(f"{work}/raw-all/{split}/{kind}", f"{work}/raw/{kind}/{split}")
    shutil.rmtree(f"{work}/raw-all")


def run(name: str, work: str, budget: str, preprocess_extra: tuple[str, ...] = ()) -> dict:
    flags = DATASETS[name]
    if not os.path.isdir(f"{work}/raw"):
        (lay_out_isbi if name == "isbi" else lay_out_nuclei)(work)
    if not os.path.isdir(f"{work}/ds/current"):
        tessera("preprocess", "--input", f"{work}/raw", "--output", f"{work}/ds", *flags["preprocess"],
                *preprocess_extra)
    tessera("train", "--data", f"{work}/ds", "--model-dir", f"{work}/model", "--time-budget", budget,
            "--epochs", "100000", "--verbose", "0")
    shutil.rmtree(f"{work}/pred", ignore_errors=True)
    tessera("predict", "--model-dir", f"{work}/model", "--input", f"{work}/test/images", "--output", f"{work}/pred")
    tessera("evaluate", "--predictions", f"{work}/pred", "--truth", f"{work}/test/masks", "--output",
            f"{work}/report.json", *flags["evaluate"])
    scores = json.load(open(f"{work}/report.json"))["overall"]["micro"]
    card = json.load(open(f"{work}/model/current/model_card.json"))
    history = open(f"{work}/model/history.csv").read().strip().splitlines()
    scores.update(epochs=len(history) - 1, decoder=card.get("decoder", {}), heads=sorted(card.get("heads", {})),
                  best_epoch=int(card["metrics"].get("best_epoch", -1)))
    return scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--budget", default="30m", help="time per training (tessera train --time-budget)")
    parser.add_argument("--only", choices=tuple(DATASETS), action="append", help="run only this dataset")
    parser.add_argument("--work", default="", help="work here (default: a temporary folder); a rerun reuses "
                        "its datasets and resumes its trainings")
    parser.add_argument("--distance-map", action="store_true", help="preprocess --distance-map: the datasets "
                        "store distance maps, so training adds its distance head (--distance-head auto)")
    args = parser.parse_args()
    work = args.work or tempfile.mkdtemp(prefix="tessera-instances-")
    names = args.only or list(DATASETS)
    if "isbi" in names and not os.path.isdir(f"{ISBI}/images"):
        raise SystemExit(f"no ISBI slices in {ISBI} (expected images/ and masks/)")
    print(f"instance benchmark, {args.budget} per training{', distance maps' if args.distance_map else ''}, "
          f"work in {work}", flush=True)
    results = {}
    for name in names:
        print(name, flush=True)
        results[name] = run(name, f"{work}/{name}", args.budget, ("--distance-map",) if args.distance_map else ())
    print(f"\n{'dataset':10s}{'epochs':>7s}{'best':>5s}" + "".join(f"{label:>14s}" for _, label in METRICS))
    for name, scores in results.items():
        print(f"{name:10s}{scores['epochs']:>7d}{scores['best_epoch']:>5d}"
              + "".join(f"{scores.get(key, float('nan')):>14.4f}" for key, _ in METRICS))
        print(f"{'':10s}decoder: {json.dumps(scores['decoder'], sort_keys=True)}")
    with open(f"{work}/instances.json", "w") as handle:
        json.dump(results, handle, indent=2)
    print(f"\n{work}/instances.json")


if __name__ == "__main__":
    main()
