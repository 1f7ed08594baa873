"""Instance outputs: touching discs are one connected component but two watershed instances;
each instance has its row in objects.parquet; the labelling itself by hand."""
from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import tifffile
from PIL import Image

from pipelines.evaluate import job as evaluate
from pipelines.predict import job as predict
from pipelines.predict.instances import instance_labels, instance_table
from schemas import layout as names
from tessera.toy_models import export_model


def touching_discs(height: int = 80, width: int = 120) -> np.ndarray:
    yy, xx = np.mgrid[0:height, 0:width]
    discs = (((yy - 40) ** 2 + (xx - 30) ** 2) < 16 ** 2) | (((yy - 40) ** 2 + (xx - 58) ** 2) < 16 ** 2)
    discs |= ((yy - 12) ** 2 + (xx - 100) ** 2) < 6 ** 2
    return discs.astype(np.uint8)


def test_components_fuse_touching_discs_and_watershed_splits_them():
    mask = touching_discs()
    components = instance_labels(mask, "components")
    split = instance_labels(mask, "watershed", min_distance=5)
    assert components.max() == 2 and split.max() == 3
    assert components.dtype == split.dtype == np.uint32
    np.testing.assert_array_equal(split > 0, mask > 0)           # every foreground pixel in one instance
    areas = np.bincount(split.ravel())[1:]
    assert abs(int(areas[1]) - int(areas[2])) < 0.03 * areas[1:].sum()   # the two discs, cut at their neck
    table = instance_table(split, mask, np.full(mask.shape, 0.5))
    assert table["ymin"][0] == 7 and list(table["cls"]) == [1, 1, 1]    # ids in raster order: the small disc first
    np.testing.assert_allclose(table["confidence"] / table["area"], 0.5)
    with pytest.raises(ValueError):
        instance_labels(mask, "none")


@pytest.mark.parametrize("method, expected", [("components", 2), ("watershed", 3)])
def test_predict_writes_instance_images_and_one_object_row_each(tmp_path, method, expected):
    export_model(str(tmp_path / "model"), kind="bright", core=16, margin=4, channels=1)
    (tmp_path / "in").mkdir()
    Image.fromarray(touching_discs() * 255).save(tmp_path / "in" / "cells.png")
    out = tmp_path / "out"
    assert predict.run(["--model-dir", str(tmp_path / "model"), "--input", str(tmp_path / "in"), "--output",
                        str(out), "--instances", method]) == 0
    row = json.loads(next((out / names.ROWS_DIR).rglob("*.json")).read_text())
    labels = tifffile.imread(out / row["instances_path"])
    assert labels.dtype == np.uint32 and labels.max() == expected
    np.testing.assert_array_equal(labels, instance_labels(touching_discs(), method))
    found = pq.read_table(out / names.objects_file()).to_pylist()
    assert sorted(o["object_id"] for o in found) == list(range(1, expected + 1))
    assert sum(o["area"] for o in found) == int(touching_discs().sum())
    assert all(o["mean_confidence"] > 0.99 for o in found)
    assert predict.run(["--model-dir", str(tmp_path / "model"), "--input", str(tmp_path / "in"), "--output",
                        str(out), "--instances", method]) == 0      # done: a rerun skips it
    assert json.loads((out / names.SUCCESS_FILE).read_text())["skipped_done"] == 1
    # tessera evaluate scores the instances as the predicted objects (touching discs: one truth each)
    truth = tmp_path / "truth"
    truth.mkdir()
    tifffile.imwrite(truth / "cells.tif", instance_labels(touching_discs(), "watershed").astype(np.uint16))
    assert evaluate.run(["--predictions", str(out), "--truth", str(truth), "--truth-instances", "--mask-values",
                         "instances", "--output", str(tmp_path / "report.json")]) == 0
    report = json.loads((tmp_path / "report.json").read_text())
    (row,) = pq.read_table(tmp_path / "report.parquet").to_pylist()
    assert row["pred_objects"] == "instances" and row["objects_pred"] == expected
    assert (report["overall"]["micro"]["object_f1"] == 1.0) == (method == "watershed")
