"""Predict keeps what it made: a run with other settings is refused unless --overwrite (which
leaves no output of the old settings behind), an output inside the input is refused however
the paths are written, and one image file is an input of one."""
import json
import os

import numpy as np
import pytest

from pipelines.beam.files import check_apart
from pipelines.predict import inputs as predict_inputs
from pipelines.predict import job as predict
from schemas import layout as names
from tessera.toy_models import export_model, write_images


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("reliability")
    export_model(str(root / "model"), kind="same", core=8, margin=4)
    write_images(root / "in", {"x": (12, 9), "y": (7, 7)})
    return root


def argv(root, output, *extra, input_=None):
    return ["--model-dir", str(root / "model"), "--input", str(input_ or root / "in"), "--output", str(output),
            *extra]


def files_of(output) -> dict:
    found = {}
    for folder, _, files in os.walk(output):
        for name in files:
            path = os.path.join(folder, name)
            found[os.path.relpath(path, output)] = open(path, "rb").read()
    return found


def test_other_settings_are_refused_naming_them_and_touch_nothing(setup, tmp_path, capsys):
    out = tmp_path / "out"
    assert predict.run(argv(setup, out)) == 0
    before = {k: v for k, v in files_of(out).items() if not k.startswith(names.LEASES_DIR)}
    capsys.readouterr()
    assert predict.run(argv(setup, out, "--tta", "flips", "--overlap", "0.25")) == 2
    err = capsys.readouterr().err
    assert "--overwrite" in err and 'tta: "none" -> "flips"' in err and "overlap: 0.0 -> 0.25" in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert {k: v for k, v in files_of(out).items() if not k.startswith(names.LEASES_DIR)} == before
    assert predict.run(argv(setup, out)) == 0          # the same settings: a rerun, skipping what is done
    assert json.loads((out / names.SUCCESS_FILE).read_text())["skipped_done"] == 2
    assert predict.run(argv(setup, out, "--tta", "flips", "--overwrite")) == 0
    success = json.loads((out / names.SUCCESS_FILE).read_text())
    assert (success["predicted"], success["skipped_done"]) == (2, 0)


def test_an_output_without_results_of_other_settings_is_not_refused(setup, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / names.CONFIG_FILE).write_text(json.dumps({"fingerprint": "0" * 16, "settings": {"tta": "dihedral"}}))
    assert predict.run(argv(setup, out)) == 0      # a run that wrote its config and nothing else


def test_overwrite_removes_the_outputs_the_new_settings_do_not_write(setup, tmp_path):
    out = tmp_path / "out"
    assert predict.run(argv(setup, out, "--instances", "components", "--save-probabilities", "--overlap", "0.5")) == 0
    for folder in (names.INSTANCES_DIR, names.GEOJSON_DIR, names.OBJECTS_DIR, names.PROBABILITIES_DIR,
                   names.SEAMS_DIR):
        assert list((out / folder).iterdir()), folder
    assert (out / names.objects_file()).exists()
    assert predict.run(argv(setup, out, "--instances", "none", "--overwrite")) == 0
    for folder in (names.INSTANCES_DIR, names.GEOJSON_DIR, names.OBJECTS_DIR, names.PROBABILITIES_DIR,
                   names.SEAMS_DIR):
        assert not (out / folder).exists() or not list((out / folder).rglob("*.*")), folder
    assert not (out / names.objects_file()).exists()   # no objects table of the instances run left to read
    assert sorted(p.name for p in (out / names.MASKS_DIR).iterdir()) == ["x.png", "y.png"]
    assert len(list((out / names.ROWS_DIR).rglob("*.json"))) == 2


def test_one_image_file_is_an_input_of_one(setup, tmp_path, capsys):
    out = tmp_path / "out"
    assert predict.run(argv(setup, out, input_=setup / "in" / "x.png")) == 0
    success = json.loads((out / names.SUCCESS_FILE).read_text())
    assert (success["sources_in"], success["predicted"]) == (1, 1)
    assert sorted(p.name for p in (out / names.MASKS_DIR).iterdir()) == ["x.png"]
    beside = setup / "in-copy"                      # an output beside the file (in its folder) reads nothing of it
    write_images(beside, {"z": (6, 6)})
    assert predict.run(argv(setup, beside / "pred", input_=beside / "z.png")) == 0
    assert predict.run(argv(setup, beside / "pred", input_=beside / "z.png")) == 0
    assert json.loads((beside / "pred" / names.SUCCESS_FILE).read_text())["sources_in"] == 1
    capsys.readouterr()
    assert predict.run(argv(setup, tmp_path / "none", input_=setup / "in" / "missing.png")) == 2
    assert "no files found" in capsys.readouterr().err


def test_listing_keeps_folders_globs_list_files_and_takes_one_file_or_zarr_store(setup, tmp_path):
    folder = setup / "in"
    ids = lambda spec: [i.image_id for i in predict_inputs.list_inputs(str(spec))[0]]  # noqa: E731
    assert ids(folder) == ids(f"{folder}/") == ["x", "y"]
    assert ids(f"{folder}/x.*") == ["x"]
    (tmp_path / "list.txt").write_text(f"{folder}/y.png\n")
    assert ids(tmp_path / "list.txt") == ["y"]
    assert ids(folder / "y.png") == ids(f"file://{folder}/y.png") == ["y"]
    store = tmp_path / "scan.zarr"
    (store / "0").mkdir(parents=True)
    (store / "0" / "zarr.json").write_text("{}")
    (store / "zarr.json").write_text("{}")
    assert ids(store) == ids(f"{store}/") == ["scan"]
    with pytest.raises(FileNotFoundError, match="no files found"):
        predict_inputs.list_inputs(str(folder / "absent.png"))


@pytest.mark.parametrize("input_, output", [
    ("in", "in/pred"), ("in/", "in/pred/"), ("./in", "./in/./pred"), ("{abs}/in", "in/pred"),
    ("in", "{abs}/in/pred"), ("in", "in/sub/../pred"), ("in", "in"), ("in/sub", "in"),
    ("link", "in/pred"), ("in", "link/pred"), ("in", "out-link"), ("in/*.png", "in/pred"),
    ("file://{abs}/in", "in/pred"), ("in", "file://{abs}/in/pred"), ("in/x.png", "in/x.png")])
def test_an_output_inside_the_input_is_refused_however_written(tmp_path, monkeypatch, input_, output):
    write_images(tmp_path / "in", {"x": (4, 4)})
    write_images(tmp_path / "in" / "sub", {"y": (4, 4)})
    os.symlink(tmp_path / "in", tmp_path / "link")
    os.symlink(tmp_path / "in" / "pred", tmp_path / "out-link")      # a link to where the output would be
    monkeypatch.chdir(tmp_path)
    spec, out = (p.format(abs=tmp_path) for p in (input_, output))
    with pytest.raises(ValueError, match="overlap"):
        predict_inputs.list_inputs(spec, output=predict_inputs.absolute(out))


@pytest.mark.parametrize("reads, writes, apart", [
    ("gs://b/in", "gs://b/in/pred", False), ("gs://b/in/", "gs://b/in/./pred/", False),
    ("gs://b//in", "gs://b/in//pred", False), ("gs://b/x/../in", "gs://b/in/pred", False),
    ("gs://b/in/pred/..", "gs://b/in/pred", False), ("gs://b", "gs://b/pred", False),
    ("gs://b/in", "gs://b/input-pred", True), ("gs://b/in", "gs://c/in/pred", True)])
def test_url_paths_are_compared_normalised(reads, writes, apart):
    check = lambda: check_apart(predict_inputs.comparable(reads), predict_inputs.comparable(writes))  # noqa: E731
    if apart:
        check()
    else:
        with pytest.raises(ValueError, match="overlap"):
            check()


def test_predict_refuses_an_output_inside_the_input_before_writing(setup, tmp_path, capsys):
    write_images(tmp_path / "in", {"x": (6, 6)})
    assert predict.run(argv(setup, f"{tmp_path}/in/./pred/", input_=f"{tmp_path}/in/")) == 2
    err = capsys.readouterr().err
    assert "overlap" in err and "outside the input" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "in" / "pred").exists()
    assert np.asarray(sorted(os.listdir(tmp_path / "in"))).tolist() == ["x.png"]


def test_gs_inputs_one_object_and_an_output_inside_on_the_object_store(setup, tmp_path, gcs_prefix, capsys):
    from apache_beam.io.filesystems import FileSystems

    from tests.conftest import upload_tree

    write_images(tmp_path / "in", {"x": (6, 6), "sub/y": (5, 5)})
    upload_tree(tmp_path / "in", f"{gcs_prefix}/images")
    for output in (f"{gcs_prefix}/images/./pred/", f"{gcs_prefix}//images/pred", f"{gcs_prefix}/x/../images/pred"):
        assert predict.run(argv(setup, output, input_=f"{gcs_prefix}/images/")) == 2, output
        assert "overlap" in capsys.readouterr().err
    assert not FileSystems.match([f"{gcs_prefix}/images/pred/**"])[0].metadata_list
    out = f"{gcs_prefix}/images/sub/pred"          # beside the one object read: nothing of it is read back
    assert predict.run(argv(setup, out, input_=f"{gcs_prefix}/images/sub/y.png")) == 0
    with FileSystems.open(f"{out}/{names.SUCCESS_FILE}") as handle:
        assert json.loads(handle.read())["predicted"] == 1
