"""No job reads a file it has not sized, blocks on a FIFO, follows a symlink out of its
input, quotes a file's content in a rejected record, or writes inside what it reads."""
from __future__ import annotations

import json
import os
import resource
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from pipelines.beam.files import read_input
from pipelines.predict import job as predict
from schemas import layout as names
from schemas.rejected import RejectedInput
from tessera import synthetic
from tessera.toy_models import export_model, write_images

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def reasons(out) -> dict:
    records = [json.loads(line) for line in (out / names.REJECTED_FILE).read_text().splitlines()]
    return {os.path.basename(r["source"]): (r["reason"], r["detail"]) for r in records}


def test_read_input_refuses_what_it_should_not_read(tmp_path):
    os.mkfifo(tmp_path / "fifo.png")                       # opening it for reading would block
    with pytest.raises(RejectedInput) as e:
        read_input(str(tmp_path / "fifo.png"), 10**6)
    assert e.value.reason == "not_a_file"
    (tmp_path / "big.png").write_bytes(b"\x89PNG" + bytes(100))
    with pytest.raises(RejectedInput) as e:
        read_input(str(tmp_path / "big.png"), 50)
    assert e.value.reason == "too_large"
    with pytest.raises(RejectedInput) as e:
        read_input(str(tmp_path / "gone.png"), 50)
    assert e.value.reason == "missing_file"


def test_predict_rejects_fifos_huge_sparse_files_outside_links_and_quotes_no_content(tmp_path):
    export_model(str(tmp_path / "model"), kind="same", core=8, margin=3)
    write_images(tmp_path / "in", {"ok": (9, 9)})
    write_images(tmp_path / "outside", {"target": (9, 9)})
    os.mkfifo(tmp_path / "in" / "fifo.png")
    for name, size in (("sparse.png", 3 * 2**30), ("sparse-1g.png", 2**30)):  # nothing: must cost nothing
        with open(tmp_path / "in" / name, "wb") as handle:
            handle.truncate(size)
    (tmp_path / "in" / "secret.png").write_bytes(b"password=hunter2 " * 10)
    os.symlink(tmp_path / "outside" / "target.png", tmp_path / "in" / "link.png")
    out = tmp_path / "out"
    code = ("import resource, sys; from pipelines.predict.job import run; rc = run(sys.argv[1:]); "
            "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss); sys.exit(rc)")
    done = subprocess.run([sys.executable, "-c", code, "--model-dir", str(tmp_path / "model"), "--input",
                           str(tmp_path / "in"), "--output", str(out)], cwd=ROOT, capture_output=True, text=True,
                          timeout=300, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": ROOT})
    assert done.returncode == 0, done.stderr[-2000:]
    peak_kib = int(done.stdout.strip().splitlines()[-1])
    assert peak_kib < 2 * 2**20, f"peak RSS {peak_kib / 2**20:.2f} GiB: the sparse file was read"
    found = reasons(out)
    assert {k: v[0] for k, v in found.items()} == {
        "fifo.png": "not_a_file", "sparse.png": "too_large", "sparse-1g.png": "not_an_image",
        "secret.png": "not_an_image",
        "link.png": "symlink_outside_input"}
    assert not any("hunter2" in detail for _, detail in found.values())
    assert os.listdir(out / names.MASKS_DIR) == ["ok.png"]
    followed = tmp_path / "followed"
    assert predict.run(["--model-dir", str(tmp_path / "model"), "--input", str(tmp_path / "in"), "--output",
                        str(followed), "--follow-symlinks"]) == 0
    assert sorted(os.listdir(followed / names.MASKS_DIR)) == ["link.png", "ok.png"]


def test_preprocess_rejects_a_fifo_and_a_file_too_big_for_the_pixel_limit(tmp_path):
    from pipelines.preprocess import job as preprocess
    from schemas import versions

    raw = tmp_path / "raw"
    synthetic.write_segmentation_folder(raw, count=3, size=(16, 16), seed=2)
    os.mkfifo(raw / "images" / "fifo.png")
    (raw / "masks" / "fifo.png").write_bytes((raw / "masks" / os.listdir(raw / "masks")[0]).read_bytes())
    with open(raw / "images" / "huge.png", "wb") as handle:
        handle.write(b"\x89PNG\r\n\x1a\n")
        handle.truncate(2 * 2**30)
    (raw / "masks" / "huge.png").write_bytes((raw / "masks" / "fifo.png").read_bytes())
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    assert preprocess.run(["--input", str(raw), "--output", str(tmp_path / "ds"), "--tile-size", "8",
                           "--max-rejected-fraction", "0.5", "--direct_running_mode=in_memory"]) == 0
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 2**20  # KiB: less than 1 GiB more
    rejected = [json.loads(line) for line in
                (tmp_path / "ds" / versions.CURRENT_LINK / "rejected.jsonl").read_text().splitlines()]
    assert sorted((r["source"].split(" + ")[0].rsplit("/", 1)[1], r["reason"]) for r in rejected) == [
        ("fifo.png", "not_a_file"), ("huge.png", "too_large")]


def test_evaluate_applies_the_pixel_limit_to_truth_and_predicted_masks(tmp_path):
    from pipelines.evaluate import job as evaluate

    (tmp_path / "truth").mkdir()
    (tmp_path / "pred" / names.MASKS_DIR).mkdir(parents=True)
    (tmp_path / "pred" / names.SUCCESS_FILE).write_text("{}")
    for name, size in (("small", (4, 4)), ("big", (40, 40))):
        mask = np.zeros(size, np.uint8)
        Image.fromarray(mask).save(tmp_path / "truth" / f"{name}.png")
        Image.fromarray(mask).save(tmp_path / "pred" / names.mask_path(name))
    report = tmp_path / "report.json"
    assert evaluate.run(["--predictions", str(tmp_path / "pred"), "--truth", str(tmp_path / "truth"),
                         "--output", str(report), "--max-pixels", "100", "--class-names", "bg,fg"]) == 0
    result = json.loads(report.read_text())
    assert [(os.path.basename(r["source"]), r["reason"]) for r in result["rejected"]] == [("big.png", "too_large")]


def test_every_job_refuses_an_output_inside_its_input_and_the_reverse(tmp_path, capsys):
    import pytest

    from pipelines.evaluate import job as evaluate
    from pipelines.preprocess import job as preprocess
    from tessera import synthetic

    synthetic.write_segmentation_folder(tmp_path / "raw", count=2, size=(16, 16), seed=1)
    for output in (tmp_path / "raw" / "ds", tmp_path):
        with pytest.raises(SystemExit, match="overlap"):
            preprocess.run(["--input", str(tmp_path / "raw"), "--output", str(output), "--tile-size", "8"])
    assert not (tmp_path / "raw" / "ds").exists()
    (tmp_path / "pred").mkdir()
    (tmp_path / "pred" / names.SUCCESS_FILE).write_text("{}")
    assert evaluate.run(["--predictions", str(tmp_path / "pred"), "--truth", str(tmp_path / "raw" / "masks"),
                         "--output", str(tmp_path / "raw" / "masks" / "report.json")]) == 2
    assert "overlap" in capsys.readouterr().err
