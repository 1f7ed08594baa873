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


def rimmed_discs(height: int = 96, width: int = 120) -> tuple[np.ndarray, np.ndarray]:
    """(image, truth ids): two touching discs and a small one, drawn bright with a mid-grey rim
    (also along the line where the two touch), as a boundary model's toy sees objects."""
    from scipy import ndimage

    yy, xx = np.mgrid[0:height, 0:width]
    truth = np.zeros((height, width), np.int32)
    truth[((yy - 44) ** 2 + (xx - 30) ** 2) < 17 ** 2] = 1
    truth[((yy - 44) ** 2 + (xx - 62) ** 2) < 17 ** 2] = 2          # overlaps 1: they touch along a line
    truth[((yy - 12) ** 2 + (xx - 100) ** 2) < 7 ** 2] = 3
    rim = (truth > 0) & ((ndimage.maximum_filter(truth, 3) != truth) | (ndimage.minimum_filter(truth, 3) != truth))
    image = np.where(truth > 0, 255, 0).astype(np.uint8)
    image[rim] = 128
    return image, truth


def predict_boundary(tmp_path, *flags, decoder=None, size=(96, 120)):
    export_model(str(tmp_path / "model"), kind="boundary", core=16, margin=4, channels=1, decoder=decoder)
    (tmp_path / "in").mkdir(exist_ok=True)
    image, truth = rimmed_discs(*size)
    Image.fromarray(image).save(tmp_path / "in" / "cells.png")
    out = tmp_path / ("out" + "".join(f.strip("-") for f in flags))
    assert predict.run(["--model-dir", str(tmp_path / "model"), "--input", str(tmp_path / "in"), "--output",
                        str(out), *flags]) == 0
    return out, truth


def outputs_of(out):
    row = json.loads(next((out / names.ROWS_DIR).rglob("*.json")).read_text())
    labels = tifffile.imread(out / row["instances_path"])
    mask = np.asarray(Image.open(out / row["mask_path"]))
    objects = pq.read_table(out / names.objects_file()).to_pylist()
    return row, labels, mask, objects


def test_a_boundary_model_decodes_touching_objects_apart_and_its_outputs_agree(tmp_path):
    out, truth = predict_boundary(tmp_path, "--save-probabilities")
    row, labels, mask, objects = outputs_of(out)
    assert labels.dtype == np.uint32 and labels.max() == 3               # seeded: the touching discs apart
    for i in range(1, 4):                                                # each object is one disc
        overlap = np.bincount(labels[truth == i], minlength=4)
        j = int(overlap.argmax())
        iou = overlap[j] / np.count_nonzero((truth == i) | (labels == j))
        assert j > 0 and iou > 0.9, (i, j, iou)
    # mask = the output classes (0 background, 1 the object class), where the objects are
    assert row["class_names"] == ["background", "cell"] and mask.max() == 1
    np.testing.assert_array_equal(mask, (labels > 0).astype(np.uint8))
    # one object row per id of the tif, its area the tif's, its class the object class
    assert sorted(o["object_id"] for o in objects) == list(range(1, 4))
    areas = np.bincount(labels.ravel())
    assert all(o["area"] == areas[o["object_id"]] and o["class_name"] == "cell" for o in objects)
    assert row["class_fractions"][1] == pytest.approx(np.count_nonzero(labels) / labels.size)
    # outlines: one polygon per object (area = its pixels here: convex discs), the same in the GeoJSON
    import shapely.geometry

    assert all(shapely.geometry.Polygon(o["outline"][0]).area == o["area"] for o in objects)
    collection = json.loads((out / names.geojson_path("cells")).read_text())
    features = collection["features"]
    assert len(features) == 3 and {f["properties"]["classification"]["name"] for f in features} == {"cell"}
    assert sorted(f["geometry"]["coordinates"][0] == o["outline"][0] for f, o in zip(features, objects)) == [True] * 3
    probabilities = np.load(out / row["probabilities_path"])
    assert probabilities.shape == (*truth.shape, 3)                      # the model's own classes
    # components of the same foreground merge the touching discs (what the decoder fixes)
    out, _ = predict_boundary(tmp_path, "--instances", "components")
    row, labels, mask, objects = outputs_of(out)
    assert labels.max() == 2 and len(objects) == 2 and row["class_names"] == ["background", "cell"]
    np.testing.assert_array_equal(mask, (labels > 0).astype(np.uint8))


def test_decoder_flags_override_the_card_and_none_keeps_the_raw_classes(tmp_path):
    out, truth = predict_boundary(tmp_path, "--decoder", "partition", "--expand", "3", "--min-size", "200")
    row, labels, mask, objects = outputs_of(out)
    assert labels.max() == 2 and len(objects) == 2             # the small disc (~150 px) is dropped...
    assert not mask[truth == 3].any()                          # ...from the mask too
    config = json.loads((out / names.CONFIG_FILE).read_text())
    decoder = json.loads(config["settings"]["decoder"])
    assert decoder["mode"] == "partition" and decoder["expand"] == 3 and decoder["seed"] == 0.5
    out, _ = predict_boundary(tmp_path, "--binary-255")
    row, labels, mask, objects = outputs_of(out)
    np.testing.assert_array_equal(mask, np.where(labels > 0, 255, 0))        # the decoded objects as 0/255
    out, _ = predict_boundary(tmp_path, "--instances", "none")
    row = json.loads(next((out / names.ROWS_DIR).rglob("*.json")).read_text())
    mask = np.asarray(Image.open(out / row["mask_path"]))
    assert row["class_names"] == ["background", "boundary", "interior"] and mask.max() == 2
    assert row["instances_path"] is None and not (out / names.INSTANCES_DIR).exists()


def test_a_boundary_model_decoded_in_strips_equals_it_decoded_whole_and_too_large_is_refused(tmp_path):
    whole, _ = predict_boundary(tmp_path, "--overlap", "0.5", size=(300, 120))    # overlap: strips cost more
    strips, _ = predict_boundary(tmp_path, "--overlap", "0.5", "--memory-limit-mb", "3", "--large-image-pixels", "0",
                                 size=(300, 120))            # (no block path: its halo needs more than 3 MiB)
    row_whole, *outputs_whole = outputs_of(whole)
    row_strips, *outputs_strips = outputs_of(strips)
    assert row_whole["strips"] == 1 and row_strips["strips"] > 1
    np.testing.assert_array_equal(outputs_whole[0], outputs_strips[0])
    np.testing.assert_array_equal(outputs_whole[1], outputs_strips[1])
    same = lambda rows: [{k: v for k, v in o.items() if not k.endswith("_um")} for o in rows]  # noqa: E731 (NaN)
    assert same(outputs_whole[2]) == same(outputs_strips[2])
    refused, _ = predict_boundary(tmp_path, "--overlap", "0.5", "--memory-limit-mb", "1", "--large-image-pixels", "0",
                                  size=(300, 120))
    (rejected,) = [json.loads(line) for line in (refused / names.REJECTED_FILE).read_text().splitlines()]
    assert rejected["reason"] == "too_large_for_memory" and "seeded decoder" in rejected["detail"]


def test_decoder_settings_a_model_cannot_use_exit_2_with_the_reason(tmp_path, capsys):
    export_model(str(tmp_path / "plain"), kind="bright", core=16, margin=4, channels=1)
    (tmp_path / "in").mkdir()
    Image.fromarray(touching_discs() * 255).save(tmp_path / "in" / "cells.png")
    for flags, reason in ((["--decoder", "seeded"], "boundary target"),
                          (["--instances", "components", "--decoder", "watershed"], "disagree"),
                          (["--instances", "none", "--min-size", "5"], "drop --instances none"),
                          (["--seed-threshold", "1.5"], "--seed-threshold")):
        assert predict.run(["--model-dir", str(tmp_path / "plain"), "--input", str(tmp_path / "in"),
                            "--output", str(tmp_path / "out"), *flags]) == 2, flags
        assert reason in capsys.readouterr().err, flags
    assert not (tmp_path / "out").exists()


def test_a_plain_model_with_a_decoder_setting_gets_instances_and_min_size_leaves_the_mask(tmp_path):
    export_model(str(tmp_path / "model"), kind="bright", core=16, margin=4, channels=1)
    (tmp_path / "in").mkdir()
    Image.fromarray(touching_discs() * 255).save(tmp_path / "in" / "cells.png")
    out = tmp_path / "out"
    assert predict.run(["--model-dir", str(tmp_path / "model"), "--input", str(tmp_path / "in"), "--output",
                        str(out), "--min-size", "200"]) == 0          # instances auto + a decoder setting
    row, labels, mask, objects = outputs_of(out)
    assert labels.max() == 1 and [o["area"] for o in objects] == [int(np.count_nonzero(labels))]
    np.testing.assert_array_equal(mask, (labels > 0).astype(np.uint8))   # the small disc left the mask too
    assert row["class_names"] == ["background", "foreground"]


def test_which_decoder_runs_the_card_s_with_the_settings_given_on_top():
    from pipelines.predict.instances import resolve_decoder
    from schemas.decoder import DecoderParams
    from schemas.model_card import ModelCard

    base = dict(task="segmentation", model_name="m", core=8, margin=0, input_size=8, output_size=8, channels=1)
    calibrated = {**DecoderParams("partition", seed=0.7, expand=4).to_dict(), "rule": "max rand", "value": 0.9}
    boundary = ModelCard(**base, class_names=("background", "boundary", "interior"), object_class="cell",
                         decoder=calibrated)
    plain = ModelCard(**base, class_names=("background", "fg"), decoder=DecoderParams().to_dict())
    none = {}
    assert resolve_decoder("auto", [boundary], none) == DecoderParams("partition", seed=0.7, expand=4)
    assert resolve_decoder("auto", [plain], none) is None                       # as before: no instances
    assert resolve_decoder("auto", [plain], {"connectivity": 8}) is None        # objects of large images only
    assert resolve_decoder("auto", [plain], {"min_size": 3}) == DecoderParams("components", min_size=3)
    assert resolve_decoder("watershed", [plain], {"min_distance": 2}) == DecoderParams("watershed", min_distance=2)
    assert resolve_decoder("auto", [boundary], {"mode": "seeded", "foreground": 0.3}) == \
        DecoderParams("seeded", seed=0.7, foreground=0.3, expand=4)
    assert resolve_decoder("components", [boundary], none).mode == "components"
    assert resolve_decoder("none", [boundary], {"connectivity": 8}) is None
    older = ModelCard(**base, class_names=("background", "boundary", "interior"), object_class="cell")
    assert resolve_decoder("auto", [older], none) == DecoderParams("seeded")   # a card without a decoder
    other = ModelCard(**base, class_names=("background", "boundary", "interior"), object_class="cell",
                      decoder=DecoderParams("seeded").to_dict())
    with pytest.raises(ValueError, match="different decoders"):
        resolve_decoder("auto", [boundary, other], none)
    assert resolve_decoder("auto", [boundary, other], {"mode": "seeded"}).mode == "seeded"
    with pytest.raises(ValueError, match="boundary target"):
        resolve_decoder("auto", [plain], {"mode": "partition"})


def test_the_defaults_keep_the_settings_fingerprint_of_earlier_runs(tmp_path):
    """--instances auto and --connectivity 0 resolve, for a plain model, to what the old defaults
    (none, 4) wrote: a finished run is not predicted again after the upgrade."""
    from pipelines.predict import outputs

    export_model(str(tmp_path / "model"), kind="bright", core=16, margin=4, channels=1)

    def spec_of(*flags):
        args = predict.build_parser().parse_args(["--model-dir", str(tmp_path / "model"), "--input", "x",
                                                  "--output", str(tmp_path / "out"), *flags])
        return predict.job_spec(predict.config_from_args(args))[0]

    default, old = spec_of(), spec_of("--instances", "none", "--connectivity", "4")
    assert default.decoder is None and default.connectivity == 4
    assert default.layout.settings.fingerprint() == old.layout.settings.fingerprint()
    s = default.layout.settings
    assert s.fingerprint() == outputs.OutputSettings(s.task, s.class_names, s.model_ids).fingerprint()
