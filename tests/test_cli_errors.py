"""Mistakes on the command line are answered in one line naming them (as typed) with the closest
name and where to look, exit 2, no usage dump; ``--verbose`` works after the command too;
``train --data`` of something that is not a dataset says to run preprocess."""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from pipelines.beam import flags
from schemas import cli as cli_errors
from schemas import layout
from tessera import cli


def two_lines(text: str, prog: str) -> str:
    """The message of a one-line error followed by the pointer to --help."""
    lines = text.strip().split("\n")
    assert len(lines) == 2 and lines[1] == f"see {prog} --help", text
    assert lines[0].startswith(f"{prog}: "), text
    return lines[0][len(prog) + 2:]


def test_a_misspelt_command_gets_the_closest_one(capsys):
    assert cli.main(["trian", "--data", "d"]) == 2
    assert two_lines(capsys.readouterr().err, "tessera") == "unknown command 'trian' (did you mean train?)"
    assert cli.main(["zzz"]) == 2
    message = two_lines(capsys.readouterr().err, "tessera")
    assert message.startswith("unknown command 'zzz' (the commands: preprocess, inspect, train")


def test_a_misspelt_top_level_flag_is_named_with_a_hint(capsys):
    assert cli.main(["--verbos", "train"]) == 2
    assert two_lines(capsys.readouterr().err, "tessera") == "unknown flag --verbos (did you mean --verbose?)"
    assert cli.main(["--help"]) == 0 and "commands:" in capsys.readouterr().out
    assert cli.main([]) == 2 and "usage: tessera" in capsys.readouterr().out


def test_train_misspelt_flags_are_echoed_as_typed_with_their_closest_flag(capsys):
    from trainer.task import run

    with pytest.raises(SystemExit) as e:
        run(["--dta", "./ds", "--model_dir", "m", "--epoch=3"])
    assert e.value.code == 2
    assert two_lines(capsys.readouterr().err, "tessera train") == (
        "unknown flags --dta (did you mean --data?), --model_dir (did you mean --model-dir?), "
        "--epoch (did you mean --epochs?)")
    with pytest.raises(SystemExit):
        run(["--data", "d", "--model-dir", "m", "stray"])
    assert two_lines(capsys.readouterr().err, "tessera train") == "unexpected argument 'stray'"
    with pytest.raises(SystemExit):
        run(["--data", "d", "--epochs", "many"])
    assert two_lines(capsys.readouterr().err, "tessera train") == "argument --epochs: invalid int value: 'many'"


def test_train_bad_choice_suggests_the_closest_value(capsys):
    from trainer.task import run

    assert run(["--data", "d", "--model-dir", "m", "--optimizer", "adm"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.endswith("got 'adm' (did you mean adam?)")
    assert run(["--data", "d", "--model-dir", "m", "--model", "unett"]) == 2
    assert capsys.readouterr().err.startswith("tessera train: --model must be one of")   # not "--name"


def test_evaluate_misspelt_and_missing_flags(capsys, tmp_path):
    from pipelines.evaluate import job as evaluate

    with pytest.raises(SystemExit) as e:
        evaluate.run(["--predictions", "p", "--truth", "t", "--betta", "2"])
    assert e.value.code == 2
    assert two_lines(capsys.readouterr().err, "tessera evaluate") == "unknown flag --betta (did you mean --beta?)"
    with pytest.raises(SystemExit):
        evaluate.run(["--predictions", "p"])
    assert two_lines(capsys.readouterr().err, "tessera evaluate") == "the following arguments are required: --truth"


def test_beam_jobs_suggest_our_flags_before_beams_and_beams_too(capsys):
    from pipelines.preprocess.job import build_parser

    for typed, expected in ((["--tile_sise=5"], "unknown flag --tile_sise (did you mean --tile-size?)"),
                            (["--runer", "DirectRunner"], "unknown flag --runer (did you mean --runner?)"),
                            (["--xyzzy-plugh", "3"], "unknown flag --xyzzy-plugh")):
        with pytest.raises(SystemExit) as e:
            flags.parse(build_parser(), ["--input", "a", "--output", "b", *typed])
        assert e.value.code == 2
        assert two_lines(capsys.readouterr().err, "tessera preprocess") == expected
    args, beam = flags.parse(build_parser(), ["--input", "a", "--output", "b", "--runner", "DirectRunner"])
    assert args.input == "a" and beam == ["--runner", "DirectRunner"]


def test_the_shared_pieces():
    assert cli_errors.split_extras(["--dta", "./ds", "--x=1", "loose", "-5"]) == (["--dta", "--x"], ["loose", "-5"])
    assert cli_errors.closest_flag("--Model_Dir", ["--model-dir", "--data"]) == "--model-dir"
    assert cli_errors.closest_flag("--zzz", ["--model-dir"]) is None
    assert cli_errors.closest("evalute", cli.COMMANDS) == "evaluate"


@pytest.mark.parametrize("command, argv, found, kept", [
    ("train", ["--verbose", "--data", "d"], True, ["--data", "d"]),
    ("train", ["--data", "d", "--verbose"], True, ["--data", "d"]),
    ("train", ["--verbose", "2", "--data", "d"], False, ["--verbose", "2", "--data", "d"]),  # the progress level
    ("evaluate", ["--predictions", "p", "--verbose"], True, ["--predictions", "p"]),
    ("preprocess", ["--input", "a", "--", "--verbose"], False, ["--input", "a", "--", "--verbose"]),
])
def test_verbose_after_the_command_is_the_global_flag(command, argv, found, kept):
    assert cli.take_verbose(command, argv) == (found, kept)


def test_train_verbose_n_is_the_progress_level_and_a_bare_verbose_leaves_it():
    from trainer.config import TrainConfig, parse_config

    base = ["--data", "d", "--model-dir", "m"]
    assert parse_config(base + ["--verbose"], env={}).verbose == TrainConfig().verbose == 1
    assert parse_config(base + ["--verbose", "0"], env={}).verbose == 0
    assert parse_config(base + ["--progress", "2"], env={}).verbose == 2


def _stderr_of(*argv: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", "TESSERA_VERBOSE")}
    return subprocess.run([sys.executable, "-m", "tessera.cli", *argv], capture_output=True, text=True,
                          timeout=180, env=env)


def test_verbose_after_the_command_shows_tensorflows_start_up_output_too():
    loud = _stderr_of("inspect", "--verbose", "--help")
    quiet = _stderr_of("inspect", "--help")
    assert loud.returncode == quiet.returncode == 0 and "usage: tessera inspect" in loud.stdout
    assert not quiet.stderr.strip() and len(loud.stderr) > len(quiet.stderr)


def test_train_on_a_raw_folder_says_to_run_preprocess(tmp_path):
    raw = tmp_path / "raw"
    (raw / "images").mkdir(parents=True)
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(raw / "images" / "a.png")
    done = _stderr_of("train", "--data", str(raw), "--model-dir", str(tmp_path / "m"))
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip() == (f"tessera train: --data {raw}: not a Tessera dataset (no _SUCCESS); for a folder "
                                   f"of raw images (and masks) run `tessera preprocess --input {raw} --output "
                                   "DATASET` first and train with --data DATASET")
    assert not (tmp_path / "m").exists()


def test_open_dataset_names_the_remedy_for_a_missing_or_unfinished_dataset(tmp_path):
    from trainer import data

    with pytest.raises(data.NotADataset, match="no such directory .*`tessera preprocess --input RAW_FOLDER --output "):
        data.open_dataset(str(tmp_path / "nothing"))
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / layout.SPEC_FILE).write_text("{}")
    with pytest.raises(FileNotFoundError, match="preprocess did not finish this dataset .no _SUCCESS."):
        data.open_dataset(str(tmp_path / "half"))


def test_demo_misspelt_flag(capsys):
    from tessera import demo

    with pytest.raises(SystemExit) as e:
        demo.build_parser().parse_args(["--quik"])
    assert e.value.code == 2
    assert two_lines(capsys.readouterr().err, "tessera demo") == "unknown flag --quik (did you mean --quick?)"


def test_train_config_file_keys_get_suggestions_too():
    from trainer.config import from_dict

    with pytest.raises(ValueError, match=r"^unknown config keys: epoch \(did you mean epochs\?\), zzz$"):
        from_dict({"epoch": 3, "zzz": 1})
    with pytest.raises(ValueError, match=r"section 'model': dept \(did you mean depth\?\)$"):
        from_dict({"model": {"dept": 2}})


def test_train_config_file_missing_or_not_yaml_is_one_line(tmp_path, capsys):
    from trainer.task import run

    (tmp_path / "bad.yaml").write_text("epochs: [\n")
    for name in ("missing.yaml", "bad.yaml"):
        assert run(["--config", str(tmp_path / name), "--data", "d", "--model-dir", "m"]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith(f"tessera train: --config {tmp_path / name}: cannot read it as JSON or YAML")
        assert "\n" not in err
