"""Images larger than memory: a tiled TIFF predicted block by block over the workers equals
the whole-image prediction pixel for pixel, in-process and multi-process alike, resumes
per block after a kill, and leaves an OME-Zarr label pyramid that zarr opens."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
import tifffile
import zarr
from PIL import Image

from pipelines.core import tiling
from pipelines.evaluate import job as evaluate
from pipelines.predict import blocks, label_outputs
from pipelines.predict import job as predict
from pipelines.predict.plan import Geometry, stride_for
from schemas import layout as names
from tessera.toy_models import export_model

H, W = 301, 437
FLAGS = ["--overlap", "0.25", "--tta", "flips", "--batch-size", "16"]
SMALL_BLOCKS = ["--memory-limit-mb", "1"]     # several blocks even for this image


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("large")
    export_model(str(root / "model"), kind="same", core=16, margin=3, channels=3)
    pixels = np.random.default_rng(5).integers(0, 256, (H, W, 3), dtype=np.uint8)
    (root / "png").mkdir()
    Image.fromarray(pixels).save(root / "png" / "scan.png")
    (root / "tiff").mkdir()
    with tifffile.TiffWriter(root / "tiff" / "scan.tif", bigtiff=True) as tw:
        tw.write(pixels, tile=(64, 64), compression="zlib", photometric="rgb", subifds=1)
        tw.write(pixels[::2, ::2], tile=(64, 64), compression="zlib", photometric="rgb", subfiletype=1)
    assert predict.run(["--model-dir", str(root / "model"), "--input", str(root / "png"), "--output",
                        str(root / "whole"), *FLAGS]) == 0
    return root, np.asarray(Image.open(root / "whole" / names.mask_path("scan")))


def run_blocks(root, out, *beam) -> int:
    return predict.run(["--model-dir", str(root / "model"), "--input", str(root / "tiff"), "--output", str(out),
                        "--large-image-pixels", "10000", *FLAGS, *SMALL_BLOCKS, *beam])


def label_image(out) -> np.ndarray:
    return zarr.open_group(str(out / names.label_image_path("scan")), mode="r")["0"][:]


def test_blocks_equal_the_whole_image_prediction_and_open_as_ome_zarr(setup, tmp_path):
    root, whole = setup
    out = tmp_path / "blocks"
    assert run_blocks(root, out) == 0
    np.testing.assert_array_equal(label_image(out), whole)
    group = zarr.open_group(str(out / names.label_image_path("scan")), mode="r")
    multiscales = group.attrs["multiscales"][0]
    assert [d["path"] for d in multiscales["datasets"]] == [str(i) for i in range(len(multiscales["datasets"]))]
    assert len(multiscales["datasets"]) >= 2 and group["1"].shape == (-(-H // 2), -(-W // 2))
    np.testing.assert_array_equal(group["1"][:], whole[::2, ::2])
    assert "image-label" in group.attrs
    g = Geometry("segmentation", 16, 3, 3, 1, 2, stride_for(16, 0.25), 16)
    side = blocks.block_side(g, 2**20)
    assert group["0"].chunks == (side, side) and len(blocks.plan_blocks(H, W, side)) > 4  # really in blocks
    row = json.loads(next((out / names.ROWS_DIR).rglob("*.json")).read_text())
    assert row["mask_path"] == names.label_container_path("scan") and row["height"] == H and row["width"] == W
    whole_row = json.loads(next((root / "whole" / names.ROWS_DIR).rglob("*.json")).read_text())
    # seam QA: this toy model sees its whole receptive field in every tile, so tiles agree exactly
    assert whole_row["seam_disagreement"] == pytest.approx(0, abs=1e-6) and whole_row["seam_flip_fraction"] == 0
    for key in ("seam_disagreement", "seam_flip_fraction"):
        assert row[key] == pytest.approx(whole_row[key], rel=1e-9)          # the same seams, by blocks
    fractions = np.bincount(whole.ravel(), minlength=2) / whole.size
    np.testing.assert_allclose(row["class_fractions"], fractions, rtol=1e-6)
    thumbnail = np.asarray(Image.open(out / names.overlay_path("scan")))
    assert thumbnail.shape == (H, W, 3)           # (1024 px long side at most: this one is small)
    success = json.loads((out / names.SUCCESS_FILE).read_text())
    assert (success["predicted"], success["rejected"]) == (1, 0)
    import pyarrow.parquet as pq
    from scipy import ndimage

    found = pq.read_table(out / names.objects_file()).to_pylist()         # objects counted once over blocks
    labels, count = ndimage.label(whole == 1)
    assert len(found) == count == row["components"] and all(o["class_name"] == "foreground" for o in found)
    assert sorted(o["area"] for o in found) == sorted(np.bincount(labels.ravel())[1:].tolist())
    assert run_blocks(root, out) == 0             # a rerun with the same settings does nothing
    assert json.loads((out / names.SUCCESS_FILE).read_text())["skipped_done"] == 1
    (tmp_path / "truth").mkdir()                  # tessera evaluate reads the label pyramid
    truth = whole.copy()
    truth[:40] = 1 - truth[:40]
    Image.fromarray(truth).save(tmp_path / "truth" / "scan.png")
    assert evaluate.run(["--predictions", str(out), "--truth", str(tmp_path / "truth"), "--output",
                         str(tmp_path / "report.json"), "--mask-values", "ids"]) == 0
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["counts"]["evaluated"] == 1
    assert report["overall"]["micro"]["pixel_error"] == pytest.approx(40 * W / (H * W))


def test_multi_process_blocks_are_byte_identical(setup, tmp_path):
    root, whole = setup
    out = tmp_path / "multi"
    assert run_blocks(root, out, "--direct_running_mode=multi_processing", "--direct_num_workers=2") == 0
    np.testing.assert_array_equal(label_image(out), whole)


def test_a_killed_run_resumes_only_the_blocks_not_done(setup, tmp_path):
    from tests.crash import kill_at

    root, whole = setup
    out = tmp_path / "killed"
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    kill_at("predict:block-done", "pipelines.predict.job",
            ["--model-dir", str(root / "model"), "--input", str(root / "tiff"), "--output", str(out),
             "--large-image-pixels", "10000", "--lease-ttl-s", "1", *FLAGS, *SMALL_BLOCKS], tmp_path)
    markers = list((out / names.BLOCKS_DIR).rglob("*.npz"))
    assert len(markers) >= 1 and not (out / names.SUCCESS_FILE).exists()
    import time

    time.sleep(1.5)
    assert run_blocks(root, out) == 0
    np.testing.assert_array_equal(label_image(out), whole)


def test_one_shared_model_copy_per_machine_predicts_the_same(setup, tmp_path):
    root, whole = setup
    out = tmp_path / "shared"
    assert predict.run(["--model-dir", str(root / "model"), "--input", str(root / "png"), "--output", str(out),
                        *FLAGS, "--model-copies", "1", "--direct_running_mode=multi_processing",
                        "--direct_num_workers=2"]) == 0
    np.testing.assert_array_equal(np.asarray(Image.open(out / names.mask_path("scan"))), whole)


def test_seam_qa_sees_tiles_that_disagree(setup, tmp_path):
    root, _ = setup
    export_model(str(tmp_path / "short"), kind="same", core=16, margin=1, channels=3, layers=3)  # sees too little
    out = tmp_path / "seams"
    assert predict.run(["--model-dir", str(tmp_path / "short"), "--input", str(root / "png"), "--output", str(out),
                        *FLAGS]) == 0
    row = json.loads(next((out / names.ROWS_DIR).rglob("*.json")).read_text())
    assert row["seam_disagreement"] > 0.001 and row["seam_flip_fraction"] > 0
    heat = np.asarray(Image.open(out / row["seam_map_path"]))
    assert heat.shape == (H, W, 3)                 # the overlay's size (this image is under 1024 px)
    covered = np.zeros((H, W), int)
    for y, x, h, w in tiling.core_grid(H, W, 16, stride_for(16, 0.25)):
        covered[y:y + h, x:x + w] += 1
    assert not heat[covered == 1].any()            # heat only where tiles overlap ...
    assert (heat[covered > 1][:, 0] > 0).mean() > 0.5   # ... and there, mostly (a toy that sees too little)
    by_blocks = tmp_path / "by_blocks"
    assert predict.run(["--model-dir", str(tmp_path / "short"), "--input", str(root / "tiff"), "--output",
                        str(by_blocks), "--large-image-pixels", "10000", *FLAGS, *SMALL_BLOCKS]) == 0
    block_row = json.loads(next((by_blocks / names.ROWS_DIR).rglob("*.json")).read_text())
    np.testing.assert_array_equal(np.asarray(Image.open(by_blocks / block_row["seam_map_path"])), heat)
    disjoint = tmp_path / "disjoint"
    assert predict.run(["--model-dir", str(tmp_path / "short"), "--input", str(root / "png"), "--output",
                        str(disjoint)]) == 0
    row = json.loads(next((disjoint / names.ROWS_DIR).rglob("*.json")).read_text())
    assert row["seam_disagreement"] is None and row["seam_flip_fraction"] is None   # no overlap, nothing to compare
    assert row["seam_map_path"] is None and not (disjoint / names.SEAMS_DIR).exists()


def test_an_ome_tiff_pyramid_with_the_pixel_size_beside_the_zarr(setup, tmp_path):
    root, whole = setup
    pixels = np.asarray(Image.open(root / "png" / "scan.png"))
    (tmp_path / "in").mkdir()
    with tifffile.TiffWriter(tmp_path / "in" / "scan.ome.tif", bigtiff=True, ome=True) as tw:
        tw.write(pixels, tile=(64, 64), compression="zlib", photometric="rgb", subifds=1,
                 metadata={"axes": "YXS", "PhysicalSizeX": 0.5, "PhysicalSizeY": 0.5})
        tw.write(pixels[::2, ::2], tile=(64, 64), compression="zlib", photometric="rgb", subfiletype=1)
    out = tmp_path / "out"
    assert predict.run(["--model-dir", str(root / "model"), "--input", str(tmp_path / "in"), "--output", str(out),
                        "--large-image-pixels", "10000", "--pixel-size", "0.5", "--mask-format", "ome-tiff",
                        *FLAGS, *SMALL_BLOCKS]) == 0
    image_id = "scan"                  # scan.ome.tif: .ome is not part of the id
    with tifffile.TiffFile(out / names.label_tiff_path(image_id)) as tif:
        assert tif.is_ome and len(tif.series[0].levels) >= 2
        np.testing.assert_array_equal(tif.series[0].levels[0].asarray(), whole)
        np.testing.assert_array_equal(tif.series[0].levels[1].asarray(), whole[::2, ::2])
        assert 'PhysicalSizeX="0.5"' in tif.ome_metadata
    group = zarr.open_group(str(out / names.label_image_path(image_id)), mode="r")
    assert group.attrs["multiscales"][0]["datasets"][1]["coordinateTransformations"][0]["scale"] == [1.0, 1.0]
    import pyarrow.parquet as pq

    found = pq.read_table(out / names.objects_file()).to_pylist()
    assert found and all(o["centroid_x_um"] == pytest.approx(o["centroid_x"] * 0.5) for o in found)


def test_gs_tiff_and_ome_zarr_inputs_predicted_by_block_into_a_gs_output(setup, tmp_path, gcs_prefix):
    from apache_beam.io.filesystems import FileSystems

    from pipelines.beam.zarr_store import FileSystemsStore
    from tests.conftest import upload_tree

    root, whole = setup
    pixels = np.asarray(Image.open(root / "png" / "scan.png"))
    local = tmp_path / "in"
    local.mkdir()
    (local / "scan.tif").write_bytes((root / "tiff" / "scan.tif").read_bytes())
    image = zarr.open_group(str(local / "cells.zarr"), mode="w", zarr_format=2)
    image.create_array("0", data=np.moveaxis(pixels, -1, 0), chunks=(3, 64, 64))
    image.attrs["multiscales"] = [{"version": "0.4", "axes": [{"name": "c", "type": "channel"},
                                                              {"name": "y", "type": "space"},
                                                              {"name": "x", "type": "space"}],
                                   "datasets": [{"path": "0", "coordinateTransformations": [
                                       {"type": "scale", "scale": [1.0, 1.0, 1.0]}]}]}]
    upload_tree(local, f"{gcs_prefix}/in")
    out = f"{gcs_prefix}/pred"
    argv = ["--model-dir", str(root / "model"), "--input", f"{gcs_prefix}/in", "--output", out,
            "--large-image-pixels", "10000", "--mask-format", "ome-tiff", *FLAGS, *SMALL_BLOCKS]
    assert predict.run(argv) == 0
    for image_id in ("scan", "cells"):
        group = zarr.open_group(FileSystemsStore(f"{out}/{names.label_image_path(image_id)}", read_only=True),
                                mode="r")
        np.testing.assert_array_equal(group["0"][:], whole)
        np.testing.assert_array_equal(group["1"][:], whole[::2, ::2])
        assert group.attrs["multiscales"][0]["datasets"][0]["path"] == "0"
        with FileSystems.open(f"{out}/{names.label_tiff_path(image_id)}") as handle:
            with tifffile.TiffFile(handle) as tif:
                np.testing.assert_array_equal(tif.series[0].levels[0].asarray(), whole)
    with FileSystems.open(f"{out}/{names.SUCCESS_FILE}") as handle:
        assert json.loads(handle.read())["predicted"] == 2
    (tmp_path / "truth").mkdir()
    for image_id in ("scan", "cells"):
        Image.fromarray(whole).save(tmp_path / "truth" / f"{image_id}.png")
    upload_tree(tmp_path / "truth", f"{gcs_prefix}/truth")
    assert evaluate.run(["--predictions", out, "--truth", f"{gcs_prefix}/truth", "--output",
                         f"{gcs_prefix}/report.json", "--mask-values", "ids"]) == 0
    with FileSystems.open(f"{gcs_prefix}/report.json") as handle:
        report = json.loads(handle.read())
    assert report["counts"]["evaluated"] == 2 and report["overall"]["micro"]["pixel_error"] == 0
    assert predict.run(argv) == 0                  # a rerun finds both done on the object store
    with FileSystems.open(f"{out}/{names.SUCCESS_FILE}") as handle:
        assert json.loads(handle.read())["skipped_done"] == 2


def test_no_level_at_the_models_pixel_size_is_resampled_and_recorded(setup, tmp_path):
    from pipelines.core import regions

    root, _ = setup
    pixels = np.asarray(Image.open(root / "png" / "scan.png"))
    (tmp_path / "in").mkdir()
    path = tmp_path / "in" / "scan.ome.tif"
    with tifffile.TiffWriter(path, bigtiff=True, ome=True) as tw:
        tw.write(pixels, tile=(64, 64), compression="zlib", photometric="rgb", subifds=1,
                 metadata={"axes": "YXS", "PhysicalSizeX": 0.25, "PhysicalSizeY": 0.25})
        tw.write(pixels[::2, ::2], tile=(64, 64), compression="zlib", photometric="rgb", subfiletype=1)
    source = regions.open_tiff(str(path), str(path))
    view = regions.level_view(source, 0.7)
    assert view.level == 1 and 1.3 < view.factor < 1.5
    (tmp_path / "png").mkdir()
    Image.fromarray(view.read(0, 0, *view.shape)).save(tmp_path / "png" / "scan.ome.png")
    assert predict.run(["--model-dir", str(root / "model"), "--input", str(tmp_path / "png"), "--output",
                        str(tmp_path / "whole"), *FLAGS]) == 0
    whole = np.asarray(Image.open(tmp_path / "whole" / names.mask_path("scan")))
    out = tmp_path / "out"             # a small image, but not as stored: it takes the block path
    assert predict.run(["--model-dir", str(root / "model"), "--input", str(tmp_path / "in"), "--output", str(out),
                        "--pixel-size", "0.7", *FLAGS, *SMALL_BLOCKS]) == 0
    group = zarr.open_group(str(out / names.label_image_path("scan")), mode="r")
    np.testing.assert_array_equal(group["0"][:], whole)
    scale = group.attrs["multiscales"][0]["datasets"][0]["coordinateTransformations"][0]["scale"]
    assert scale == [pytest.approx(0.7)] * 2
    row = json.loads(next((out / names.ROWS_DIR).rglob("*.json")).read_text())
    assert row["source_level"] == 1 and row["resample_factor"] == pytest.approx(view.factor)
    assert row["pixel_size_um"] == pytest.approx(0.7) and (row["height"], row["width"]) == view.shape
    refused = tmp_path / "refused"     # 10x finer than the scan: not invented, refused with the reason
    assert predict.run(["--model-dir", str(root / "model"), "--input", str(tmp_path / "in"), "--output",
                        str(refused), "--pixel-size", "0.025", *FLAGS]) == 0
    record = json.loads((refused / names.REJECTED_FILE).read_text().splitlines()[0])
    assert record["reason"] == "pixel_size_mismatch" and "enlarging" in record["detail"]


def test_probabilities_of_a_large_image_as_an_ome_zarr_pyramid(setup, tmp_path):
    root, whole = setup
    dense = tmp_path / "dense"
    assert predict.run(["--model-dir", str(root / "model"), "--input", str(root / "png"), "--output", str(dense),
                        "--save-probabilities", *FLAGS]) == 0
    expected = np.load(dense / names.probabilities_path("scan"))               # (H, W, K) float16
    out = tmp_path / "out"
    assert run_blocks(root, out, "--save-probabilities") == 0
    np.testing.assert_array_equal(label_image(out), whole)
    group = zarr.open_group(str(out / names.probability_image_path("scan")), mode="r")
    assert group["0"].dtype == np.float16 and group["0"].shape == (2, H, W)
    np.testing.assert_array_equal(np.moveaxis(group["0"][:], 0, -1), expected)   # the same float16 values
    level1 = group["1"][:].astype(np.float32)
    assert level1.shape == (2, -(-H // 2), -(-W // 2))
    np.testing.assert_allclose(level1[:, 10, 20], expected[20:22, 40:42].astype(np.float32).mean(axis=(0, 1)),
                               atol=1e-3)
    assert [a["name"] for a in group.attrs["multiscales"][0]["axes"]] == ["c", "y", "x"]
    assert [c["label"] for c in group.attrs["omero"]["channels"]] == ["background", "foreground"]
    datasets = group.attrs["multiscales"][0]["datasets"]          # averaged: pixel centres move half a pixel
    assert datasets[1]["coordinateTransformations"][1] == {"type": "translation", "translation": [0.0, 0.5, 0.5]}
    assert len(datasets[0]["coordinateTransformations"]) == 1
    row = json.loads(next((out / names.ROWS_DIR).rglob("*.json")).read_text())
    assert row["probabilities_path"] == names.probability_image_path("scan")


# ---------------------------------------------------------------- instances block by block (a decoder)

def boundary_model(directory, mode: str, **decoder):
    """A toy 3-class model whose card says it predicts background / boundary / interior."""
    export_model(str(directory), kind="same", core=16, margin=3, channels=3, classes=3)
    card = json.loads((directory / "model_card.json").read_text())
    card.update(class_names=["background", "boundary", "interior"], object_class="cell",
                decoder={"mode": mode, **decoder})
    (directory / "model_card.json").write_text(json.dumps(card))


def same_up_to_renumbering(a, b):
    assert ((a == 0) == (b == 0)).all()
    pairs = np.unique(np.stack([a[a > 0], b[b > 0]]), axis=1)
    assert pairs.shape[1] == len(np.unique(a[a > 0])) == len(np.unique(b[b > 0]))


def instances_by_blocks(root, model, out, *flags) -> int:
    return predict.run(["--model-dir", str(model), "--input", str(root / "tiff"), "--output", str(out),
                        "--large-image-pixels", "10000", *FLAGS, *SMALL_BLOCKS, *flags])


@pytest.mark.parametrize("kind", ["components", "partition"])   # partition = seeded + expansion
def test_instances_by_blocks_equal_the_whole_image_decoding(setup, tmp_path, kind):
    import pyarrow.parquet as pq
    import tifffile as tf

    root, _ = setup
    if kind == "components":        # a plain model, connected components of its mask
        model, flags = root / "model", ["--instances", "components", "--halo", "40"]
    else:   # a boundary model, its card's decoder (sparse foreground: small objects; specks < 4 px dropped)
        model = tmp_path / "boundary"
        boundary_model(model, kind, foreground=0.8, min_size=4, **({"expand": 1} if kind == "partition" else {}))
        flags = ["--halo", "40"]
    assert predict.run(["--model-dir", str(model), "--input", str(root / "png"), "--output", str(tmp_path / "whole"),
                        *FLAGS, *flags]) == 0
    whole = tf.imread(tmp_path / "whole" / names.instances_path("scan"))
    whole_mask = np.asarray(Image.open(tmp_path / "whole" / names.mask_path("scan")))
    out = tmp_path / "blocks"
    assert instances_by_blocks(root, model, out, *flags) == 0
    group = zarr.open_group(str(out / names.instance_image_path("scan")), mode="r")
    labels = group["0"][:]
    assert labels.dtype == np.uint32 and group["0"].chunks[0] < H // 4          # really in blocks
    assert whole.max() > 100                                        # enough objects that block borders cut some
    same_up_to_renumbering(labels, whole)
    assert sorted(np.unique(labels[labels > 0]).tolist()) == list(range(1, int(whole.max()) + 1))
    np.testing.assert_array_equal(group["1"][:], labels[::2, ::2])
    assert "image-label" in group.attrs and group.attrs["multiscales"][0]["version"] == "0.4"
    np.testing.assert_array_equal(label_image(out), whole_mask)                # masks: the decoded objects'
    found = pq.read_table(out / names.objects_file(), use_threads=False)        # one row per object, its id
    ids, area = (found.column(c).to_numpy() for c in ("object_id", "area"))
    assert sorted(ids.tolist()) == list(range(1, int(labels.max()) + 1))
    assert (area == np.bincount(labels.ravel())[ids]).all()
    listed = group.attrs["image-label"].get("properties")       # per-object features up to a bound
    if len(ids) <= label_outputs.INSTANCE_PROPERTIES_LIMIT:
        table = {r["object_id"]: r for r in found.to_pylist()}
        assert sorted(p["label-value"] for p in listed) == sorted(ids.tolist())
        assert all(p["class"] == table[p["label-value"]]["class_name"] and p["area"] == table[p["label-value"]]["area"]
                   for p in listed)
    else:
        assert listed is None
    whole_found = pq.read_table(tmp_path / "whole" / names.objects_file(), use_threads=False)
    assert sorted(area.tolist()) == sorted(whole_found.column("area").to_pylist())
    assert found.column("mean_confidence").to_numpy().sum() == pytest.approx(
        whole_found.column("mean_confidence").to_numpy().sum(), rel=1e-4)
    outlines = dict(zip(ids.tolist(), found.column("outline").to_pylist()))      # full outlines, any block
    assert sorted(map(json.dumps, outlines.values())) == sorted(map(json.dumps, whole_found.column("outline").to_pylist()))
    collection = json.loads((out / names.geojson_path("scan")).read_text())     # joined from the blocks' parts
    whole_collection = json.loads((tmp_path / "whole" / names.geojson_path("scan")).read_text())
    assert len(collection["features"]) == len(ids)
    assert sorted(json.dumps(f["geometry"]) for f in collection["features"]) == sorted(
        json.dumps(f["geometry"]) for f in whole_collection["features"])
    assert all(f["geometry"]["coordinates"] == outlines[f["properties"]["object_id"]] for f in collection["features"])
    row = json.loads(next((out / names.ROWS_DIR).rglob("*.json")).read_text())
    assert row["instances_path"] == names.instance_image_path("scan") and row["components"] == len(ids)
    assert not list((out / names.BLOCKS_DIR).rglob("*.inputs.zarr"))           # the decoder's inputs are gone
    assert not list((out / names.BLOCKS_DIR).rglob("*.npz"))                   # so are the blocks' markers


def test_an_object_larger_than_the_halo_rejects_the_image_with_the_remedy(setup, tmp_path):
    root, _ = setup
    model = tmp_path / "boundary"
    boundary_model(model, "seeded")                # dense foreground: regions far larger than 8 px
    out = tmp_path / "out"
    assert instances_by_blocks(root, model, out, "--halo", "8") == 0
    record = json.loads((out / names.REJECTED_FILE).read_text().splitlines()[0])
    assert record["reason"] == "halo_too_small" and "raise --halo" in record["detail"]
    assert json.loads((out / names.SUCCESS_FILE).read_text())["rejected"] == 1
    unusable = tmp_path / "unusable"            # a halo under 3 x the expansion: refused before any block
    assert instances_by_blocks(root, model, unusable, "--decoder", "partition", "--expand", "4", "--halo", "12") == 0
    record = json.loads((unusable / names.REJECTED_FILE).read_text().splitlines()[0])
    assert record["reason"] == "halo_too_small" and "3 x the decoder's expansion" in record["detail"]
    assert not (unusable / names.BLOCKS_DIR).exists()


def test_a_killed_decoding_resumes_only_the_blocks_not_written(setup, tmp_path):
    from tests.crash import kill_at

    root, _ = setup
    flags = ["--instances", "components", "--halo", "40"]
    assert predict.run(["--model-dir", str(root / "model"), "--input", str(root / "png"), "--output",
                        str(tmp_path / "whole"), *FLAGS, *flags]) == 0
    out = tmp_path / "killed"
    kill_at("predict:block-decoded", "pipelines.predict.job",
            ["--model-dir", str(root / "model"), "--input", str(root / "tiff"), "--output", str(out),
             "--large-image-pixels", "10000", "--lease-ttl-s", "1", *FLAGS, *SMALL_BLOCKS, *flags], tmp_path)
    written = {p: p.stat().st_mtime_ns for p in (out / names.BLOCKS_DIR).rglob("*.decoded.npz")}
    owned = {p: p.stat().st_mtime_ns for p in (out / names.BLOCKS_DIR).rglob("*.owned.npz")}
    assert written and owned and not (out / names.SUCCESS_FILE).exists()
    level0 = out / names.instance_image_path("scan") / "0"
    chunks = {p: p.stat().st_mtime_ns for p in level0.rglob("*") if p.is_file() and not p.name.startswith(".")
              and p.name != "zarr.json"}
    assert chunks
    import time

    time.sleep(1.5)
    assert instances_by_blocks(root, root / "model", out, *flags) == 0
    assert all(p.stat().st_mtime_ns == t for p, t in chunks.items())   # the decoded blocks are not redone
    assert not list((out / names.BLOCKS_DIR).rglob("scan")) and not list((out / names.BLOCKS_DIR).rglob("*.npz"))
    import tifffile as tf

    labels = zarr.open_group(str(out / names.instance_image_path("scan")), mode="r")["0"][:]
    same_up_to_renumbering(labels, tf.imread(tmp_path / "whole" / names.instances_path("scan")))


def test_a_large_row_with_instances_vouches_for_its_instance_pyramid_and_geojson():
    from pipelines.predict import outputs
    from pipelines.predict.inputs import row_outputs

    layout = outputs.OutputLayout("/out", outputs.OutputSettings("segmentation", ("background", "cell"), ("m",)))
    row = {"image_id": "a/scan", "mask_path": names.label_container_path("a/scan"),
           "overlay_path": names.overlay_path("a/scan"),
           "seam_map_path": None, "probabilities_path": None, "instances_path": names.instance_image_path("a/scan")}
    needed = row_outputs(row, layout)
    assert f"{names.instance_image_path('a/scan')}/.zattrs" in needed and names.geojson_path("a/scan") in needed
    assert names.label_image_marker("a/scan") in needed
    plain = row_outputs({**row, "instances_path": None}, layout)
    assert not [p for p in plain if p.startswith((names.INSTANCES_DIR, names.GEOJSON_DIR))]
