"""The whole chain as a user runs it: ``tessera demo --quick`` (generate -> preprocess ->
inspect -> train -> predict -> evaluate, each a real ``tessera`` command) in a fresh
process, reaching metrics an untrained or trivial model cannot, with quiet output."""
from __future__ import annotations

import json
import os
import subprocess
import sys

NOISE = ("absl::InitializeLog", "oneDNN", "cuda drivers", "cuInit", "semi_persistent_directory",
         "Resource module is not available", "cpu_feature_guard")


def test_demo_quick_runs_the_chain_and_learns(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", "TESSERA_VERBOSE")}
    done = subprocess.run([sys.executable, "-m", "tessera.cli", "demo", "--quick", "--workdir", str(tmp_path / "d")],
                          capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    for step in ("preprocess", "inspect", "train", "predict", "evaluate"):
        assert f"== {step}" in done.stdout
    report = json.loads((tmp_path / "d" / "report.json").read_text())
    assert report["counts"]["evaluated"] == 3 and report["counts"]["rejected"] == 0
    # foreground is ~18% of the pixels: calling everything foreground scores Dice ~0.3, nothing 0
    assert report["overall"]["micro"]["dice"] >= 0.6, report["overall"]
    card = json.loads((tmp_path / "d" / "model" / "current" / "model_card.json").read_text())
    assert card["metrics"]["dice"] >= 0.6 and card["saved_model_digest"]
    shown = done.stdout + done.stderr
    assert not [n for n in NOISE if n in shown], [line for line in shown.splitlines() if any(n in line for n in NOISE)]
    assert "\x1b[" not in done.stdout   # no terminal bar redrawn into a log


def test_version_and_verbose():
    done = subprocess.run([sys.executable, "-m", "tessera.cli", "--version"], capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.startswith("tessera ")
    loud = subprocess.run([sys.executable, "-m", "tessera.cli", "--verbose", "inspect", "--help"],
                          capture_output=True, text=True, timeout=120,
                          env={k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"})
    quiet = subprocess.run([sys.executable, "-m", "tessera.cli", "inspect", "--help"],
                           capture_output=True, text=True, timeout=120,
                           env={k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"})
    assert loud.returncode == quiet.returncode == 0
    assert "usage: tessera inspect" in quiet.stdout and not quiet.stderr.strip()
    assert len(loud.stderr) > len(quiet.stderr)   # --verbose shows TensorFlow's own start-up output
