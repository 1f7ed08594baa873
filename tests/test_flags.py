"""Every command refuses unknown or misspelt flags (exit 2, with a hint) and takes
``--config FILE`` (JSON or YAML) that its flags override."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml

from pipelines.beam import flags
from schemas import versions
from tessera import synthetic

COMMANDS = {
    "preprocess": ["--input", "raw", "--output", "ds", "--tile-sise", "5"],
    "predict": ["--model-dir", "m", "--input", "i", "--output", "o", "--batchsize", "4"],
    "evaluate": ["--predictions", "p", "--truth", "t", "--betta", "2"],
    "inspect": ["ds", "--cont", "3"],
    "train": ["--data", "d", "--model-dir", "m", "--epoch", "3"],
}

MISSPELT = {"--tile-sise": "--tile-size", "--batchsize": "--batch-size", "--betta": "--beta", "--cont": "--count",
            "--epoch": "--epochs"}


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_a_misspelt_flag_is_an_error_in_every_command(command):
    done = subprocess.run([sys.executable, "-m", "tessera.cli", command, *COMMANDS[command]],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr[-1500:]
    typed = next(a for a in COMMANDS[command] if a in MISSPELT)
    # one line naming the flag as typed and the closest one, then where to look; no usage dump
    assert done.stderr.splitlines() == [f"tessera {command}: unknown flag {typed} (did you mean {MISSPELT[typed]}?)",
                                        f"see tessera {command} --help"], done.stderr[-1500:]


def test_beam_flags_pass_and_unknown_ones_are_named_with_a_hint():
    assert flags.unknown_beam_flags(["--runner=DataflowRunner", "--direct_num_workers", "2", "--project=p"]) == []
    assert flags.unknown_beam_flags(["--direct_num_worker=2"]) == ["--direct_num_worker"]
    from pipelines.preprocess.job import build_parser

    with pytest.raises(SystemExit) as e:
        flags.parse(build_parser(), ["--input", "a", "--output", "b", "--shard_bytes=5"])
    assert e.value.code == 2


def test_config_file_yaml_is_overridden_by_flags_and_recorded(tmp_path):
    from pipelines.preprocess import job as preprocess

    synthetic.write_segmentation_folder(tmp_path / "raw", count=3, size=(20, 20), seed=4)
    config = tmp_path / "job.yaml"
    config.write_text(yaml.safe_dump({"input": str(tmp_path / "raw"), "output": str(tmp_path / "ds"),
                                      "tile_size": 12, "margin": 2, "augment-copies": 1,
                                      "beam": ["--direct_running_mode=in_memory"]}))
    assert preprocess.run(["--config", str(config), "--tile-size", "10"]) == 0
    recorded = json.loads((tmp_path / "ds" / versions.CURRENT_LINK / "config.json").read_text())
    assert (recorded["preprocess"]["tile_size"], recorded["preprocess"]["margin"]) == (10, 2)
    assert recorded["preprocess"]["augment_copies"] == 1
    assert recorded["beam_args"] == ["--direct_running_mode=in_memory"]
    config.write_text(json.dumps({"input": "x", "output": "y", "tile_sise": 3}))   # JSON is YAML too
    with pytest.raises(SystemExit) as e:
        preprocess.run(["--config", str(config)])
    assert e.value.code == 2


def test_train_reads_a_yaml_config(tmp_path):
    from trainer.config import parse_config

    config = tmp_path / "train.yaml"
    config.write_text("epochs: 7\nmodel:\n  depth: 2\n")
    cfg = parse_config(["--config", str(config), "--data", "d", "--model-dir", str(tmp_path / "m"), "--depth", "3"])
    assert (cfg.epochs, cfg.model.depth) == (7, 3)


def test_a_misspelt_config_key_is_named_as_written_there_with_the_closest_key(tmp_path, capsys):
    from pipelines.preprocess.job import build_parser

    config = tmp_path / "job.yaml"
    config.write_text("input: a\noutput: b\ntile_sise: 3\nrunner: DirectRunner\ndirect_num_workerz: 2\n")
    with pytest.raises(SystemExit) as e:
        flags.parse(build_parser(), ["--config", str(config)])
    assert e.value.code == 2
    assert capsys.readouterr().err.splitlines() == [
        f"tessera preprocess: --config {config}: unknown keys tile_sise (did you mean tile_size?), "
        "direct_num_workerz (did you mean direct_num_workers?)", "see tessera preprocess --help"]
    config.write_text("input: a\noutput: b\ntile_size: 3\nrunner: DirectRunner\n")   # Beam's keys pass
    args, beam = flags.parse(build_parser(), ["--config", str(config)])
    assert args.tile_size == 3 and beam == ["--runner", "DirectRunner"]
