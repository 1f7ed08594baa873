"""``--help`` works for ``tessera`` and every command (exit 0, its usage on stdout), and every flag
of train and evaluate says what it does and its default."""
from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from tessera import cli

# Runs in one child process, so TensorFlow is imported once for all the commands.
HELP_OF_EVERY_COMMAND = """
import contextlib, io, json
from tessera import cli
found = {}
for argv in [["--help"], ["-h"]] + [[command, flag] for command in cli.COMMANDS for flag in ("--help", "-h")]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = cli.main(argv)
        except SystemExit as e:
            code = e.code
    found[" ".join(argv)] = [code, out.getvalue(), err.getvalue()]
print("RESULT" + json.dumps(found))
"""


def test_help_exits_0_for_tessera_and_every_command():
    done = subprocess.run([sys.executable, "-c", HELP_OF_EVERY_COMMAND], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    found = json.loads(done.stdout.split("RESULT", 1)[1])
    assert len(found) == 2 + 2 * len(cli.COMMANDS)
    for argv, (code, out, err) in found.items():
        command = argv.split()[0]
        prog = "tessera" if command.startswith("-") else f"tessera {command}"
        assert code in (0, None), (argv, code, err[-500:])
        assert out.startswith(f"usage: {prog}"), (argv, out[:200])
        assert "error" not in err.lower(), (argv, err[-500:])


def option_helps(parser) -> dict[str, str]:
    """{first flag of an option: its whole help text} from what ``--help`` prints."""
    text = parser.format_help().split("\noptions:\n", 1)[1]
    helps: dict[str, str] = {}
    flag = None
    for line in text.splitlines():
        start = re.match(r"^  (-{1,2}[A-Za-z0-9][\w-]*)", line)
        if start:
            flag = start.group(1)
            helps[flag] = line
        elif flag and line.startswith("   "):
            helps[flag] += " " + line.strip()
        else:
            flag = None   # a group title or a blank line
    return {f: " ".join(h.split()) for f, h in helps.items()}


def commands_parsers():
    from pipelines.evaluate.job import build_parser as evaluate_parser
    from trainer.config import build_parser as train_parser

    return {"train": train_parser(), "evaluate": evaluate_parser()}


@pytest.mark.parametrize("command", ["train", "evaluate"])
def test_every_flag_says_what_it_does_and_its_default(command, monkeypatch):
    monkeypatch.setenv("COLUMNS", "100")
    parser = commands_parsers()[command]
    helps = option_helps(parser)
    assert len(helps) >= (60 if command == "train" else 12), sorted(helps)
    undocumented = {f: h for f, h in helps.items() if f != "-h" and not re.search(r"\(default|\brequired\b", h)}
    assert undocumented == {}
    # the help line is more than the flag and its metavar
    bare = [f for f, h in helps.items() if len(h.split()) < 4]
    assert bare == []


def test_train_help_names_both_verbosities(monkeypatch):
    monkeypatch.setenv("COLUMNS", "100")
    helps = option_helps(commands_parsers()["train"])
    assert "0 quiet, 1 progress bar, 2 a line per step" in helps["--progress"] and "(default: 1)" in helps["--progress"]
    assert "TensorFlow's start-up output" in helps["--verbose"] and "--progress N" in helps["--verbose"]
    assert "(default: 'adam')" in helps["--optimizer"] and "(default: True)" in helps["--augment"]


def test_the_help_parser_of_this_test_sees_every_flag(monkeypatch):
    monkeypatch.setenv("COLUMNS", "100")
    parser = commands_parsers()["evaluate"]
    flags = set(re.findall(r"--[a-z][a-z-]*", parser.format_usage()))
    assert flags <= set(option_helps(parser)) | {"--help"}
