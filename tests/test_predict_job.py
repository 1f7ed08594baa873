"""The prediction job end to end on the DirectRunner: outputs, rejections, reruns, strips, shards, runners."""
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image
from scipy import ndimage

from pipelines.predict import job as predict
from schemas import layout as names
from tessera.toy_models import export_model, whole_image_probabilities, write_images
from tests.crash import kill_at

SIZES = {"a": (37, 61), "b": (5, 5), "nested/c": (20, 33), "d": (1, 1)}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("job")
    module = export_model(str(root / "model"), kind="same", core=8, margin=4, layers=3)
    images = write_images(root / "in", SIZES)
    (root / "in" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    (root / "in" / "notes.txt").write_text("not an image")
    write_images(root / "in", {"dup": (4, 4), "dup2": (4, 4)})
    os.rename(root / "in" / "dup2.png", root / "in" / "dup.jpg")  # two files with the id "dup"
    return root, module, images


def run_job(root, output, *extra):
    argv = ["--model-dir", str(root / "model"), "--input", str(root / "in"), "--output", str(output),
            "--save-probabilities", "--batch-size", "7", *extra]
    assert predict.run(argv) == 0
    return output


def rows_of(output, name=names.PREDICTIONS_FILE):
    return {r["image_id"]: r for r in pq.read_table(os.path.join(output, name)).to_pylist()}


def files_of(output, skip=(names.CONFIG_FILE, names.SUCCESS_FILE)):
    found = {}
    for dirpath, _, filenames in os.walk(output):
        for name in filenames:
            rel = os.path.relpath(os.path.join(dirpath, name), output)
            if not rel.startswith(skip):
                with open(os.path.join(dirpath, name), "rb") as f:
                    found[rel] = f.read()
    return found


def without_timing(rows):
    return {k: {c: v for c, v in r.items() if c != "seconds"} for k, r in rows.items()}


@pytest.fixture(scope="module")
def first_run(setup, tmp_path_factory):
    root, _, _ = setup
    return run_job(root, tmp_path_factory.mktemp("out") / "pred")


def test_outputs_match_whole_image_prediction(setup, first_run):
    root, module, images = setup
    rows = rows_of(first_run)
    assert sorted(rows) == sorted(SIZES)
    for image_id, pixels in images.items():
        expected = whole_image_probabilities(module, pixels, 4)
        probabilities = np.load(first_run / "probabilities" / f"{image_id}.npy")
        mask = np.asarray(Image.open(first_run / names.MASKS_DIR / f"{image_id}.png"))
        assert mask.shape == pixels.shape[:2] and probabilities.shape == pixels.shape[:2] + (2,)
        np.testing.assert_allclose(probabilities, expected, atol=2e-3)  # float16 on disk
        sure = np.abs(expected[..., 1] - expected[..., 0]) > 1e-3
        assert np.array_equal(mask[sure], expected.argmax(-1)[sure])
        overlay = np.asarray(Image.open(first_run / names.OVERLAYS_DIR / f"{image_id}.png"))
        assert overlay.shape == pixels.shape[:2] + (3,)
        row = rows[image_id]
        assert (row["height"], row["width"]) == pixels.shape[:2] and row["source"].endswith(f"{image_id}.png")
        np.testing.assert_allclose(row["class_fractions"], np.bincount(mask.ravel(), minlength=2) / mask.size, atol=1e-6)
        assert row["class_components"] == [ndimage.label(mask == c)[1] for c in (0, 1)]
        assert row["components"] == row["class_components"][1]
        assert 0.5 <= row["mean_confidence"] <= 1.0 and row["tta"] == "none" and row["model_ids"][0].startswith("toy-same")


def test_bad_inputs_become_rejected_records_and_counts_add_up(first_run):
    rejected = [json.loads(line) for line in (first_run / names.REJECTED_FILE).read_text().splitlines()]
    reasons = {os.path.basename(r["source"]): r["reason"] for r in rejected}
    assert reasons == {"broken.png": reasons["broken.png"], "notes.txt": "not_an_image",
                       "dup.png": "duplicate_id", "dup.jpg": "duplicate_id"}
    assert reasons["broken.png"] in ("truncated", "unreadable")
    assert all(r["detail"] for r in rejected)
    success = json.loads((first_run / names.SUCCESS_FILE).read_text())
    assert success["sources_in"] == 8 and success["predicted"] == 4 and success["rejected"] == 4
    assert success["sources_in"] == success["predicted"] + success["skipped_done"] + success["rejected"]
    assert not (first_run / names.STRIP_PARTS_DIR).exists() or not any((first_run / names.STRIP_PARTS_DIR).rglob("*.npz"))


def test_rerun_skips_finished_images_and_never_duplicates(setup, first_run, tmp_path):
    root, _, _ = setup
    copy = tmp_path / "pred"
    shutil.copytree(first_run, copy)
    before = files_of(copy)
    run_job(root, copy)
    success = json.loads((copy / names.SUCCESS_FILE).read_text())
    assert (success["predicted"], success["skipped_done"], success["rejected"]) == (0, 4, 4)
    assert files_of(copy) == before  # identical bytes, timings of the first run kept, no duplicate rows


def test_interrupted_run_resumes_to_identical_outputs(setup, first_run, tmp_path):
    root, _, _ = setup
    write_images(tmp_path / "in", {f"img{i:02d}": (48, 40 + i) for i in range(40)}, seed=7)
    shutil.copytree(root / "model", tmp_path / "model")
    reference = run_job(tmp_path, tmp_path / "reference")
    interrupted = tmp_path / "interrupted"
    argv = [sys.executable, "-m", "pipelines.predict", "--model-dir", str(tmp_path / "model"), "--input",
            str(tmp_path / "in"), "--output", str(interrupted), "--save-probabilities", "--batch-size", "7",
            "--lease-ttl-s", "1"]  # its claim on the output expires a second after it is killed
    process = subprocess.Popen(argv, cwd=os.path.dirname(os.path.dirname(__file__)),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not list(interrupted.glob(f"{names.ROWS_DIR}/*/*.json")):
        assert process.poll() is None and time.monotonic() < deadline, "the run ended before it could be interrupted"
        time.sleep(0.02)
    process.kill()
    process.wait()
    assert not (interrupted / names.SUCCESS_FILE).exists()
    done_before = len(list((interrupted / "rows").rglob("*.json")))
    assert 0 < done_before < 40
    time.sleep(1.5)
    run_job(tmp_path, interrupted)
    assert not list((interrupted / names.LEASES_DIR).iterdir())   # the killed run's expired claim is gone
    success = json.loads((interrupted / names.SUCCESS_FILE).read_text())
    assert success["skipped_done"] >= done_before and success["predicted"] + success["skipped_done"] == 40
    assert without_timing(rows_of(interrupted)) == without_timing(rows_of(reference))
    same = {k: v for k, v in files_of(interrupted, skip=("config.json", names.SUCCESS_FILE, "rows", "predictions")).items()}
    assert same == files_of(reference, skip=("config.json", names.SUCCESS_FILE, "rows", "predictions"))


def test_memory_bound_strips_give_identical_outputs_and_reject_what_cannot_fit(setup, first_run, tmp_path):
    root, _, _ = setup
    big = write_images(tmp_path / "in", {"tall": (1500, 100), "huge": (1500, 1500)}, seed=9)
    shutil.copytree(root / "model", tmp_path / "model")
    out = run_job(tmp_path, tmp_path / "strips", "--memory-limit-mb", "4")
    rows = rows_of(out)
    assert rows["tall"]["strips"] > 1
    rejected = [json.loads(line) for line in (out / names.REJECTED_FILE).read_text().splitlines()]
    assert [(os.path.basename(r["source"]), r["reason"]) for r in rejected] == [("huge.png", "too_large_for_memory")]
    os.remove(tmp_path / "in" / "huge.png")
    whole = run_job(tmp_path, tmp_path / "whole", "--memory-limit-mb", "2048")
    assert rows_of(whole)["tall"]["strips"] == 1
    assert files_of(out, skip=("config.json", names.SUCCESS_FILE, "rows", "predictions", "rejected")) == \
        files_of(whole, skip=("config.json", names.SUCCESS_FILE, "rows", "predictions", "rejected"))
    assert not list((out / names.STRIP_PARTS_DIR).rglob("*.npz"))
    assert big["tall"].shape[:2] == np.asarray(Image.open(out / names.MASKS_DIR / "tall.png")).shape


def test_shards_cover_every_image_once_and_merge(setup, first_run, tmp_path):
    root, _, _ = setup
    out = tmp_path / "sharded"
    for index in range(3):
        run_job(root, out, "--num-shards", "3", "--shard-index", str(index))
        assert (out / names.success_file(names.shard_suffix(3, index))).exists()
    merged = json.loads((out / names.SUCCESS_FILE).read_text())
    assert (merged["sources_in"], merged["predicted"], merged["rejected"]) == (8, 4, 4)
    shard_ids = [set(rows_of(out, f"predictions-{i:05d}-of-00003.parquet")) for i in range(3)]
    assert sum(len(s) for s in shard_ids) == 4 and set().union(*shard_ids) == set(SIZES)
    assert without_timing(rows_of(out)) == without_timing(rows_of(first_run))


def test_multi_process_runner_gives_the_same_outputs(setup, first_run, tmp_path):
    root, _, _ = setup
    out = run_job(root, tmp_path / "mp", "--direct_running_mode=multi_processing", "--direct_num_workers=2")
    assert without_timing(rows_of(out)) == without_timing(rows_of(first_run))
    assert files_of(out, skip=("config.json", names.SUCCESS_FILE, "rows", "predictions")) == \
        files_of(first_run, skip=("config.json", names.SUCCESS_FILE, "rows", "predictions"))


def test_binary_255_masks_use_the_card_threshold(tmp_path):
    module = export_model(str(tmp_path / "model"), kind="same", core=8, margin=4, threshold=0.8)
    images = write_images(tmp_path / "in", {"x": (19, 23)}, seed=3)
    out = run_job(tmp_path, tmp_path / "out", "--binary-255", "--tta", "flips", "--overlap", "0.25")
    mask = np.asarray(Image.open(out / names.MASKS_DIR / "x.png"))
    assert set(np.unique(mask)) <= {0, 255}
    probabilities = np.load(out / "probabilities" / "x.npy").astype(np.float32)
    sure = np.abs(probabilities[..., 1] - 0.8) > 2e-3
    assert np.array_equal(mask[sure] == 255, probabilities[..., 1][sure] >= 0.8)
    assert rows_of(out)["x"]["tta"] == "flips" and module is not None and images


def test_a_threshold_given_replaces_the_cards_and_a_rerun_with_another_predicts_again(tmp_path):
    export_model(str(tmp_path / "model"), kind="same", core=8, margin=4, threshold=0.8)
    write_images(tmp_path / "in", {"x": (19, 23)}, seed=3)
    out, masks = tmp_path / "out", []
    for threshold in (0.3, 0.6):
        run_job(tmp_path, out, "--binary-255", "--threshold", str(threshold), "--overwrite")
        mask = np.asarray(Image.open(out / names.MASKS_DIR / "x.png"))
        masks.append(mask)
        foreground = np.load(out / "probabilities" / "x.npy").astype(np.float32)[..., 1]
        sure = np.abs(foreground - threshold) > 2e-3
        assert sure.mean() > 0.9 and np.array_equal(mask[sure] == 255, foreground[sure] >= threshold)
    assert json.loads((out / names.CONFIG_FILE).read_text())["threshold"] == 0.6
    assert np.count_nonzero(masks[0]) > np.count_nonzero(masks[1])    # predicted again, not skipped


def test_config_errors_exit_2_with_one_line_and_touch_no_output(tmp_path, capsys):
    export_model(str(tmp_path / "a"), kind="same", core=8, margin=4)
    export_model(str(tmp_path / "b"), kind="same", core=8, margin=2, layers=2)
    export_model(str(tmp_path / "c"), kind="pixel", core=8, margin=4, classes=3)
    shutil.copytree(tmp_path / "a", tmp_path / "no-saved-model")
    shutil.rmtree(tmp_path / "no-saved-model" / "saved_model")
    shutil.copytree(tmp_path / "a", tmp_path / "bad-card")
    (tmp_path / "bad-card" / "model_card.json").write_text('{"format_version": 1, "task": "segmentation"}')
    write_images(tmp_path / "in", {"x": (9, 9)})
    out = tmp_path / "out"
    base = ["--input", str(tmp_path / "in"), "--output", str(out)]
    cases = {"disagree": ["--model-dir", str(tmp_path / "a"), "--model-dir", str(tmp_path / "b"), *base],
             "binary": ["--model-dir", str(tmp_path / "c"), "--binary-255", *base],
             "--threshold applies to a binary": ["--model-dir", str(tmp_path / "c"), "--threshold", "0.4", *base],
             "no model_card.json": ["--model-dir", str(tmp_path / "missing"), *base],
             "no saved_model/saved_model.pb": ["--model-dir", str(tmp_path / "no-saved-model"), *base],
             "not a valid model card": ["--model-dir", str(tmp_path / "bad-card"), *base],
             "no files found": ["--model-dir", str(tmp_path / "a"), "--input", str(tmp_path / "nothing"),
                                "--output", str(out)]}
    for message, argv in cases.items():
        assert predict.run(argv) == 2, message
        err = capsys.readouterr().err.strip()
        assert err.startswith("tessera predict: error: ") and message in err and "\n" not in err
    assert not out.exists()
    # The installed entry point: exit status 2 and the message, not a traceback.
    done = subprocess.run([sys.executable, "-m", "tessera.cli", "predict", *cases["no model_card.json"]],
                          check=False, cwd=os.path.dirname(os.path.dirname(__file__)), capture_output=True, text=True)
    assert done.returncode == 2 and "Traceback" not in done.stderr and "no model_card.json" in done.stderr


def test_local_runs_are_in_process_unless_told_otherwise():
    from apache_beam.options.pipeline_options import DirectOptions

    def direct(args):
        options = predict.make_pipeline(args)._options.view_as(DirectOptions)
        return options.direct_running_mode, options.direct_num_workers

    assert direct([]) == ("in_memory", 1)
    assert direct(["--direct_running_mode=multi_processing", "--direct_num_workers=2"]) == ("multi_processing", 2)


def test_classification_rows_have_label_and_probabilities(tmp_path):
    export_model(str(tmp_path / "a"), kind="classify", core=16, margin=0, classes=3, seed=1, input_size=16)
    export_model(str(tmp_path / "b"), kind="classify", core=16, margin=0, classes=3, seed=2, input_size=16)
    write_images(tmp_path / "in", {"cup/1": (40, 30), "cup/2": (12, 50), "book/3": (16, 16)}, seed=4)
    out = tmp_path / "out"
    argv = ["--model-dir", str(tmp_path / "a"), "--model-dir", str(tmp_path / "b"), "--input", str(tmp_path / "in"),
            "--output", str(out), "--tta", "flips"]
    assert predict.run(argv) == 0
    rows = rows_of(out)
    assert sorted(rows) == ["book/3", "cup/1", "cup/2"]
    for row in rows.values():
        assert row["task"] == "classification" and len(row["probabilities"]) == 3
        assert abs(sum(row["probabilities"]) - 1) < 1e-5
        assert row["label"] == row["class_names"][int(np.argmax(row["probabilities"]))]
        assert row["mean_confidence"] == pytest.approx(max(row["probabilities"]))
        assert row["ensemble"] == "mean" and len(row["model_ids"]) == 2 and row["mask_path"] is None


def test_list_file_and_glob_inputs_grayscale_model_and_pixel_limit(setup, tmp_path):
    root, _, _ = setup
    export_model(str(tmp_path / "gray"), kind="same", core=8, margin=4, channels=1)
    (tmp_path / "list.txt").write_text(f"# images\n{root}/in/a.png\n\n{root}/in/nested/c.png\n{root}/in/gone.png\n")
    out = tmp_path / "from-list"
    base = ["--model-dir", str(tmp_path / "gray"), "--max-image-pixels", "1000"]
    assert predict.run([*base, "--input", str(tmp_path / "list.txt"), "--output", str(out)]) == 0
    assert sorted(rows_of(out)) == ["nested/c"]  # ids relative to the listed files' common folder
    reasons = {os.path.basename(json.loads(line)["source"]): json.loads(line)["reason"]
               for line in (out / names.REJECTED_FILE).read_text().splitlines()}
    assert reasons == {"a.png": "too_large", "gone.png": "missing_file"}  # a is 37 x 61 > 1000 pixels
    mask = np.asarray(Image.open(out / names.MASKS_DIR / "nested" / "c.png"))
    assert mask.shape == SIZES["nested/c"]
    copy = tmp_path / "in"
    shutil.copytree(root / "in", copy)
    for inside, outside in ((copy / "pred", copy), (tmp_path, copy / "x")):  # output in input, and the reverse
        assert predict.run([*base, "--input", str(outside), "--output", str(inside)]) == 2
        assert not (copy / "pred").exists()
    globbed = tmp_path / "globbed"
    assert predict.run([*base, "--input", f"{copy}/[bd].png", "--output", str(globbed)]) == 0
    assert sorted(rows_of(globbed)) == ["b", "d"]


def test_rerun_with_other_settings_recomputes_instead_of_mixing(tmp_path):
    export_model(str(tmp_path / "model"), kind="same", core=8, margin=4)
    write_images(tmp_path / "in", {"x": (12, 9), "y": (7, 7)})
    out = run_job(tmp_path, tmp_path / "out")
    before = np.load(out / "probabilities" / "x.npy")
    run_job(tmp_path, out, "--tta", "dihedral", "--overwrite")
    success = json.loads((out / names.SUCCESS_FILE).read_text())
    assert (success["predicted"], success["skipped_done"]) == (2, 0)
    assert {r["tta"] for r in rows_of(out).values()} == {"dihedral"}
    assert not np.array_equal(np.load(out / "probabilities" / "x.npy"), before)


def test_classifiers_see_images_as_their_dataset_prepared_them(tmp_path):
    from pipelines.core.pixels import fit_to_size
    from pipelines.core.tiling import cut_tiles

    whole = export_model(str(tmp_path / "whole"), kind="classify", core=16, margin=0, classes=3, seed=1,
                         input_size=16, fit="pad")
    tiles = export_model(str(tmp_path / "tiles"), kind="classify", core=8, margin=2, classes=3, seed=2,
                         whole_image=False)
    images = write_images(tmp_path / "in", {"wide": (12, 40), "small": (5, 7)}, seed=5)
    for name in ("whole", "tiles"):
        assert predict.run(["--model-dir", str(tmp_path / name), "--input", str(tmp_path / "in"),
                            "--output", str(tmp_path / f"out-{name}")]) == 0
    whole_rows, tile_rows = rows_of(tmp_path / "out-whole"), rows_of(tmp_path / "out-tiles")
    for image_id, pixels in images.items():
        fitted = fit_to_size(pixels, 16, "pad")  # as preprocess --fit pad made the training inputs
        expected = whole.forward(fitted[None]).numpy()[0]
        np.testing.assert_allclose(whole_rows[image_id]["probabilities"], expected, atol=1e-5)
        assert whole_rows[image_id]["tiles"] == 1
        cut = np.stack([tile for _, tile in cut_tiles(pixels, 8, 2)])  # as preprocess cut the training tiles
        expected = tiles.forward(cut).numpy().mean(axis=0)
        np.testing.assert_allclose(tile_rows[image_id]["probabilities"], expected, atol=1e-5)
        assert tile_rows[image_id]["tiles"] == len(cut)
        assert tile_rows[image_id]["label"] == tile_rows[image_id]["class_names"][int(np.argmax(expected))]
    assert tile_rows["wide"]["tiles"] == 2 * 5


def test_unreadable_inputs_are_rejected_and_the_job_goes_on(tmp_path):
    export_model(str(tmp_path / "model"), kind="same", core=8, margin=4)
    write_images(tmp_path / "in", {"good": (9, 9)})
    (tmp_path / "in" / "folder.png").mkdir()  # a listed path that is a directory
    (tmp_path / "list.txt").write_text("in/good.png\nin/folder.png\n")
    out = tmp_path / "out"
    assert predict.run(["--model-dir", str(tmp_path / "model"), "--input", str(tmp_path / "list.txt"),
                        "--output", str(out)]) == 0
    assert sorted(rows_of(out)) == ["good"]
    rejected = [json.loads(line) for line in (out / names.REJECTED_FILE).read_text().splitlines()]
    assert [(os.path.basename(r["source"]), r["reason"]) for r in rejected] == [("folder.png", "unreadable")]
    assert "directory" in rejected[0]["detail"]


def test_switching_settings_back_and_forth_never_reuses_the_other_settings_masks(tmp_path):
    export_model(str(tmp_path / "model"), kind="same", core=8, margin=4)
    write_images(tmp_path / "in", {"x": (12, 9), "y": (7, 7)})
    out = run_job(tmp_path, tmp_path / "out")
    first = files_of(out, skip=("config.json", names.SUCCESS_FILE, "rows", "predictions"))
    run_job(tmp_path, out, "--tta", "flips", "--overlap", "0.5", "--overwrite")
    assert files_of(out, skip=("config.json", names.SUCCESS_FILE, "rows", "predictions")) != first
    run_job(tmp_path, out, "--overwrite")  # the first settings again: its old rows must not vouch for the newer masks
    success = json.loads((out / names.SUCCESS_FILE).read_text())
    assert (success["predicted"], success["skipped_done"]) == (2, 0)
    assert files_of(out, skip=("config.json", names.SUCCESS_FILE, "rows", "predictions")) == first
    assert len(list((out / "rows").glob("*/*.json"))) == 2  # only the current settings' rows remain


def test_a_killed_run_with_other_settings_leaves_no_results_of_the_previous_one(tmp_path):
    export_model(str(tmp_path / "model"), kind="same", core=8, margin=4)
    export_model(str(tmp_path / "other"), kind="same", core=8, margin=4, name="other", seed=1)
    write_images(tmp_path / "in", {"x": (12, 9)})
    out = run_job(tmp_path, tmp_path / "out")
    assert (out / names.PREDICTIONS_FILE).exists()
    kill_at("predict:started", "pipelines.predict.job",
            ["--model-dir", str(tmp_path / "other"), "--input", str(tmp_path / "in"), "--output", str(out),
             "--overwrite"], tmp_path)
    assert not (out / names.SUCCESS_FILE).exists() and not list(out.glob(names.predictions_file("*")))
    assert not list((out / "rows").rglob("*.json"))


def _predict_exit(tmp_path, model_dir) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tessera.cli", "predict", "--model-dir", str(model_dir), "--input",
                           str(tmp_path / "in"), "--output", str(tmp_path / "out")],
                          capture_output=True, text=True, timeout=300, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})


def test_a_card_and_model_of_different_exports_or_a_damaged_model_exit_2_with_a_reason(tmp_path):
    from schemas.model_card import ModelCard, saved_model_digest
    from tessera.toy_models import read_file

    write_images(tmp_path / "in", {"x": (12, 9)})
    for name, seed in (("a", 0), ("b", 1)):
        export_model(str(tmp_path / name), kind="same", core=8, margin=4, seed=seed, name=name)
    shutil.copy(tmp_path / "b" / "model_card.json", tmp_path / "a" / "model_card.json")   # a kill between two files
    mixed = _predict_exit(tmp_path, tmp_path / "a")
    assert mixed.returncode == 2 and "belongs to another SavedModel" in mixed.stderr and "Traceback" not in mixed.stderr

    export_model(str(tmp_path / "c"), kind="same", core=8, margin=4)
    card = ModelCard.from_json((tmp_path / "c" / "model_card.json").read_text())
    wrong = dataclasses.replace(card, core=6, input_size=14, output_size=14)     # geometry the model does not have
    (tmp_path / "c" / "model_card.json").write_text(wrong.to_json())
    geometry = _predict_exit(tmp_path, tmp_path / "c")
    assert geometry.returncode == 2 and "its card says" in geometry.stderr and "Traceback" not in geometry.stderr

    export_model(str(tmp_path / "d"), kind="same", core=8, margin=4)
    (data,) = (tmp_path / "d" / "saved_model" / "variables").glob("variables.data-*")
    damaged = bytearray(data.read_bytes())
    damaged[len(damaged) // 2] ^= 0xFF
    data.write_bytes(bytes(damaged))
    assert saved_model_digest(read_file(str(tmp_path / "d" / "saved_model"))) == ModelCard.from_json(
        (tmp_path / "d" / "model_card.json").read_text()).saved_model_digest   # the digest cannot see it...
    broken = _predict_exit(tmp_path, tmp_path / "d")                             # ...the variables' checksums do
    assert broken.returncode == 2 and "cannot be loaded" in broken.stderr and "Traceback" not in broken.stderr
    assert not (tmp_path / "out" / names.SUCCESS_FILE).exists()
