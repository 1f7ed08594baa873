"""Fault tolerance: SIGKILL a training process partway, rerun the same command, and it resumes
from the last backup (repeating less than one checkpoint interval) and ends with exactly
the weights of an uninterrupted run; a backup is not resumed on a dataset replaced meanwhile."""
import os
import re
import shutil
import signal
import subprocess
import sys

import pytest

from tessera import synthetic_dataset
from tests.test_trainer_learning import make_config

EVERY = 5


def command(data, model_dir):
    return [sys.executable, "-m", "trainer.task", "--data", str(data), "--model-dir", str(model_dir), "--epochs", "2",
            "--batch-size", "8", "--depth", "2", "--filters", "4", "--verbose", "2", "--checkpoint-every", str(EVERY),
            "--image-summaries", "0"]


def test_killed_run_resumes_where_it_stopped(tmp_path):
    data = tmp_path / "data"
    synthetic_dataset.segmentation_dataset(str(data), n_train=96, n_val=16, n_test=2)   # 12 steps per epoch
    model_dir = tmp_path / "model"
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")

    first = subprocess.Popen(command(data, model_dir), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                             env=env)
    seen = []
    try:
        for line in first.stdout:
            seen.append(line)
            if line.startswith("step 8 "):
                first.send_signal(signal.SIGKILL)
                break
    finally:
        first.kill()
        first.wait(timeout=60)
    assert first.returncode == -signal.SIGKILL
    reached = max(int(m.group(1)) for m in re.finditer(r"^step (\d+) ", "".join(seen), re.M))
    saved = [int(m.group(1)) for m in re.finditer(r"checkpoint saved at global step (\d+)", "".join(seen))]
    assert reached >= 8 and saved and saved[-1] == EVERY
    assert not (model_dir / "current" / "model_card.json").exists()

    second = subprocess.run(command(data, model_dir), capture_output=True, text=True, env=env, timeout=300)
    assert second.returncode == 0, second.stderr[-2000:]
    resumed = re.search(r"Resumed from .*: epoch (\d+), step (\d+) \(global step (\d+)\)", second.stdout)
    assert resumed, second.stdout[-2000:]
    epoch, step, global_step = map(int, resumed.groups())
    assert (epoch, step) == (1, global_step) and global_step >= saved[-1]
    assert reached - global_step < EVERY                              # repeated less than one interval
    trained = re.findall(r"^step (\d+) ", second.stdout, re.M)
    assert [int(s) for s in trained] == list(range(global_step + 1, 25))
    assert (model_dir / "current" / "model_card.json").exists()
    assert len((model_dir / "history.csv").read_text().strip().splitlines()) == 1 + 2

    # the resumed run ends exactly where an uninterrupted one does (seeded input order)
    from trainer.loop import train

    clean = train(make_config(data, tmp_path / "clean", epochs=2, batch_size=8, checkpoint_every=EVERY,
                              model={"depth": 2, "filters": 4}, image_summaries=0), export_model=False)
    checksum = float(re.search(r"weights checksum ([\d.]+)", second.stdout).group(1))
    assert checksum == pytest.approx(clean.weights_checksum, rel=1e-6)


def test_refuses_to_resume_on_a_replaced_dataset(tmp_path, capsys):
    # a scheduled preprocess job rewrote the dataset (same path, other examples) while the run was down
    data, model_dir = tmp_path / "data", tmp_path / "model"
    synthetic_dataset.segmentation_dataset(str(data), n_train=8, n_val=0, n_test=0, seed=0)
    argv = ["--data", str(data), "--model-dir", str(model_dir), "--epochs", "1", "--steps-per-epoch", "1",
            "--batch-size", "4", "--depth", "1", "--filters", "2", "--verbose", "0", "--image-summaries", "0"]
    from trainer import task
    from trainer.config import parse_config
    from trainer.loop import train

    train(parse_config(argv), export_model=False)
    shutil.rmtree(data)
    synthetic_dataset.segmentation_dataset(str(data), n_train=8, n_val=0, n_test=0, seed=1)
    assert task.run(argv) == 2
    error = capsys.readouterr().err
    assert "another version of the dataset" in error and "fingerprint" in error
    assert not (model_dir / "current" / "model_card.json").exists()
