"""Outputs that viewers open, read the way the field's readers read them: ome-zarr-py (what
napari-ome-zarr runs), ome-zarr-models (the NGFF 0.4 models), tifffile, tiffslide, OpenSlide;
and masks a person can see."""
from __future__ import annotations

import io
import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import tifffile
import zarr
from PIL import Image

from pipelines.predict import inputs as predict_inputs
from pipelines.predict import job as predict
from pipelines.predict import label_outputs, outputs
from schemas import layout as names
from tessera.toy_models import export_model

H, W = 200, 264
PIXEL_SIZE = 0.5
FLAGS = ["--overlap", "0.25", "--batch-size", "16", "--memory-limit-mb", "1", "--large-image-pixels", "10000"]


def blobs(height: int, width: int, seed: int) -> np.ndarray:
    """Bright discs on a dark ground (a few objects, not thousands of speckles)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:height, :width]
    gray = np.full((height, width), 30, np.uint8)
    for _ in range(12):
        cy, cx, r = rng.integers(10, height - 10), rng.integers(10, width - 10), rng.integers(4, 12)
        gray[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = 220
    return np.repeat(gray[..., None], 3, axis=2)


@pytest.fixture(scope="module")
def predicted(tmp_path_factory):
    """One run of a boundary model (its decoder: instances): a large OME-TIFF (block path: label
    container, probabilities, OME-TIFF copy) and a small PNG (mask PNG) in one input folder."""
    root = tmp_path_factory.mktemp("viewers")
    export_model(str(root / "model"), kind="same", core=16, margin=3, channels=3, classes=3)
    card = json.loads((root / "model" / "model_card.json").read_text())   # a boundary model: small objects
    card.update(class_names=["background", "boundary", "interior"], object_class="cell",
                decoder={"mode": "seeded", "foreground": 0.8})
    (root / "model" / "model_card.json").write_text(json.dumps(card))
    (root / "in").mkdir()
    pixels = blobs(H, W, 1)
    with tifffile.TiffWriter(root / "in" / "scan.ome.tif", bigtiff=True, ome=True) as tw:
        tw.write(pixels, tile=(64, 64), compression="zlib", photometric="rgb", subifds=1,
                 metadata={"axes": "YXS", "PhysicalSizeX": PIXEL_SIZE, "PhysicalSizeY": PIXEL_SIZE})
        tw.write(pixels[::2, ::2], tile=(64, 64), compression="zlib", photometric="rgb", subfiletype=1)
    Image.fromarray(blobs(64, 80, 2)).save(root / "in" / "small.png")
    out = root / "out"
    assert predict.run(["--model-dir", str(root / "model"), "--input", str(root / "in"), "--output", str(out),
                        "--pixel-size", str(PIXEL_SIZE), "--halo", "40",
                        "--save-probabilities", "--mask-format", "ome-tiff", *FLAGS]) == 0
    return out


def tree(folder) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


def test_a_large_image_is_one_ome_zarr_of_label_images_that_ome_zarr_py_opens(predicted):
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader

    out = predicted
    container = out / names.label_container_path("scan")       # scan.ome.tif: the id is "scan"
    assert container.is_dir() and not (out / names.MASKS_DIR / "scan.ome.ome.zarr").exists()
    classes = zarr.open_group(str(out / names.label_image_path("scan")), mode="r")
    instances = zarr.open_group(str(out / names.instance_image_path("scan")), mode="r")
    before = tree(out)
    nodes = {n.zarr.basename(): n for n in Reader(parse_url(str(container / "labels")))() if n.data}
    assert set(nodes) == {"scan.ome.zarr", "classes", "instances"}   # napari: the image, two label layers
    np.testing.assert_array_equal(np.asarray(nodes["classes"].data[0]), classes["0"][:])
    np.testing.assert_array_equal(np.asarray(nodes["instances"].data[1]), instances["1"][:])
    colors = nodes["classes"].metadata["color"]
    assert colors[0][3] == 0 and colors[1][3] == 1.0             # background transparent, objects opaque
    assert nodes["classes"].metadata["properties"] == {0: {"class": "background"}, 1: {"class": "cell"}}
    objects = pq.read_table(out / names.objects_path("scan"), use_threads=False).to_pylist()
    assert 0 < len(objects) <= label_outputs.INSTANCE_PROPERTIES_LIMIT
    listed = nodes["instances"].metadata["properties"]
    assert listed == {o["object_id"]: {"class": o["class_name"], "area": o["area"], "centroid_y": o["centroid_y"],
                                       "centroid_x": o["centroid_x"], "mean_confidence": o["mean_confidence"]}
                      for o in objects}
    assert nodes["classes"].metadata["name"] == "scan classes"
    scale = nodes["classes"].metadata["coordinateTransformations"][1][0]["scale"]
    assert scale == [2 * PIXEL_SIZE] * 2                          # micrometres, subsampled: no translation
    direct = [n for n in Reader(parse_url(str(out / names.label_image_path("scan"))))() if n.data]
    assert {n.zarr.basename() for n in direct} == {"scan.ome.zarr", "classes", "instances"}   # via its source
    whole = [n for n in Reader(parse_url(str(container)))() if n.data]          # the container: image + labels
    assert [n.zarr.basename() for n in whole] == ["scan.ome.zarr", "classes", "instances"]
    assert whole[0].metadata["name"] == "scan" and whole[0].metadata["channel_names"] == ["classes"]
    np.testing.assert_array_equal(np.asarray(whole[0].data[0]), classes["0"][:])   # the same arrays, no copy
    assert not (container / "0").exists()
    assert tree(out) == before                                    # reading wrote nothing


def test_label_groups_validate_as_ngff_04_and_a_writable_open_of_their_source_changes_nothing(predicted):
    import ome_zarr_models
    from ome_zarr_models.v04.image import Image as NgffImage
    from ome_zarr_models.v04.image_label import ImageLabel
    from ome_zarr_models.v04.labels import Labels

    out = predicted
    container = out / names.label_container_path("scan")
    assert isinstance(ome_zarr_models.open_ome_zarr(zarr.open_group(str(container / "labels"), mode="r")), Labels)
    assert isinstance(ome_zarr_models.open_ome_zarr(zarr.open_group(str(container), mode="r")), NgffImage)
    before = tree(out)
    for name in ("classes", "instances"):
        group = zarr.open_group(str(container / "labels" / name), mode="r")
        assert isinstance(ome_zarr_models.open_ome_zarr(group), ImageLabel)
        source = (container / "labels" / name / group.attrs["image-label"]["source"]["image"]).resolve()
        assert source == container.resolve()                      # never the output root
        zarr.open_group(str(source), mode="a")                    # zarr's default mode creates a missing group
    probabilities = zarr.open_group(str(out / names.probability_image_path("scan")), mode="r")
    assert isinstance(ome_zarr_models.open_ome_zarr(probabilities), NgffImage)
    assert tree(out) == before and not (out / "zarr.json").exists() and not (out / ".zgroup").exists()


def test_probability_pyramid_names_its_channels_and_places_averaged_levels(predicted):
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader

    path = predicted / names.probability_image_path("scan")
    [node] = [n for n in Reader(parse_url(str(path)))() if n.data]
    assert node.metadata["channel_names"] == ["background", "boundary", "interior"]
    transforms = node.metadata["coordinateTransformations"]
    assert transforms[0] == [{"type": "scale", "scale": [1.0, PIXEL_SIZE, PIXEL_SIZE]}]
    assert transforms[2][1] == {"type": "translation", "translation": [0.0, 1.5 * PIXEL_SIZE, 1.5 * PIXEL_SIZE]}
    level0 = np.asarray(node.data[0], np.float32)                 # level 1's pixel (0, 0): mean of 2 x 2
    assert float(node.data[1][0, 0, 0]) == pytest.approx(level0[0, :2, :2].mean(), abs=1e-3)


def test_label_ome_tiff_has_its_pixel_size_for_tifffile_tiffslide_and_openslide(predicted):
    path = predicted / names.label_tiff_path("scan")
    level0 = zarr.open_group(str(predicted / names.label_image_path("scan")), mode="r")["0"][:]
    with tifffile.TiffFile(path) as tif:
        series = tif.series[0]
        assert tif.is_ome and len(series.levels) >= 2
        np.testing.assert_array_equal(series.levels[0].asarray(), level0)
        assert 'Name="classes"' in tif.ome_metadata and f'PhysicalSizeX="{PIXEL_SIZE}"' in tif.ome_metadata
        for i, level in enumerate(series.levels):
            page = level.keyframe
            assert page.tags["ResolutionUnit"].value == 3                     # centimetre
            assert page.get_resolution() == pytest.approx((1e4 / (PIXEL_SIZE * 2 ** i),) * 2)
    tiffslide = pytest.importorskip("tiffslide")
    slide = tiffslide.TiffSlide(str(path))
    assert slide.level_count == len(series.levels)
    assert float(slide.properties["tiffslide.mpp-x"]) == pytest.approx(PIXEL_SIZE)
    openslide = pytest.importorskip("openslide")
    slide = openslide.OpenSlide(str(path))                # OpenSlide 4 reads level 0 of a SubIFD pyramid
    assert float(slide.properties["openslide.mpp-x"]) == pytest.approx(PIXEL_SIZE)
    assert slide.level_dimensions[0] == (W, H)


def test_mask_pngs_show_their_classes_in_colour_and_keep_class_ids(predicted):
    path = predicted / names.mask_path("small")
    with Image.open(path) as image:
        assert image.mode == "P"
        ids = np.asarray(image)
        rgb = np.asarray(image.convert("RGB"))
    assert set(np.unique(ids).tolist()) <= {0, 1} and (ids == 1).any()
    assert (rgb[ids == 0] == 0).all() and (rgb[ids == 1].max(axis=1) > 100).all()   # black ground, coloured objects
    row = json.loads(next((predicted / names.ROWS_DIR).rglob("small.json")).read_text())
    assert row["class_fractions"][1] == pytest.approx((ids == 1).mean())


def test_evaluate_reads_palette_masks_and_the_label_container(predicted, tmp_path):
    from pipelines.evaluate import job as evaluate

    (tmp_path / "truth").mkdir()
    with Image.open(predicted / names.mask_path("small")) as image:
        Image.fromarray(np.asarray(image)).save(tmp_path / "truth" / "small.png")   # the same ids, grayscale
    level0 = zarr.open_group(str(predicted / names.label_image_path("scan")), mode="r")["0"][:]
    Image.fromarray(level0).save(tmp_path / "truth" / "scan.png")
    assert evaluate.run(["--predictions", str(predicted), "--truth", str(tmp_path / "truth"), "--output",
                         str(tmp_path / "report.json"), "--mask-values", "ids"]) == 0
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["counts"]["evaluated"] == 2 and report["overall"]["micro"]["pixel_error"] == 0


def test_palette_png_rows_round_trip():
    mask = (np.arange(23 * 9).reshape(23, 9) % 3).astype(np.uint8)
    buffer = io.BytesIO()
    outputs.write_png_rows(buffer, 9, 23, [mask[:10], mask[10:]], palette=outputs.mask_palette(("a", "b", "c")))
    with Image.open(io.BytesIO(buffer.getvalue())) as image:
        assert image.mode == "P" and np.array_equal(np.asarray(image), mask)
        assert image.getpalette()[:9] == outputs.mask_palette(("a", "b", "c")).ravel().tolist()


@pytest.mark.parametrize("path, expected", [
    ("in/slide.ome.tif", "slide"), ("in/a/slide.OME.TIFF", "a/slide"), ("in/s.ome.zarr", "s"),
    ("in/slide.tif", "slide"), ("in/my.omelette.png", "my.omelette"), ("in/x.ome.ome.tif", "x.ome"),
])
def test_ome_is_not_part_of_an_image_id(path, expected):
    assert predict_inputs.image_id(path, "in") == expected


def test_an_ome_tiff_and_a_tiff_of_one_name_are_rejected_as_sharing_an_id(tmp_path):
    for name in ("slide.ome.tif", "slide.tif"):
        tifffile.imwrite(tmp_path / name, np.zeros((8, 8), np.uint8))
    good, bad, _ = predict_inputs.list_inputs(str(tmp_path))
    assert not good and len(bad) == 2 and {r["image_id"] for r in bad} == {"slide"}


def test_instance_properties_are_bounded(tmp_path):
    found = {"object_id": np.array([1, 2, 3]), "cls": np.array([1, 1, 1]), "area": np.array([4, 5, 6]),
             "sum_y": np.array([4.0, 10.0, 18.0]), "sum_x": np.array([0.0, 5.0, 6.0]),
             "confidence": np.array([2.0, 5.0, 3.0]),
             **{k: np.zeros(3, np.int64) for k in ("ymin", "xmin", "ymax", "xmax")}}
    table = label_outputs.objects_table("img", found, ("background", "cell"), None)
    (tmp_path / "o.parquet").write_bytes(label_outputs.parquet_bytes(table))
    listed = label_outputs.instance_properties(str(tmp_path / "o.parquet"), 3, limit=3)
    assert [p["label-value"] for p in listed] == [1, 2, 3] and listed[1]["area"] == 5
    assert listed[2]["centroid_y"] == 3.0 and listed[0]["mean_confidence"] == 0.5 and listed[0]["class"] == "cell"
    assert label_outputs.instance_properties(str(tmp_path / "o.parquet"), 3, limit=2) == []


def test_multiscales_translate_averaged_levels_by_half_their_pixel_growth():
    averaged = label_outputs.multiscales("p", 3, 0.25, channels=True, averaged=True)
    assert [d["coordinateTransformations"][-1] for d in averaged["datasets"]] == [
        {"type": "scale", "scale": [1.0, 0.25, 0.25]},
        {"type": "translation", "translation": [0.0, 0.125, 0.125]},
        {"type": "translation", "translation": [0.0, 0.375, 0.375]}]
    subsampled = label_outputs.multiscales("l", 3, None, channels=False, averaged=False)
    assert all(len(d["coordinateTransformations"]) == 1 for d in subsampled["datasets"])
    assert "unit" not in subsampled["axes"][0]
    assert label_outputs.class_colors(3)[0]["rgba"][3] == 0 and label_outputs.class_colors(3)[2]["rgba"][3] == 255


def test_a_reader_that_makes_the_output_root_a_zarr_group_does_not_disturb_reruns_or_evaluate(predicted, tmp_path):
    """zarr.open_group(path) (mode "a", what a careless reader calls) makes any folder a group
    by writing zarr.json: Tessera's outputs ignore it (it runs last: it reruns predict)."""
    from pipelines.evaluate import job as evaluate

    out = predicted
    zarr.open_group(str(out), mode="a")
    assert (out / "zarr.json").exists()
    model, source = out.parent / "model", out.parent / "in"
    assert predict.run(["--model-dir", str(model), "--input", str(source), "--output", str(out),
                        "--pixel-size", str(PIXEL_SIZE), "--halo", "40", "--save-probabilities",
                        "--mask-format", "ome-tiff", *FLAGS]) == 0
    success = json.loads((out / names.SUCCESS_FILE).read_text())
    assert (success["skipped_done"], success["rejected"]) == (2, 0)
    (tmp_path / "truth").mkdir()
    level0 = zarr.open_group(str(out / names.label_image_path("scan")), mode="r")["0"][:]
    Image.fromarray(level0).save(tmp_path / "truth" / "scan.png")
    with Image.open(out / names.mask_path("small")) as image:
        Image.fromarray(np.asarray(image)).save(tmp_path / "truth" / "small.png")
    assert evaluate.run(["--predictions", str(out), "--truth", str(tmp_path / "truth"), "--output",
                         str(tmp_path / "report.json"), "--mask-values", "ids"]) == 0
    assert json.loads((tmp_path / "report.json").read_text())["counts"]["evaluated"] == 2


def test_a_container_finished_without_instances_drops_an_earlier_runs_instances(tmp_path):
    container = str(tmp_path / "c.ome.zarr")
    for name, dtype in (("classes", "uint8"), ("instances", "uint32")):
        label_outputs.block_array(f"{container}/labels/{name}", (40, 50), 16, dtype, "s", True)[:] = 1
        label_outputs.finish_pyramid(f"{container}/labels/{name}", "c", None, labels=True, colors=name == "classes")
    label_outputs.finish_container(container, "c", ("background", "cell"), True, [])
    assert zarr.open_group(f"{container}/labels", mode="r").attrs["labels"] == ["classes", "instances"]
    label_outputs.finish_container(container, "c", ("background", "cell"), False)
    labels = zarr.open_group(f"{container}/labels", mode="r")
    assert labels.attrs["labels"] == ["classes"] and "instances" not in labels
    assert not (tmp_path / "c.ome.zarr" / "labels" / "instances").exists()
    assert zarr.open_group(container, mode="r").attrs["tessera"]["labels"] == ["labels/classes"]
