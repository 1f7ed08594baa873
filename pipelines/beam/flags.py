"""Command lines of the jobs: our flags, ``--config FILE``, and Beam's own flags, nothing else.

``--config FILE`` (JSON or YAML, local or any FileSystems scheme) holds flag values by
name (``tile_size`` or ``tile-size``; Beam's flags as a list under ``beam``); flags on the
command line override it. A key that names no flag is an error, as a misspelt flag is. Everything our parser does not know must be a flag of one of
Beam's registered option classes (runner, Dataflow, Flink, DirectRunner, ...): a misspelt
flag is an error (exit 2) instead of a warning in a log that nobody reads.
"""
from __future__ import annotations

import argparse
import logging
import sys

import yaml
from apache_beam.options.pipeline_options import PipelineOptions

from pipelines.beam.files import read_bytes
from schemas import cli

CONFIG_FLAG = "--config"


def _split_config(argv: list[str]) -> tuple[str | None, list[str]]:
    pre = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    pre.add_argument(CONFIG_FLAG, dest="config_file")
    known, rest = pre.parse_known_args(argv)
    return known.config_file, rest


def load_config(path: str) -> dict:
    """Flag values from a JSON or YAML file (JSON is YAML)."""
    try:
        values = yaml.safe_load(read_bytes(path).decode("utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise ValueError(f"{CONFIG_FLAG} {path}: cannot read it as JSON or YAML ({type(e).__name__}: {e})") from e
    if not isinstance(values, dict):
        raise ValueError(f"{CONFIG_FLAG} {path}: expected a mapping of flag names to values")
    return values


def config_argv(values: dict) -> list[str]:
    """Flag tokens for ``values``: ``{"tile_size": 24, "overwrite": true, "model_dir": [a, b]}``
    -> ``--tile-size 24 --overwrite --model-dir a --model-dir b``; ``"beam": [...]`` holds
    Beam's own flags as written on a command line. Placed before the command line's own
    flags, which therefore win (a repeatable flag such as --model-dir adds up instead)."""
    tokens: list[str] = []
    for key, value in values.items():
        if key == "beam":
            tokens += [str(v) for v in (value if isinstance(value, list) else [value])]
            continue
        flag = "--" + str(key).lstrip("-").replace("_", "-")
        if value is True:
            tokens.append(flag)
        elif value is False or value is None:
            continue
        else:
            for item in value if isinstance(value, list) else [value]:
                tokens += [flag, str(item)]
    return tokens


def _key(name) -> str:
    return str(name).lstrip("-").replace("-", "_")


def check_config_keys(values: dict, path: str, ours: list[str], beams: list[str]) -> None:
    """A key of ``--config FILE`` that names none of our flags nor Beam's is an error naming it as
    written there, with the closest key (ours first)."""
    known = {_key(f) for f in [*ours, *beams]}
    bad = [str(k) for k in values if k != "beam" and _key(k) not in known]
    if bad:
        keys = [[_key(f) for f in ours], [_key(f) for f in beams]]
        described = [f"{k} (did you mean {hint}?)" if (hint := cli.closest_flag(k, *keys)) else k for k in bad]
        raise ValueError(f"{CONFIG_FLAG} {path}: unknown key{'s' if len(bad) > 1 else ''} {', '.join(described)}")


def our_flags(parser: argparse.ArgumentParser) -> list[str]:
    return cli.flag_names(parser)


def beam_flags(args: list[str]) -> tuple[list[str], list[str]]:
    """(the flags in ``args`` that no registered Beam option class knows, as typed; every flag
    Beam knows, for suggestions)."""
    options = PipelineOptions(args)
    logger = logging.getLogger("apache_beam.options.pipeline_options")
    level = logger.level
    logger.setLevel(logging.ERROR)  # we report the unknown flags ourselves
    try:
        known = set(options.get_all_options(retain_unknown_options=False))
        everything = set(options.get_all_options(retain_unknown_options=True))
    finally:
        logger.setLevel(level)
    unknown_dests = {dest.split("=", 1)[0] for dest in everything - known}  # "--a=1 b" gives dest "a=1"
    typed = [a.split("=", 1)[0] for a in args if cli.is_flag(a)
             and a.split("=", 1)[0].lstrip("-").replace("-", "_") in unknown_dests]
    return list(dict.fromkeys(typed)), sorted(f"--{dest}" for dest in known)


def unknown_beam_flags(args: list[str]) -> list[str]:
    """The flags in ``args`` that no registered Beam option class knows (as typed)."""
    return beam_flags(args)[0]


def parse(parser: argparse.ArgumentParser, argv: list[str] | None, beam: bool = True
          ) -> tuple[argparse.Namespace, list[str]]:
    """(our arguments, Beam's arguments); a bad flag or config exits 2 with one line naming it
    (and the closest flag), not the usage (schemas/cli.py)."""
    parser = cli.friendly(parser)
    argv = list(sys.argv[1:] if argv is None else argv)
    config_file, argv = _split_config(argv)
    if config_file:
        try:
            values = load_config(config_file)
            check_config_keys(values, config_file, our_flags(parser), beam_flags([])[1] if beam else [])
            argv = config_argv(values) + argv
        except ValueError as e:
            parser.error(str(e))
    if not beam:
        return parser.parse_args(argv), []
    args, rest = parser.parse_known_args(argv)
    unknown, beams = beam_flags(rest)
    stray = [a for i, a in enumerate(rest) if not cli.is_flag(a) and (
        i == 0 or "=" in rest[i - 1] or not cli.is_flag(rest[i - 1]))]
    if unknown or stray:
        parser.error(cli.unknown_message(unknown, stray, our_flags(parser), beams))
    return args, rest
