"""Publishing never leaves a dataset or model directory without a complete version: real
jobs in subprocesses, SIGKILLed at named moments of the protocol (``schemas.crashpoints``),
locally and on the GCS emulator; readers keep the version they resolved."""
from __future__ import annotations

import json
import os
import time

import pytest

from pipelines.beam.files import resolve_version
from pipelines.preprocess import job as preprocess
from pipelines.preprocess import publish
from schemas import layout, versions
from tessera import synthetic
from tests.conftest import upload_tree
from tests.crash import kill_at

FLAGS = ["--tile-size", "24", "--margin", "8", "--direct_running_mode=in_memory"]
PREPROCESS = "pipelines.preprocess.job"


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    root = tmp_path_factory.mktemp("raw")
    synthetic.write_segmentation_folder(root, count=4, size=(40, 56), seed=7)
    return root


def run_preprocess(raw, out, *extra) -> int:
    return preprocess.run(["--input", str(raw), "--output", str(out), *FLAGS, *map(str, extra)])


def success_of(version_dir) -> dict:
    from pipelines.beam.files import read_json

    return read_json(f"{version_dir}/{layout.SUCCESS_FILE}")


def test_overwrite_killed_before_the_pointer_leaves_the_old_version_current(raw, tmp_path):
    out = tmp_path / "ds"
    assert run_preprocess(raw, out) == 0
    first = resolve_version(str(out))
    kill_at("preprocess:before-pointer", PREPROCESS, ["--input", str(raw), "--output", str(out), *FLAGS,
                                          "--tile-size", "32", "--overwrite"], tmp_path)
    assert resolve_version(str(out)) == first and os.path.realpath(out / versions.CURRENT_LINK) == first
    assert json.loads((out / versions.CURRENT_LINK / layout.SPEC_FILE).read_text())["core"] == 24
    assert success_of(first)["sources_in"] == 4
    # the next run publishes and removes the crashed run's unpointed version
    assert run_preprocess(raw, out, "--tile-size", 32, "--overwrite") == 0
    second = resolve_version(str(out))
    assert second != first and json.loads((out / versions.CURRENT_LINK / layout.SPEC_FILE).read_text())["core"] == 32
    assert sorted(p.name for p in out.iterdir() if versions.is_version(p.name)) == sorted(
        os.path.basename(v) for v in (first, second))


def test_a_reader_keeps_the_version_it_resolved_and_old_versions_are_pruned(raw, tmp_path):
    from trainer.data import open_dataset

    out = tmp_path / "ds"
    assert run_preprocess(raw, out) == 0
    info = open_dataset(str(out))                 # a training job starts on version A
    for _ in range(versions.DEFAULT_KEEP - 1):
        assert run_preprocess(raw, out, "--overwrite") == 0
    assert open_dataset(str(out)).path != info.path
    assert all(os.path.exists(f) for files in info.split_files.values() for f in files)  # A is still whole
    assert run_preprocess(raw, out, "--overwrite", "--keep-versions", 2) == 0
    kept = sorted(p.name for p in out.iterdir() if versions.is_version(p.name))
    assert len(kept) == 2 and os.path.basename(info.path) not in kept
    assert (out / versions.CURRENT_LINK).resolve().name == kept[-1]


def test_a_dataset_written_before_versions_is_replaced_by_the_first_version(raw, tmp_path):
    out = tmp_path / "ds"
    assert run_preprocess(raw, out) == 0
    legacy = tmp_path / "legacy"
    os.rename(os.path.realpath(out / versions.CURRENT_LINK), legacy)   # a plain dataset directory
    for name in os.listdir(out):
        os.remove(out / name)
    os.rmdir(out)
    os.rename(legacy, out)
    assert resolve_version(str(out)) == str(out)  # read as it is
    assert run_preprocess(raw, out, "--tile-size", 32, "--overwrite") == 0
    assert resolve_version(str(out)) != str(out)
    assert (out / layout.SUCCESS_FILE).exists()   # the old one stays readable for running readers...
    for _ in range(versions.DEFAULT_KEEP - 1):
        assert run_preprocess(raw, out, "--overwrite") == 0
    assert not (out / layout.SUCCESS_FILE).exists()  # ...until it falls out of the kept versions


def test_leftovers_of_crashed_runs_are_reported_and_old_ones_removed(raw, tmp_path, capsys):
    out = tmp_path / "ds"
    old, young = tmp_path / "ds.tmp-0123456789ab", tmp_path / "ds.old-ba9876543210"
    for folder in (old, young):
        folder.mkdir()
        (folder / "tessera-train.tfrecord-00000-of-00001").write_bytes(b"partial")
    stale = time.time() - versions.LEFTOVER_AGE_S - 60
    os.utime(old / "tessera-train.tfrecord-00000-of-00001", (stale, stale))
    assert run_preprocess(raw, out) == 0
    err = capsys.readouterr().err
    assert not old.exists() and f"removed {old}" in err
    assert young.exists() and f"{young} was written" in err


def test_gs_overwrite_killed_before_the_pointer_keeps_the_old_dataset(raw, gcs_prefix, tmp_path):
    upload_tree(raw, f"{gcs_prefix}/raw")
    out = f"{gcs_prefix}/ds"
    assert run_preprocess(f"{gcs_prefix}/raw", out) == 0
    first = resolve_version(out)
    kill_at("preprocess:before-pointer", PREPROCESS, ["--input", f"{gcs_prefix}/raw", "--output", out, *FLAGS,
                                          "--tile-size", "32", "--overwrite"], tmp_path)
    assert resolve_version(out) == first and success_of(first)["sources_in"] == 4
    assert run_preprocess(f"{gcs_prefix}/raw", out, "--tile-size", 32, "--overwrite") == 0
    second = resolve_version(out)
    assert second != first and success_of(second)["sources_in"] == 4
    assert publish.output_exists(first)  # kept for readers that resolved it
