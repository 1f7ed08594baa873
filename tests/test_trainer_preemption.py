"""Preemption with the real trainer in real processes: SIGTERM saves a backup at once and
exits with the retriable code, and the rerun resumes there; a worker whose peer is
SIGKILLed exits with the same code, so the Job's failure policy restarts the workers."""
from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import pytest

from tessera import synthetic_dataset
from trainer import cluster

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=ROOT)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    path = tmp_path_factory.mktemp("data")
    synthetic_dataset.segmentation_dataset(str(path), n_train=32, n_val=8, n_test=0)
    return str(path)


def command(dataset, model_dir, *extra):
    return [sys.executable, "-m", "trainer.task", "--data", dataset, "--model-dir", str(model_dir),
            "--epochs", "500", "--batch-size", "4", "--depth", "1", "--filters", "2", "--verbose", "2",
            "--image-summaries", "0", "--checkpoint-every", "1000000", *extra]


def read_until(process, pattern: str, timeout: float) -> str:
    """The output of ``process`` up to the first line matching ``pattern``."""
    seen, deadline = [], time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            raise AssertionError(f"ended ({process.poll()}) before {pattern!r}:\n{''.join(seen)[-3000:]}")
        seen.append(line)
        if re.search(pattern, line):
            return "".join(seen)
    raise AssertionError(f"no {pattern!r} in {timeout} s:\n{''.join(seen)[-3000:]}")


def test_sigterm_saves_a_backup_now_and_the_rerun_resumes_there(dataset, tmp_path):
    model_dir = tmp_path / "model"
    process = subprocess.Popen(command(dataset, model_dir), cwd=ROOT, env=ENV, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        read_until(process, r"^step 13 ", timeout=180)   # mid-epoch 2, far from any periodic backup
        process.send_signal(signal.SIGTERM)
        rest, _ = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == cluster.PREEMPTED_EXIT_CODE, rest[-3000:]
    saved = int(re.search(r"SIGTERM: backup saved at global step (\d+)", rest).group(1))
    assert saved >= 13
    resumed = subprocess.run(command(dataset, model_dir, "--epochs", "4"), cwd=ROOT, env=ENV, text=True,
                             capture_output=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    step = int(re.search(r"Resumed from \S+: epoch \d+, step \d+ \(global step (\d+)\)", resumed.stdout).group(1))
    assert step == saved
    assert (model_dir / "CURRENT").exists()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_worker_that_loses_its_peer_exits_retriably(dataset, tmp_path):
    workers = [f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"]
    procs = []
    for index in range(2):
        tf_config = {"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}}
        procs.append(subprocess.Popen(command(dataset, tmp_path / "model"), cwd=ROOT, text=True,
                                      env=dict(ENV, TF_CONFIG=json.dumps(tf_config), CUDA_VISIBLE_DEVICES=""),
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT))
    try:
        read_until(procs[0], r"^step 3 ", timeout=240)     # both train (every step needs both)
        procs[1].send_signal(signal.SIGKILL)               # worker 1's node is gone
        rest, _ = procs[0].communicate(timeout=180)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    assert procs[0].returncode == cluster.PEER_LOST_EXIT_CODE, rest[-3000:]
    assert "lost a peer worker" in rest
