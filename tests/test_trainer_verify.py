"""Training trusts no dataset it did not check: shards against ``_SUCCESS`` at start and
before export, and a damaged record named by its file. Each case runs the real command
(``tessera train``'s ``run``) and expects exit 2 with the file named, never a silent run."""
from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest  # noqa: E402

from schemas import layout  # noqa: E402
from schemas.crashpoints import PAUSE_ENV, RESUME_ENV, SIGNAL_ENV  # noqa: E402
from tessera import synthetic_dataset  # noqa: E402
from trainer import task  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    path = tmp_path_factory.mktemp("ds") / "ds"
    synthetic_dataset.segmentation_dataset(str(path), n_train=16, n_val=8, n_test=0)
    return path


@pytest.fixture
def dataset(pristine, tmp_path):
    path = tmp_path / "ds"
    shutil.copytree(pristine, path)
    return path


def train_argv(data, model_dir, *extra) -> list[str]:
    return ["--data", str(data), "--model-dir", str(model_dir), "--epochs", "1", "--batch-size", "4",
            "--depth", "1", "--filters", "2", "--verbose", "0", "--image-summaries", "0", *extra]


def first_shard(dataset):
    return sorted(dataset.glob("tessera-train.tfrecord-*"))[0]


def record_ends(data: bytes) -> list[int]:
    """Byte offsets where each TFRecord of ``data`` ends."""
    ends, at = [], 0
    while at < len(data):
        (length,) = struct.unpack("<Q", data[at:at + 8])
        at += 8 + 4 + length + 4
        ends.append(at)
    return ends


def expect_refusal(dataset, tmp_path, capsys, *needles, extra=()):
    assert task.run(train_argv(dataset, tmp_path / "model", *extra)) == 2
    err = capsys.readouterr().err
    for needle in needles:
        assert needle in err, err[-2000:]
    assert not (tmp_path / "model" / "CURRENT").exists()


def test_a_shard_truncated_at_a_record_boundary_is_refused(dataset, tmp_path, capsys):
    shard = first_shard(dataset)
    data = shard.read_bytes()
    shard.write_bytes(data[:record_ends(data)[-2]])          # one whole record gone: still valid TFRecords
    expect_refusal(dataset, tmp_path, capsys, str(shard), "truncated")


def test_an_emptied_shard_is_refused(dataset, tmp_path, capsys):
    first_shard(dataset).write_bytes(b"")
    expect_refusal(dataset, tmp_path, capsys, str(first_shard(dataset)), "0 bytes")


def test_a_foreign_shard_is_refused(dataset, tmp_path, capsys):
    foreign = dataset / "tessera-train.tfrecord-00007-of-00008"
    shutil.copy(first_shard(dataset), foreign)
    expect_refusal(dataset, tmp_path, capsys, str(foreign), "does not list")


def test_same_size_other_content_is_found_by_digests_or_by_its_checksum(dataset, tmp_path, capsys):
    shard = first_shard(dataset)
    data = bytearray(shard.read_bytes())
    data[record_ends(bytes(data))[0] // 2] ^= 0xFF          # inside the first record's payload
    shard.write_bytes(bytes(data))
    expect_refusal(dataset, tmp_path, capsys, str(shard), "sha256", extra=("--verify-digests",))
    # without the digest check the sizes pass, and the damaged record is named when it is read
    expect_refusal(dataset, tmp_path, capsys, str(shard), "damaged")


def test_a_dataset_replaced_during_the_run_is_not_exported(dataset, pristine, tmp_path):
    paused, resume = tmp_path / "paused", tmp_path / "resume"
    env = {**os.environ, PAUSE_ENV: "train:before-export", SIGNAL_ENV: str(paused), RESUME_ENV: str(resume),
           "PYTHONPATH": ROOT}
    process = subprocess.Popen([sys.executable, "-m", "trainer.task", *train_argv(dataset, tmp_path / "model")],
                               env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    while not paused.exists():
        assert process.poll() is None, process.stderr.read()[-2000:]
        assert time.monotonic() < deadline, "training never reached its export"
        time.sleep(0.2)
    success = json.loads((dataset / layout.SUCCESS_FILE).read_text())   # someone rewrites the dataset in place
    success["fingerprint"] = "0" * 64
    (dataset / layout.SUCCESS_FILE).write_text(json.dumps(success))
    resume.touch()
    _, err = process.communicate(timeout=240)
    assert process.returncode == 2, err[-2000:]
    assert "replaced during the run" in err
    assert not (tmp_path / "model" / "CURRENT").exists()   # no card naming a fingerprint that is not true


def test_an_intact_dataset_trains_and_the_card_names_its_fingerprint(dataset, tmp_path):
    from trainer import export

    assert task.run(train_argv(dataset, tmp_path / "model", "--verify-digests")) == 0
    success = json.loads((dataset / layout.SUCCESS_FILE).read_text())
    assert export.load_card(str(tmp_path / "model")).dataset_fingerprint == success["fingerprint"]
