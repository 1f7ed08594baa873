"""``tessera <command> [flags]``: one entry point, each command a job module's ``run(argv)``.

Commands are imported lazily so ``tessera --help`` does not load TensorFlow or Beam;
TensorFlow's start-up banners are kept off the terminal unless ``--verbose``.
"""
from __future__ import annotations

import importlib
import os
import sys

from pipelines.beam import quiet

# command -> (module, one-line help). Each module has build_parser() and run(argv).
COMMANDS: dict[str, tuple[str, str]] = {
    "preprocess": ("pipelines.preprocess.job", "raw image folders -> tiled, augmented, sharded TFDS dataset (Beam)"),
    "inspect": ("pipelines.preprocess.inspect", "render a PNG contact sheet of a dataset's tiles"),
    "train": ("trainer.task", "train a segmentation or classification model"),
    "predict": ("pipelines.predict.job", "batch prediction over images (Beam RunInference)"),
    "evaluate": ("pipelines.evaluate.job", "score predictions against ground truth"),
    "compare": ("trainer.compare", "train with and without static augmentation and compare"),
    "demo": ("tessera.demo", "run the whole flow on a generated dataset"),
}


def job_module(command: str):
    return importlib.import_module(COMMANDS[command][0])


def usage() -> str:
    lines = ["usage: tessera [--version] [--verbose] <command> [flags]   (tessera <command> --help for its flags)",
             "", "commands:"]
    lines += [f"  {name:<11} {help_}" for name, (_, help_) in COMMANDS.items()]
    return "\n".join(lines)


# Commands whose process imports TensorFlow (quietly, before the job starts).
USES_TENSORFLOW = {"preprocess", "inspect", "train", "predict", "compare", "demo"}


def version() -> str:
    from importlib import metadata

    try:
        return metadata.version("tessera")
    except metadata.PackageNotFoundError:
        return "unknown"


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "--version":
        print(f"tessera {version()}")
        return 0
    if argv and argv[0] == "--verbose":   # TensorFlow's and Beam's own start-up output too
        os.environ[quiet.VERBOSE_ENV] = "1"
        argv = argv[1:]
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"tessera: unknown command {command!r}\n\n{usage()}", file=sys.stderr)
        return 2
    quiet.quiet_beam()
    if command in USES_TENSORFLOW:
        quiet.tensorflow()
    result = job_module(command).run(rest)
    return result if isinstance(result, int) else 0


if __name__ == "__main__":
    sys.exit(main())
