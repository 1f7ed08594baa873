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
import json
import sys

from trainer.config import build_parser as train_parser
from trainer.config import parse_config
from trainer.curves import learning_curves_png

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


def run(argv: list[str] | None = None) -> int:
    import tensorflow as tf

    from trainer.loop import train

    argv = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help") for a in argv):   # help never fails, whatever else is on the line
        build_parser().print_help()
        return 0
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
        handle.write(learning_curves_png(histories, monitor, COLOURS))
    print(f"\nvalidation ({output}/comparison.json, curves in {output}/learning_curves.png)")
    print(side_by_side(metrics))
    return 0


if __name__ == "__main__":
    sys.exit(run())
