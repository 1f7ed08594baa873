"""``tessera <command> [flags]``: one entry point, each command a job module's ``run(argv)``.

Commands are imported lazily so ``tessera --help`` does not load TensorFlow or Beam;
TensorFlow's start-up banners are kept off the terminal unless ``--verbose`` (before or after
the command). A misspelt command or flag is one line with the closest name (schemas/cli.py).
"""
from __future__ import annotations

import importlib
import os
import sys

from pipelines.beam import quiet
from schemas import cli

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
             "       --verbose (before or after the command): TensorFlow's and Beam's start-up output too",
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


TOP_LEVEL_FLAGS = ("--version", "--verbose", "--help", "-h")
# Commands whose own --verbose N is the training progress level (--progress N).
PROGRESS_LEVEL = {"train", "compare"}


def fail(message: str, prog: str = "tessera") -> int:
    print(f"{prog}: {message}\nsee {prog} --help", file=sys.stderr)
    return cli.USAGE_ERROR


def take_verbose(command: str, flags: list[str]) -> tuple[bool, list[str]]:
    """(whether the command's flags hold a bare ``--verbose``, the flags without it):
    ``tessera train --verbose ...`` is ``tessera --verbose train ...``. For train and compare,
    ``--verbose N`` (a number follows) is their progress level and stays."""
    kept, found = [], False
    for i, token in enumerate(flags):
        if token == "--":
            return found, kept + flags[i:]
        level_follows = i + 1 < len(flags) and flags[i + 1].isdigit()
        if token == "--verbose" and not (command in PROGRESS_LEVEL and level_follows):
            found = True
        else:
            kept.append(token)
    return found, kept


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    verbose = False
    while argv and argv[0].startswith("-"):
        flag = argv.pop(0)
        if flag == "--version":
            print(f"tessera {version()}")
            return 0
        if flag in ("-h", "--help"):
            print(usage())
            return 0
        if flag != "--verbose":
            return fail(cli.unknown_message([flag.split("=", 1)[0]], [], TOP_LEVEL_FLAGS))
        verbose = True
    if not argv:
        print(usage())
        return cli.USAGE_ERROR
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        hint = cli.closest(command, COMMANDS)
        return fail(f"unknown command {command!r} " + (f"(did you mean {hint}?)" if hint else
                                                        f"(the commands: {', '.join(COMMANDS)})"))
    found, rest = take_verbose(command, rest)
    if verbose or found:   # TensorFlow's and Beam's own start-up output too
        os.environ[quiet.VERBOSE_ENV] = "1"
    quiet.quiet_beam()
    if command in USES_TENSORFLOW:
        quiet.tensorflow()
    result = job_module(command).run(rest)
    return result if isinstance(result, int) else 0


if __name__ == "__main__":
    sys.exit(main())
