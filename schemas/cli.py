"""Command-line mistakes answered in one line, the same way by every ``tessera`` command.

    tessera train: unknown flag --dta (did you mean --data?)
    see tessera train --help

(exit status 2) instead of argparse's usage dump followed by "unrecognized arguments". The
flag is echoed as it was typed; the suggestion is the closest flag the command has (``_``
and ``-`` count as the same). Pure argparse, public API only: the jobs (through
``pipelines/beam/flags.py``) and the trainer (``trainer/config.py``) share it.
"""
from __future__ import annotations

import argparse
import difflib
import re
from typing import Iterable, Sequence

USAGE_ERROR = 2
_FLAG = re.compile(r"--[A-Za-z0-9][A-Za-z0-9_-]*")


def closest(word: str, candidates: Iterable[str], normalise=lambda s: s) -> str | None:
    """The candidate closest to ``word`` (difflib ratio >= 0.6), as the candidate is spelt."""
    by_key = {normalise(c): c for c in candidates}
    found = difflib.get_close_matches(normalise(word), list(by_key), n=1, cutoff=0.6)
    return by_key[found[0]] if found else None


def _flag_key(flag: str) -> str:
    return flag.lower().replace("_", "-")


def closest_flag(typed: str, *candidate_lists: Sequence[str]) -> str | None:
    """The closest flag to ``typed`` (``--name`` or ``--name=value``), trying each list in turn
    (a command's own flags before Beam's)."""
    name = typed.split("=", 1)[0]
    for candidates in candidate_lists:
        hint = closest(name, candidates, _flag_key)
        if hint:
            return hint
    return None


def flag_names(parser: argparse.ArgumentParser) -> list[str]:
    """Every long flag of ``parser``, from its usage line (hidden flags are not suggested)."""
    return sorted(set(_FLAG.findall(parser.format_usage())))


def is_flag(token: str) -> bool:
    if not token.startswith("-") or token == "-":
        return False
    try:
        float(token)
        return False   # a negative number is a value
    except ValueError:
        return True


def split_extras(extras: Sequence[str]) -> tuple[list[str], list[str]]:
    """(unknown flags as typed, stray arguments) of what argparse did not recognise; a word right
    after an unknown flag (``--dta ./ds``) is taken to be that flag's value."""
    flags, strays = [], []
    after_flag = False
    for token in extras:
        if is_flag(token):
            flags.append(token.split("=", 1)[0])
            after_flag = "=" not in token
        elif after_flag:
            after_flag = False
        else:
            strays.append(token)
    return flags, strays


def unknown_message(flags: Sequence[str], strays: Sequence[str], *candidate_lists: Sequence[str]) -> str:
    """``unknown flag --dta (did you mean --data?)``, ``unexpected argument 'x'``, or both."""
    parts = []
    if flags:
        described = []
        for flag in flags:
            hint = closest_flag(flag, *candidate_lists)
            described.append(f"{flag} (did you mean {hint}?)" if hint and hint != flag else flag)
        parts.append(("unknown flag " if len(flags) == 1 else "unknown flags ") + ", ".join(described))
    if strays:
        parts.append(("unexpected argument " if len(strays) == 1 else "unexpected arguments ")
                     + " ".join(repr(s) for s in strays))
    return "; ".join(parts)


class ArgumentParser(argparse.ArgumentParser):
    """argparse with one-line errors (``prog: message`` + ``see prog --help``, exit 2) and
    suggestions for misspelt flags."""

    def parse_args(self, args=None, namespace=None):
        namespace, extras = self.parse_known_args(args, namespace)
        if extras:
            self.error(unknown_message(*split_extras(extras), flag_names(self)))
        return namespace

    def error(self, message: str):
        self.exit(USAGE_ERROR, f"{self.prog}: {message}\nsee {self.prog} --help\n")


def friendly(parser: argparse.ArgumentParser) -> ArgumentParser:
    """``parser`` itself when it already is an :class:`ArgumentParser`, else one with the same
    flags, help and settings (argparse's ``parents``) that reports mistakes in one line."""
    if isinstance(parser, ArgumentParser):
        return parser
    return ArgumentParser(
        prog=parser.prog, usage=parser.usage, description=parser.description, epilog=parser.epilog,
        formatter_class=parser.formatter_class, prefix_chars=parser.prefix_chars,
        fromfile_prefix_chars=parser.fromfile_prefix_chars, argument_default=parser.argument_default,
        conflict_handler=parser.conflict_handler, allow_abbrev=parser.allow_abbrev,
        add_help=False, parents=[parser])
