"""Large images gone bad (issue 20): a tiled TIFF whose tiles are garbled or cut off, or whose
header claims 200000 x 200000 px, is rejected with its reason while the other inputs are
predicted; blocks done for an input that then changed under the same name are not mixed
into the new one's outputs; a memory bound too small for any block rejects only large images."""
from __future__ import annotations

import json
import os
import struct
import time

import numpy as np
import pyarrow.parquet as pq
import pytest
import tifffile
import zarr
from PIL import Image

from pipelines.predict import job as predict
from schemas import layout as names
from tessera.toy_models import export_model

H, W = 150, 210
FLAGS = ["--overlap", "0.25", "--batch-size", "16", "--large-image-pixels", "10000", "--memory-limit-mb", "1"]


def write_tiff(path, pixels) -> None:
    with tifffile.TiffWriter(path, bigtiff=True) as tw:
        tw.write(pixels, tile=(32, 32), compression="zlib", photometric="rgb")


def scan(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (H, W, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    root = tmp_path_factory.mktemp("faults")
    export_model(str(root / "model"), kind="same", core=16, margin=3, channels=3)
    return root / "model"


def reference(model, tmp_path, pixels, name: str, *flags) -> tuple[np.ndarray, list]:
    """The whole-image prediction of ``pixels`` (a PNG): its mask and object rows."""
    folder, out = tmp_path / f"ref-{name}", tmp_path / f"ref-{name}-out"
    folder.mkdir()
    Image.fromarray(pixels).save(folder / f"{name}.png")
    assert predict.run(["--model-dir", str(model), "--input", str(folder), "--output", str(out),
                        "--overlap", "0.25", "--batch-size", "16", *flags]) == 0
    objects = pq.read_table(out / names.objects_file(), use_threads=False).to_pylist() \
        if (out / names.objects_file()).exists() else []
    return np.asarray(Image.open(out / names.mask_path(name))), objects


def run(model, source, out, *flags) -> int:
    return predict.run(["--model-dir", str(model), "--input", str(source), "--output", str(out), *FLAGS, *flags])


def label_image(out, image_id: str) -> np.ndarray:
    return zarr.open_array(str(out / names.label_image_path(image_id) / "0"), mode="r")[:]


def records(out) -> dict:
    lines = (out / names.REJECTED_FILE).read_text().splitlines()
    return {os.path.basename(r["source"]): r for r in map(json.loads, lines)}


def garble_tile(path, index: int) -> None:
    data = bytearray(path.read_bytes())
    with tifffile.TiffFile(path) as tif:
        offset, size = tif.pages.first.dataoffsets[index], tif.pages.first.databytecounts[index]
    data[offset:offset + size] = (b"\x00garbage" * size)[:size]
    path.write_bytes(bytes(data))


def truncate_in_tile(path, index: int) -> None:
    with tifffile.TiffFile(path) as tif:
        page = tif.pages.first
        offset, size = page.dataoffsets[index], page.databytecounts[index]
        assert offset > max(tag.offset for tag in page.tags.values())    # the header stays whole
    path.write_bytes(path.read_bytes()[:offset + size // 2])


def claim_size(path, height: int, width: int) -> None:
    """A tiled TIFF whose header claims ``height`` x ``width`` pixels (its tiles: a few)."""
    data = bytearray(path.read_bytes())
    with tifffile.TiffFile(path) as tif:
        tags = tif.pages.first.tags
        for name, value in (("ImageLength", height), ("ImageWidth", width)):
            struct.pack_into("<I", data, tags[name].valueoffset, value)
    path.write_bytes(bytes(data))


def test_bad_tiles_and_a_giant_header_reject_only_their_images(model, tmp_path):
    good = scan(1)
    whole, _ = reference(model, tmp_path, good, "scan")
    inputs = tmp_path / "in"
    inputs.mkdir()
    Image.fromarray(good[:40, :50]).save(inputs / "small.png")
    write_tiff(inputs / "scan.tif", good)
    for name in ("garbled", "cut", "giant"):
        write_tiff(inputs / f"{name}.tif", scan(2))
    garble_tile(inputs / "garbled.tif", 9)           # a tile inside the image: one block unreadable
    truncate_in_tile(inputs / "cut.tif", 20)         # the file ends inside a later tile
    claim_size(inputs / "giant.tif", 200_000, 200_000)
    out = tmp_path / "out"
    assert run(model, inputs, out, "--max-large-image-pixels", "1000000") == 0
    success = json.loads((out / names.SUCCESS_FILE).read_text())
    assert (success["predicted"], success["rejected"]) == (2, 3)
    found = records(out)
    assert set(found) == {"garbled.tif", "cut.tif", "giant.tif"}
    for name in ("garbled.tif", "cut.tif"):
        assert found[name]["reason"] == "unreadable_region" and "cannot be read" in found[name]["detail"]
        assert len(found[name]["region"]) == 4 and found[name]["image_id"] == name[:-4]
    assert found["giant.tif"]["reason"] == "too_large" and "--max-large-image-pixels" in found["giant.tif"]["detail"]
    assert not list((out / names.BLOCKS_DIR).rglob("giant*"))          # no block planned
    rows = sorted(p.stem for p in (out / names.ROWS_DIR).rglob("*.json"))
    assert rows == ["scan", "small"]                 # nothing of the good inputs lost, no row for the bad
    np.testing.assert_array_equal(label_image(out, "scan"), whole)
    assert run(model, inputs, out, "--max-large-image-pixels", "1000000") == 0    # retried: rejected again
    success = json.loads((out / names.SUCCESS_FILE).read_text())
    assert (success["skipped_done"], success["rejected"]) == (2, 3)
    write_tiff(inputs / "garbled.tif", good)         # repaired: predicted, its rejection gone
    later = time.time() + 5
    os.utime(inputs / "garbled.tif", (later, later))
    assert run(model, inputs, out, "--max-large-image-pixels", "1000000") == 0
    success = json.loads((out / names.SUCCESS_FILE).read_text())
    assert (success["predicted"], success["skipped_done"], success["rejected"]) == (1, 2, 2)
    assert "garbled.tif" not in records(out)
    np.testing.assert_array_equal(label_image(out, "garbled"), whole)


def test_a_giant_header_is_refused_by_default_before_any_block(model, tmp_path):
    inputs = tmp_path / "in"
    inputs.mkdir()
    write_tiff(inputs / "giant.tif", scan(3))
    claim_size(inputs / "giant.tif", 200_000, 200_000)
    out = tmp_path / "out"
    assert run(model, inputs, out) == 0
    record = records(out)["giant.tif"]
    assert record["reason"] == "too_large" and "40000000000 pixels" in record["detail"]
    assert not (out / names.BLOCKS_DIR).exists()


def test_a_memory_bound_too_small_for_any_block_rejects_only_large_images(model, tmp_path):
    inputs = tmp_path / "in"
    inputs.mkdir()
    Image.fromarray(scan(4)[:40, :50]).save(inputs / "small.png")
    write_tiff(inputs / "scan.tif", scan(4))
    out = tmp_path / "out"
    assert run(model, inputs, out, "--instances", "components", "--halo", "400") == 0    # window > 1 MiB
    success = json.loads((out / names.SUCCESS_FILE).read_text())
    assert (success["predicted"], success["rejected"]) == (1, 1)
    record = records(out)["scan.tif"]
    assert record["reason"] == "too_large_for_memory" and "raise --memory-limit-mb" in record["detail"]
    assert (out / names.mask_path("small")).exists()


@pytest.mark.parametrize("crash, flags, rows", [
    ("predict:block-done", [], H),                                                    # other pixels, same size
    ("predict:block-decoded", ["--instances", "components", "--halo", "40"], H - 20)])  # ... another size
def test_a_killed_run_whose_input_then_changed_starts_that_image_over(model, tmp_path, crash, flags, rows):
    from tests.crash import kill_at

    before, after = scan(5), scan(6)[:rows]
    whole, objects = reference(model, tmp_path, after, "scan", *flags)
    inputs, out = tmp_path / "in", tmp_path / "out"
    inputs.mkdir()
    write_tiff(inputs / "scan.tif", before)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    kill_at(crash, "pipelines.predict.job", ["--model-dir", str(model), "--input", str(inputs), "--output", str(out),
                                             "--lease-ttl-s", "1", *FLAGS, *flags], tmp_path)
    assert list((out / names.BLOCKS_DIR).rglob("0*.npz")) and not (out / names.SUCCESS_FILE).exists()
    write_tiff(inputs / "scan.tif", after)
    later = time.time() + 5
    os.utime(inputs / "scan.tif", (later, later))
    time.sleep(1.5)
    assert run(model, inputs, out, *flags) == 0
    np.testing.assert_array_equal(label_image(out, "scan"), whole)
    found = pq.read_table(out / names.objects_file(), use_threads=False).to_pylist()
    if objects:                                          # with instances: the same objects as the whole image
        assert sorted(o["area"] for o in found) == sorted(o["area"] for o in objects)
    else:
        from scipy import ndimage

        assert len(found) == ndimage.label(whole == 1)[1]
