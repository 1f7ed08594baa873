"""Each composite transform of the prediction job on a TestPipeline, checked with assert_that; gs:// end to end."""
import json
import os

import apache_beam as beam
import numpy as np
import pyarrow.parquet as pq
import pytest
from apache_beam.io.filesystems import FileSystems
from apache_beam.testing import test_pipeline
from apache_beam.testing.util import assert_that, equal_to, is_not_empty
from PIL import Image

from pipelines.core import images
from pipelines.predict import job as predict
from pipelines.predict import models, outputs, plan
from pipelines.predict import transforms as pt
from schemas import layout as names
from tessera.toy_models import export_model, whole_image_probabilities, write_images
from tests.conftest import upload_tree


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    root = tmp_path_factory.mktemp("tmodel")
    module = export_model(str(root / "model"), kind="same", core=8, margin=4, layers=2)
    return str(root / "model"), module


def spec_for(output, memory_bytes=64 * 2**20):
    card, model_id = models.read_card(output[0])
    settings = outputs.OutputSettings(card.task, card.class_names, (model_id,), save_probabilities=True)
    g = plan.Geometry(card.task, card.core, card.margin, card.channels, 1, card.num_classes, card.core, 4, True)
    return pt.JobSpec(g, images.ImagePolicy(), outputs.OutputLayout(output[1], settings), memory_bytes,
                      input_size=card.input_size)


def test_cut_strips_emits_tasks_and_rejects_bad_files(model, tmp_path):
    write_images(tmp_path / "in", {"a": (20, 12), "big": (300, 40)})
    (tmp_path / "in" / "bad.png").write_bytes(b"nope")
    spec = spec_for((model[0], str(tmp_path / "out")), memory_bytes=300_000)
    inputs = [pt.ImageInput(name, str(tmp_path / "in" / f"{name}.png")) for name in ("a", "big", "bad")]
    inputs.append(pt.ImageInput("gone", str(tmp_path / "in" / "gone.png"), size_bytes=99))  # deleted since listed
    with test_pipeline.TestPipeline() as p:
        cut = p | beam.Create(inputs) | pt.CutStrips(spec)
        tiles = cut.tasks | "Tiles" >> beam.Map(lambda t: (t.image_id, t.strips, t.num_tiles))
        per_image = (cut.tasks | "Count" >> beam.Map(lambda t: (t.image_id, t.num_tiles)) | beam.CombinePerKey(sum))
        assert_that(per_image, equal_to([("a", 3 * 2), ("big", 38 * 5)]), label="AllCores")
        assert_that(tiles | beam.Filter(lambda t: t[0] == "big" and t[1] > 1), is_not_empty(), label="BigInStrips")
        assert_that(cut[pt.REJECTED] | beam.Map(lambda r: (r["image_id"], r["reason"])),
                    equal_to([("bad", "not_an_image"), ("gone", "missing_file")]), label="Rejected")


def test_predict_tiles_scores_every_tile(model, tmp_path):
    path, module = model
    pixels = write_images(tmp_path / "in", {"a": (11, 17)})["a"]
    g = plan.Geometry("segmentation", 8, 4, 3, 1, 2, 8, 3)
    tasks = list(plan.strip_tasks("a", "a.png", pixels, g, [(0, 6), (6, 11)]))
    expected = whole_image_probabilities(module, pixels, 4)

    def check(results):
        assert sorted(r.example.strip for r in results) == [0, 1]
        for r in results:
            assert r.inference.shape == (r.example.num_tiles, 8, 8, 2)
            for (y, x, h, w), score in zip(r.example.boxes, r.inference):
                np.testing.assert_allclose(score[:h, :w], expected[y:y + h, x:x + w], atol=1e-4)

    with test_pipeline.TestPipeline() as p:
        scored = p | beam.Create(tasks) | pt.PredictTiles(models.TileModelHandler([path], batch_size=3))
        assert_that(scored, check)


def test_stitch_images_writes_each_image_once_from_one_or_many_strips(model, tmp_path):
    path, module = model
    pixels = write_images(tmp_path / "in", {"one": (9, 10), "many": (30, 10)})
    spec = spec_for((path, str(tmp_path / "out")))
    g = spec.geometry
    predictor = models.load_predictor([path], "none", "mean")
    tasks = [*plan.strip_tasks("one", "one.png", pixels["one"], g, [(0, 9)]),
             *plan.strip_tasks("many", "many.png", pixels["many"], g, plan.strip_rows(30, g, 1))]
    scored = [models.PredictionResult(t, s) for t, s in zip(tasks, models.predict_tasks(predictor, tasks, 4))]
    with test_pipeline.TestPipeline() as p:
        rows = p | beam.Create(scored) | pt.StitchImages(spec)
        assert_that(rows | beam.Map(lambda r: (r["image_id"], r["strips"], r["height"])),
                    equal_to([("one", 1, 9), ("many", 4, 30)]))
    for name, image in pixels.items():
        mask = np.asarray(Image.open(tmp_path / "out" / names.MASKS_DIR / f"{name}.png"))
        expected = whole_image_probabilities(module, image, 4).argmax(-1)
        assert np.array_equal(mask, expected)
        assert json.loads((tmp_path / "out" / spec.layout.row(name)).read_text())["image_id"] == name


def test_write_rejected_writes_one_record_per_source(tmp_path):
    layout = outputs.OutputLayout(str(tmp_path), outputs.OutputSettings("segmentation", ("a", "b"), ()))
    records = [{"source": f"/x/{i}.png", "reason": "unreadable", "detail": "d", "image_id": str(i)} for i in range(3)]
    with test_pipeline.TestPipeline() as p:
        written = p | beam.Create(records) | pt.WriteRejected(layout)
        assert_that(written | beam.Map(lambda r: r["image_id"]), equal_to(["0", "1", "2"]))
    back = [json.loads((tmp_path / layout.rejected(r["source"])).read_text()) for r in records]
    assert back == records


def test_predict_reads_and_writes_gs_paths(model, tmp_path, gcs_prefix):
    path, module = model
    pixels = write_images(tmp_path / "in", {"x": (13, 21), "dir/y": (8, 8)})
    upload_tree(tmp_path / "in", f"{gcs_prefix}/images")
    upload_tree(path, f"{gcs_prefix}/model")
    out = f"{gcs_prefix}/pred"
    assert predict.run(["--model-dir", f"{gcs_prefix}/model", "--input", f"{gcs_prefix}/images", "--output", out]) == 0
    with FileSystems.open(f"{out}/{names.SUCCESS_FILE}") as f:
        assert json.loads(f.read())["predicted"] == 2
    with FileSystems.open(f"{out}/{names.PREDICTIONS_FILE}") as f:
        assert sorted(pq.read_table(f).column("image_id").to_pylist()) == ["dir/y", "x"]
    for name, image in pixels.items():
        with FileSystems.open(f"{out}/{names.mask_path(name)}") as f:
            mask = np.asarray(Image.open(f))
        assert np.array_equal(mask, whole_image_probabilities(module, image, 4).argmax(-1))
    assert predict.run(["--model-dir", f"{gcs_prefix}/model", "--input", f"{gcs_prefix}/images", "--output", out]) == 0
    with FileSystems.open(f"{out}/{names.SUCCESS_FILE}") as f:
        assert json.loads(f.read())["skipped_done"] == 2
    assert not os.path.exists(out)  # nothing leaked to a local folder named like the URL
