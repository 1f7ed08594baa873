"""The prediction directory under change and hostile names: inputs that changed are
predicted again, output names stay inside --output and never collide, names that merely
contain ``.tmp-`` are not leftovers, and no job writes inside what it reads."""
from __future__ import annotations

import json
import os
import time

import numpy as np
from PIL import Image

from pipelines.predict import job as predict
from schemas import layout as names
from tessera.toy_models import export_model, write_images


def predict_into(tmp_path, source, out, *extra) -> int:
    return predict.run(["--model-dir", str(tmp_path / "model"), "--input", str(source), "--output", str(out), *extra])


def rejected_reasons(out) -> dict:
    records = [json.loads(line) for line in (out / names.REJECTED_FILE).read_text().splitlines()]
    return {os.path.basename(r["source"]): r["reason"] for r in records}


def test_an_input_changed_since_its_mask_was_written_is_predicted_again(tmp_path):
    export_model(str(tmp_path / "model"), kind="same", core=8, margin=3)
    write_images(tmp_path / "in", {"a": (12, 10), "b": (9, 9)})
    out = tmp_path / "out"
    assert predict_into(tmp_path, tmp_path / "in", out) == 0
    first = np.asarray(Image.open(out / names.mask_path("a")))
    write_images(tmp_path / "in", {"a": (20, 14)}, seed=5)      # same name, new content and size
    later = time.time() + 5
    os.utime(tmp_path / "in" / "a.png", (later, later))
    assert predict_into(tmp_path, tmp_path / "in", out) == 0
    success = json.loads((out / names.SUCCESS_FILE).read_text())
    assert (success["predicted"], success["skipped_done"]) == (1, 1)
    assert np.asarray(Image.open(out / names.mask_path("a"))).shape == (20, 14) != first.shape
    listed = tmp_path / "list.txt"                               # inputs named in a list file too
    listed.write_text("in/a.png\nin/b.png\n")
    out2 = tmp_path / "out2"
    assert predict_into(tmp_path, listed, out2) == 0
    os.utime(tmp_path / "in" / "b.png", (later + 5, later + 5))
    assert predict_into(tmp_path, listed, out2) == 0
    success = json.loads((out2 / names.SUCCESS_FILE).read_text())
    assert (success["predicted"], success["skipped_done"]) == (1, 1)


def test_list_file_paths_never_write_outside_the_output(tmp_path):
    export_model(str(tmp_path / "model"), kind="same", core=8, margin=3)
    write_images(tmp_path / "data" / "in", {"x": (9, 9)})
    write_images(tmp_path / "elsewhere", {"y": (9, 9)})
    listed = tmp_path / "data" / "list.txt"
    listed.write_text(f"in/x.png\n{tmp_path}/data/in/../../elsewhere/y.png\n")
    out = tmp_path / "data" / "out"
    assert predict_into(tmp_path, listed, out) == 0
    written = {os.path.relpath(os.path.join(d, f), tmp_path) for d, _, fs in os.walk(tmp_path) for f in fs}
    assert not [w for w in written if not w.startswith(("data/", "model/", "elsewhere/y.png"))], written
    masks = sorted(os.path.relpath(os.path.join(d, f), out / names.MASKS_DIR)
                   for d, _, fs in os.walk(out / names.MASKS_DIR) for f in fs)
    assert masks == ["data/in/x.png", "elsewhere/y.png"]       # ids below the listed files' common folder


def test_inputs_that_would_share_an_output_name_are_rejected(tmp_path):
    export_model(str(tmp_path / "model"), kind="same", core=8, margin=3)
    write_images(tmp_path / "in", {"Scan": (9, 9), "scan": (9, 9), "ok": (9, 9)})
    if len(os.listdir(tmp_path / "in")) < 3:
        return  # a case-insensitive file system already merged them: nothing can collide
    out = tmp_path / "out"
    assert predict_into(tmp_path, tmp_path / "in", out) == 0
    assert rejected_reasons(out) == {"Scan.png": "output_name_collision", "scan.png": "output_name_collision"}
    assert os.listdir(out / names.MASKS_DIR) == ["ok.png"]


def test_a_name_containing_tmp_is_an_image_not_a_leftover(tmp_path):
    export_model(str(tmp_path / "model"), kind="same", core=8, margin=3)
    write_images(tmp_path / "in", {"x": (9, 9), "x.png.tmp-0123456789ab": (9, 9)})
    out = tmp_path / "out"
    for _ in range(2):
        assert predict_into(tmp_path, tmp_path / "in", out) == 0
    assert sorted(os.listdir(out / names.MASKS_DIR)) == ["x.png", "x.png.tmp-0123456789ab.png"]
    success = json.loads((out / names.SUCCESS_FILE).read_text())
    assert (success["sources_in"], success["skipped_done"]) == (2, 2)


def _busy_argv(tmp_path, out, *extra):
    return ["--model-dir", str(tmp_path / "model"), "--input", str(tmp_path / "in"), "--output", str(out),
            "--lease-ttl-s", "2", *extra]


def _two_runs_on_one_output(tmp_path, out, capsys):
    from tests.crash import kill, pause_at

    export_model(str(tmp_path / "model"), kind="same", core=8, margin=3)
    write_images(tmp_path / "in", {f"i{k}": (9, 9) for k in range(6)})
    first = pause_at("predict:started", "pipelines.predict.job", _busy_argv(tmp_path, out), tmp_path)
    try:
        # the same shard, or other settings: refused while the first one is alive (heartbeats)
        for extra in ((), ("--tta", "flips")):
            assert predict.run(_busy_argv(tmp_path, out, "--lease-wait-s", "0", *extra)) == 2
            assert "another run is writing here" in capsys.readouterr().err
        time.sleep(3)  # longer than the ttl: only heartbeats keep the first claim alive
        assert predict.run(_busy_argv(tmp_path, out, "--lease-wait-s", "0", "--tta", "flips")) == 2
    finally:
        kill(first)
    # killed: its claim expires after its ttl, and a waiting run then takes the output
    assert predict.run(_busy_argv(tmp_path, out, "--lease-wait-s", "30", "--tta", "flips")) == 0
    return out


def test_two_runs_on_one_output_wait_or_fail_clearly(tmp_path, capsys):
    out = _two_runs_on_one_output(tmp_path, tmp_path / "out", capsys)
    success = json.loads((out / names.SUCCESS_FILE).read_text())
    assert success["predicted"] == 6 and not list((out / names.LEASES_DIR).iterdir())


def test_shards_of_one_run_cooperate_on_one_output(tmp_path):
    from tests.crash import kill, pause_at

    export_model(str(tmp_path / "model"), kind="same", core=8, margin=3)
    write_images(tmp_path / "in", {f"i{k}": (9, 9) for k in range(6)})
    out = tmp_path / "out"
    other = pause_at("predict:started", "pipelines.predict.job",
                     _busy_argv(tmp_path, out, "--num-shards", "2", "--shard-index", "0"), tmp_path)
    try:
        assert predict.run(_busy_argv(tmp_path, out, "--num-shards", "2", "--shard-index", "1",
                                      "--lease-wait-s", "0")) == 0
    finally:
        kill(other)


def test_two_runs_on_one_gs_output_wait_or_fail_clearly(tmp_path, capsys, gcs_prefix):
    from apache_beam.io.filesystems import FileSystems

    from pipelines.beam.files import read_json

    out = _two_runs_on_one_output(tmp_path, f"{gcs_prefix}/out", capsys)
    assert read_json(f"{out}/{names.SUCCESS_FILE}")["predicted"] == 6
    assert not FileSystems.match([f"{out}/{names.LEASES_DIR}/*"])[0].metadata_list
