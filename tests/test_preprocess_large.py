"""Training data from sources larger than memory: a tiled TIFF cut block by block over the
workers gives the very examples of the whole-image path, each worker's memory is bounded
whatever the source's size, tiles are kept or dropped by documented rules with every tile
counted, instance masks keep touching objects apart, and the pixel size reaches the dataset."""
from __future__ import annotations

import io
import json
import os
import struct
import subprocess
import sys

import numpy as np
import pyarrow.parquet as pq
import pytest
import tifffile
import zarr
from PIL import Image
from scipy import ndimage

from pipelines.core import sources, tiling
from pipelines.preprocess import job as preprocess

IN_PROCESS = ["--direct_running_mode=in_memory"]
TWO_WORKERS = ["--direct_running_mode=multi_processing", "--direct_num_workers=2"]
BLOCKS = ["--large-image-pixels", "10000", "--memory-limit-mb", "1"]
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(raw, out, *extra, beam=IN_PROCESS) -> int:
    return preprocess.run(["--input", str(raw), "--output", str(out), "--split-fractions", "1,0,0",
                           *map(str, extra), *beam])


def records(version) -> dict[bytes, str]:
    """{serialized example: shard} of a published dataset (TFRecord framing read by hand)."""
    found = {}
    for shard in sorted(p for p in os.listdir(version) if p.startswith("tessera-")):
        data, at = open(os.path.join(version, shard), "rb").read(), 0
        while at < len(data):
            length = struct.unpack("<Q", data[at:at + 8])[0]
            found[data[at + 12:at + 12 + length]] = shard
            at += 12 + length + 4
    return found


def stats(version) -> dict:
    return json.loads(open(os.path.join(version, "stats.json")).read())


def texture(h: int, w: int, seed: int = 0) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    image = np.stack([(yy * 0.3 + xx * 0.2) % 256, (xx * 0.5) % 256, (yy * 0.7) % 256], -1)
    noise = np.random.default_rng(seed).integers(0, 20, (h, w, 3))
    return np.clip(image + noise, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    """A 700 x 900 tiled TIFF pair (awkward sizes) and three small PNG pairs."""
    root = tmp_path_factory.mktemp("raw")
    (root / "images").mkdir()
    (root / "masks").mkdir()
    image = texture(700, 900)
    yy, xx = np.mgrid[0:700, 0:900]
    mask = (((yy // 37) + (xx // 53)) % 2).astype(np.uint8)
    tifffile.imwrite(root / "images" / "big.tif", image, tile=(64, 64), compression="zlib", photometric="rgb")
    tifffile.imwrite(root / "masks" / "big.ome.tif", mask, tile=(64, 64), compression="zlib")
    for i in range(3):
        Image.fromarray(image[:100, i * 100:(i + 1) * 100]).save(root / "images" / f"s{i}.png")
        Image.fromarray(mask[:100, i * 100:(i + 1) * 100]).save(root / "masks" / f"s{i}.png")
    return root


def test_blocks_of_a_tiled_tiff_give_the_whole_image_paths_examples_byte_for_byte(raw, tmp_path):
    args = ("--tile-size", 64, "--margin", 16, "--augment-copies", 1)
    assert run(raw, tmp_path / "whole", *args) == 0
    assert run(raw, tmp_path / "blocks", *args, *BLOCKS) == 0
    whole, by_blocks = records(tmp_path / "whole" / "current"), records(tmp_path / "blocks" / "current")
    assert len(whole) == 2 * (11 * 15 + 3 * 4) and set(by_blocks) == set(whole)   # big.tif pairs big.ome.tif
    big = stats(tmp_path / "blocks" / "current")["per_source"]["big"]
    assert big["units"] > 4 and big["tiles"] == big["kept"] == 11 * 15    # really cut in blocks
    assert stats(tmp_path / "whole" / "current")["per_source"]["big"]["units"] == 1
    manifest = pq.read_table(tmp_path / "blocks" / "current" / "manifest.parquet").to_pylist()
    assert len({r["shard"] for r in manifest if r["source_id"] == "big"}) > 2   # one source, many shards
    assert run(raw, tmp_path / "multi", *args, *BLOCKS, beam=TWO_WORKERS) == 0
    success = [json.loads((tmp_path / d / "current" / "_SUCCESS").read_text()) for d in ("blocks", "multi")]
    assert success[0]["shards"] == success[1]["shards"]      # byte-identical shards in- and multi-process
    assert success[0]["tiles"]["tiles"] == success[0]["tiles"]["kept"] == 11 * 15 + 12


def jpeg_slide(path, side: int, tile: int = 256) -> None:
    """A JPEG-tiled TIFF and its tiled mask, written tile by tile (never whole in memory)."""
    def tiles(mask: bool):
        for y in range(0, side, tile):
            for x in range(0, side, tile):
                yy, xx = np.mgrid[y:y + tile, x:x + tile].astype(np.float32)
                base = (127 + 60 * np.sin(yy * 0.013) * np.cos(xx * 0.017)).astype(np.uint8)
                yield (base > 150).astype(np.uint8) if mask else np.stack([base, base // 2, 255 - base], -1)
    (path / "images").mkdir(parents=True)
    (path / "masks").mkdir()
    tifffile.imwrite(path / "images" / "slide.tif", tiles(False), shape=(side, side, 3), dtype=np.uint8,
                     tile=(tile, tile), compression="jpeg", photometric="rgb")
    tifffile.imwrite(path / "masks" / "slide.tif", tiles(True), shape=(side, side), dtype=np.uint8,
                     tile=(tile, tile), compression="zlib")


def test_worker_memory_is_bounded_whatever_the_source_size_and_blocks_spread_over_workers(tmp_path):
    from tessera.peak_memory import PeakWatcher

    peaks = {}
    for side in (1500, 4500):                      # 9x the pixels: 61 MB decoded, vs 7 MB
        jpeg_slide(tmp_path / f"raw{side}", side)
        out = tmp_path / f"ds{side}"
        job = subprocess.Popen(
            [sys.executable, "-m", "pipelines.preprocess", "--input", str(tmp_path / f"raw{side}"), "--output",
             str(out), "--tile-size", "128", "--margin", "16", "--large-image-pixels", "1000000",
             "--memory-limit-mb", "16", "--split-fractions", "1,0,0", *TWO_WORKERS],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=REPO,
            env={**os.environ, "PYTHONPATH": REPO, "TF_CPP_MIN_LOG_LEVEL": "2"})
        with PeakWatcher(job.pid) as watcher:
            _, err = job.communicate(timeout=600)
        assert job.returncode == 0, err[-3000:]
        peaks[side] = watcher.children_peak()
        summary = stats(out / "current")
        assert summary["per_source"]["slide"]["tiles"] == (-(-side // 128)) ** 2
        assert len(summary["shards_per_worker"]) == 2, summary["shards_per_worker"]   # both workers wrote shards
    # a worker holds a block (bound 16 MiB), not the source: the whole path would add ~4.7x 61 MB
    assert 50 < peaks[1500] and peaks[4500] < peaks[1500] * 1.15 and peaks[4500] - peaks[1500] < 48, peaks


def glass_slide(tmp_path):
    """White glass with tissue squares at known cores; the mask marks part of the tissue."""
    image = np.full((256, 256, 3), 240, np.uint8)
    image[0:64, 0:64] = 80                  # tissue, all foreground
    image[64:128, 128:192] = 120            # tissue, a quarter foreground
    image[192:256, 192:256] = 0             # black padding
    mask = np.zeros((256, 256), np.uint8)
    mask[0:64, 0:64] = 1
    mask[64:96, 128:160] = 1
    root = tmp_path / "glass"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    tifffile.imwrite(root / "images" / "slide.tif", image, tile=(64, 64), photometric="rgb")
    tifffile.imwrite(root / "masks" / "slide.tif", mask, tile=(64, 64))
    return root


@pytest.mark.parametrize("path", ["whole", "blocks"])
def test_foreground_and_blank_filters_keep_exactly_the_expected_tiles(tmp_path, path):
    root = glass_slide(tmp_path)
    extra = BLOCKS if path == "blocks" else []
    out = tmp_path / "kept"
    assert run(root, out, "--tile-size", 64, "--margin", 8, "--skip-blank", *extra) == 0
    manifest = pq.read_table(out / "current" / "manifest.parquet").to_pylist()
    assert sorted((r["core_y"], r["core_x"]) for r in manifest) == [(0, 0), (64, 128)]   # glass and padding go
    out = tmp_path / "fg"
    assert run(root, out, "--tile-size", 64, "--margin", 8, "--min-foreground", 0.5, *extra) == 0
    manifest = pq.read_table(out / "current" / "manifest.parquet").to_pylist()
    assert [(r["core_y"], r["core_x"]) for r in manifest] == [(0, 0)]
    tiles = json.loads((out / "current" / "_SUCCESS").read_text())["tiles"]
    assert tiles == {"tiles": 16, "kept": 1, "dropped_background": 15, "dropped_blank": 0, "rejected_tiles": 0}
    out = tmp_path / "sampled"                # a stable share of the background tiles is kept too
    assert run(root, out, "--tile-size", 64, "--margin", 8, "--min-foreground", 0.5,
               "--background-tiles-fraction", 0.3, *extra) == 0
    kept = {(r["core_y"], r["core_x"]) for r in pq.read_table(out / "current" / "manifest.parquet").to_pylist()}
    expected = {(y, x) for y, x, _, _ in tiling.core_grid(256, 256, 64)
                if (y, x) == (0, 0) or sources.hash_fraction(f"background:slide:{y}:{x}") < 0.3}
    assert kept == expected and 1 < len(kept) < 16


def decoded(version) -> dict[str, tuple[bytes, bytes]]:
    """{example id: (image PNG, mask PNG)} of a published dataset."""
    import tensorflow as tf

    out = {}
    for record in records(version):
        features = tf.train.Example.FromString(record).features.feature
        out[features["id"].bytes_list.value[0].decode()] = (features["image"].bytes_list.value[0],
                                                            features["mask"].bytes_list.value[0])
    return out


@pytest.mark.parametrize("path", ["whole", "blocks"])
def test_instance_masks_keep_touching_objects_apart(tmp_path, path):
    instances = np.zeros((320, 400), np.uint16)
    instances[8:24, 8:24] = 7
    instances[8:24, 24:40] = 9              # touches 7: one component of the binary mask
    instances[40:56, 60:80] = 300
    binary = (instances > 0).astype(np.uint8)
    image = texture(320, 400)
    for name, mask in (("instances", instances), ("binary", binary)):
        root = tmp_path / name
        (root / "images").mkdir(parents=True)
        (root / "masks").mkdir()
        if path == "blocks":
            tifffile.imwrite(root / "images" / "a.tif", image, tile=(32, 32), photometric="rgb")
            tifffile.imwrite(root / "masks" / "a.tif", mask.astype(np.uint32), tile=(32, 32))
        else:
            Image.fromarray(image).save(root / "images" / "a.png")
            Image.fromarray(mask).save(root / "masks" / "a.png")
    extra = ("--tile-size", 32, "--margin", 4, "--target", "classes", *(BLOCKS if path == "blocks" else ()))
    assert run(tmp_path / "instances", tmp_path / "i", *extra, "--mask-values", "instances") == 0
    assert run(tmp_path / "binary", tmp_path / "b", *extra, "--mask-values", "binary") == 0
    with_instances = decoded(tmp_path / "i" / "current")
    assert with_instances == decoded(tmp_path / "b" / "current") and len(with_instances) == 10 * 13
    rows = {(r["core_y"], r["core_x"]): r["objects"]
            for r in pq.read_table(tmp_path / "i" / "current" / "manifest.parquet").to_pylist()}
    assert rows[(0, 0)] == 2 and rows[(32, 64)] == 1 and rows[(0, 64)] == 0   # 7 and 9 stay two objects
    if path == "blocks":
        assert stats(tmp_path / "i" / "current")["per_source"]["a"]["units"] > 1


def test_the_pyramid_level_of_the_pixel_size_is_cut_and_recorded(tmp_path):
    image = texture(256, 384)
    mask = (image[..., 0] > 128).astype(np.uint8)
    root = tmp_path / "raw"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    with tifffile.TiffWriter(root / "images" / "scan.ome.tif", ome=True) as tw:
        tw.write(image, tile=(64, 64), photometric="rgb", subifds=1,
                 metadata={"axes": "YXS", "PhysicalSizeX": 0.25, "PhysicalSizeY": 0.25})
        tw.write(image[::2, ::2], tile=(64, 64), photometric="rgb", subfiletype=1)
    labels = zarr.open_group(str(root / "masks" / "scan.zarr"), mode="w", zarr_format=2)
    labels.create_array("0", data=mask, chunks=(64, 64))
    labels.create_array("1", data=mask[::2, ::2], chunks=(64, 64))
    labels.attrs["multiscales"] = [{"version": "0.4", "axes": [{"name": "y", "type": "space"},
                                                               {"name": "x", "type": "space"}],
                                    "datasets": [{"path": "0"}, {"path": "1"}]}]
    out = tmp_path / "ds"
    assert run(root, out, "--tile-size", 32, "--margin", 4, "--pixel-size", 0.5) == 0
    version = out / "current"
    rows = pq.read_table(version / "manifest.parquet").to_pylist()
    assert {(r["source_h"], r["source_w"], r["source_level"], round(r["pixel_size_um"], 6)) for r in rows} == {
        (128, 192, 1, 0.5)}
    assert len(rows) == 4 * 6
    spec = json.loads((version / "tessera_dataset.json").read_text())
    assert spec["pixel_size_um"] == 0.5
    with pytest.raises(SystemExit, match="nothing was published"):
        run(root, tmp_path / "mismatch", "--tile-size", 32, "--margin", 4, "--pixel-size", 0.7,
            "--max-rejected-fraction", 1)
    reports = next(tmp_path.glob("mismatch.rejected-*.jsonl"))   # a refused run keeps only its records
    record = json.loads(reports.read_text().splitlines()[0])
    assert record["reason"] == "pixel_size_mismatch" and "0.7" in record["detail"]


def test_a_large_tiff_with_a_zarr_mask_on_gcs_is_cut_by_region(tmp_path, gcs_prefix):
    from apache_beam.io.filesystems import FileSystems

    from pipelines.beam.files import resolve_version
    from tests.conftest import upload_tree

    image = texture(300, 260)
    mask = ((np.indices((300, 260)).sum(0) // 40) % 2).astype(np.uint8)
    root = tmp_path / "raw"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    tifffile.imwrite(root / "images" / "scan.tif", image, tile=(64, 64), compression="zlib", photometric="rgb")
    zarr.create_array(str(root / "masks" / "scan.zarr"), data=mask, chunks=(64, 64), zarr_format=2)
    upload_tree(root, f"{gcs_prefix}/raw")
    args = ("--tile-size", 32, "--margin", 8, *BLOCKS)
    assert run(f"{gcs_prefix}/raw", f"{gcs_prefix}/ds", *args) == 0
    assert run(root, tmp_path / "local", *args) == 0
    version = resolve_version(f"{gcs_prefix}/ds")
    local = tmp_path / "copy"
    local.mkdir()
    for m in FileSystems.match([f"{version}/tessera-*"])[0].metadata_list:
        with FileSystems.open(m.path) as handle:
            (local / m.path.rsplit("/", 1)[1]).write_bytes(handle.read())
    on_gcs = decoded(local)
    assert on_gcs == decoded(tmp_path / "local" / "current") and len(on_gcs) == 10 * 9


def test_a_damaged_tile_rejects_its_block_only_and_every_tile_is_counted(raw, tmp_path):
    source = tmp_path / "raw"
    (source / "images").mkdir(parents=True)
    (source / "masks").mkdir()
    data = bytearray((raw / "images" / "big.tif").read_bytes())
    with tifffile.TiffFile(raw / "images" / "big.tif") as tif:
        page = tif.pages.first
        offset, size = page.dataoffsets[0], page.databytecounts[0]      # the first tile: block 0
    data[offset:offset + size] = b"\x00garbage" * (size // 8) + b"\x00" * (size % 8)
    (source / "images" / "big.tif").write_bytes(bytes(data))
    (source / "masks" / "big.tif").write_bytes((raw / "masks" / "big.ome.tif").read_bytes())
    out = tmp_path / "ds"
    assert run(source, out, "--tile-size", 64, "--margin", 16, *BLOCKS) == 0
    version = out / "current"
    success = json.loads((version / "_SUCCESS").read_text())
    assert (success["sources_written"], success["rejected"], success["rejected_regions"]) == (1, 0, 1)
    tiles = success["tiles"]
    assert tiles["tiles"] == 11 * 15 and 0 < tiles["rejected_tiles"] < tiles["tiles"]
    assert tiles["kept"] + tiles["rejected_tiles"] == tiles["tiles"]
    record = json.loads((version / "rejected.jsonl").read_text().splitlines()[0])
    assert record["reason"] == "unreadable_region" and record["region"][0] == 0 and "big.tif" in record["source"]
    manifest = pq.read_table(version / "manifest.parquet").to_pylist()
    assert len(manifest) == tiles["kept"] and not any(r["core_y"] == 0 and r["core_x"] == 0 for r in manifest)


def membranes(instances: np.ndarray) -> np.ndarray:
    """A binary mask of cells with a 1 px background membrane wherever two of them touch (EM style)."""
    cells = instances > 0
    right = np.zeros_like(cells)
    right[:, :-1] = (instances[:, :-1] != instances[:, 1:]) & (instances[:, 1:] > 0)
    down = np.zeros_like(cells)
    down[:-1] = (instances[:-1] != instances[1:]) & (instances[1:] > 0)
    return (cells & ~right & ~down).astype(np.uint8)


def features_of(version) -> dict[str, dict]:
    """{example id: {feature: decoded array or scalar}} of a published dataset."""
    import tensorflow as tf

    out = {}
    for record in records(version):
        features = tf.train.Example.FromString(record).features.feature
        one = {name: np.asarray(Image.open(io.BytesIO(features[name].bytes_list.value[0])))
               for name in ("mask", "distance") if name in features}
        one["copy"] = features["copy"].int64_list.value[0]
        out[features["id"].bytes_list.value[0].decode()] = one
    return out


def test_a_boundary_target_is_the_same_on_either_path_and_derived_from_each_tiles_objects(tmp_path):
    from pipelines.core import targets
    from tessera.nuclei import nuclei_pair

    image, instances = nuclei_pair(np.random.default_rng(3), 320, 400, clusters=10)
    sources_of = {"instances": instances, "binary": membranes(instances)}
    for name, mask in sources_of.items():
        for path in ("whole", "blocks"):
            root = tmp_path / path / name
            (root / "images").mkdir(parents=True)
            (root / "masks").mkdir()
            if path == "blocks":
                tifffile.imwrite(root / "images" / "a.tif", image, tile=(32, 32))
                tifffile.imwrite(root / "masks" / "a.tif", mask.astype(np.uint32), tile=(32, 32))
            else:
                Image.fromarray(image).save(root / "images" / "a.png")
                Image.fromarray(mask).save(root / "masks" / "a.png")
    args = ("--tile-size", 64, "--margin", 8, "--augment-copies", 1, "--target", "boundary", "--distance-map",
            "--distance-max", 16, "--color-mode", "grayscale")
    for name in sources_of:
        mode = ("--mask-values", name)
        assert run(tmp_path / "whole" / name, tmp_path / f"w-{name}", *args, *mode) == 0
        assert run(tmp_path / "blocks" / name, tmp_path / f"b-{name}", *args, *mode, *BLOCKS) == 0
        whole = records(tmp_path / f"w-{name}" / "current")
        assert set(records(tmp_path / f"b-{name}" / "current")) == set(whole)     # byte for byte
        assert len(whole) == 2 * 5 * 7
        assert stats(tmp_path / f"b-{name}" / "current")["per_source"]["a"]["units"] > 1
        spec = json.loads((tmp_path / f"w-{name}" / "current" / "tessera_dataset.json").read_text())
        assert (spec["target"], spec["class_names"], spec["object_class"], spec["border_thickness"],
                spec["distance"], spec["distance_max"]) == ("boundary", ["background", "boundary", "interior"],
                                                            "foreground", 2, "boundary", 16)
        frequencies = stats(tmp_path / f"w-{name}" / "current")["class_frequencies"]
        assert list(frequencies) == ["background", "boundary", "interior"] and min(frequencies.values()) > 0
        config = json.loads((tmp_path / f"w-{name}" / "current" / "config.json").read_text())["preprocess"]
        assert (config["target"], config["border_thickness"], config["distance_map"]) == ("boundary", 2, True)
        examples = features_of(tmp_path / f"w-{name}" / "current")
        for example_id, features in examples.items():
            assert set(np.unique(features["mask"])) <= {0, 1, 2, 255}
            if features["copy"]:
                continue
            y, x = (int(v) for v in example_id.split("#")[1][1:].split("x"))
            ignored = np.ones((80, 80), bool)         # beyond the image
            ignored[tiling.valid_region(y, x, 64, 8, *instances.shape)] = False
            if name == "instances":
                objects = tiling.cut_mask_tile(instances[..., None], y, x, 64, 8, ignore=0)[..., 0]
            else:
                objects = targets.objects_of_mask(tiling.cut_mask_tile(sources_of[name][..., None], y, x, 64, 8)[..., 0])
            assert np.array_equal(features["mask"], targets.boundary_target(objects, 2, ignored)), example_id
            expected = targets.encode_distance(targets.distance_to_boundary(objects, ignored), 16)[..., 0]
            assert np.array_equal(features["distance"], expected)
    whole = {k: v["mask"] for k, v in features_of(tmp_path / "w-instances" / "current").items()}
    assert whole["a#y0x0#a0"].shape == (80, 80)
    # touching nuclei stay apart: no interior holds two nuclei, with instance ids or membranes...
    binary = {k: v["mask"] for k, v in features_of(tmp_path / "w-binary" / "current").items()}

    def nuclei_per_interior(target, y, x):
        nuclei = tiling.cut_mask_tile(instances[..., None], y, x, 64, 8, ignore=0)[..., 0]
        found, n = ndimage.label(target == 2)
        return [len(np.unique(nuclei[found == i])) for i in range(1, n + 1)]

    for masks_of in (whole, binary):
        assert all(n == 1 for k in masks_of if k.endswith("#a0")
                   for n in nuclei_per_interior(masks_of[k], *(int(v) for v in k.split("#")[1][1:].split("x"))))
    # ...which a binary mask without membranes cannot do: some interior holds two nuclei there
    merged = targets.boundary_target(targets.objects_of_mask((instances > 0).astype(np.uint8)), 2)
    found, n = ndimage.label(merged == 2)
    assert max(len(np.unique(instances[found == i])) for i in range(1, n + 1)) > 1
    assert run(tmp_path / "whole" / "instances", tmp_path / "again", *args, "--mask-values", "instances") == 0
    success = [json.loads((tmp_path / d / "current" / "_SUCCESS").read_text()) for d in ("w-instances", "again")]
    assert success[0]["shards"] == success[1]["shards"]       # a rerun writes the same bytes


def test_instance_masks_that_are_not_integers_or_too_large_are_rejected_with_the_reason(tmp_path):
    root = tmp_path / "raw"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for name, mask in (("float", np.ones((128, 128), np.float32)), ("huge", np.full((128, 128), 2 ** 33, np.uint64)),
                       ("fine", np.ones((128, 128), np.uint32))):
        tifffile.imwrite(root / "images" / f"{name}.tif", texture(128, 128), tile=(32, 32), photometric="rgb")
        tifffile.imwrite(root / "masks" / f"{name}.tif", mask, tile=(32, 32))
    for extra in ((), BLOCKS):
        out = tmp_path / f"out{len(extra)}"
        assert run(root, out, "--tile-size", 32, "--margin", 0, "--mask-values", "instances", "--target", "boundary",
                   "--max-rejected-fraction", 1, *extra) == 0
        rejected = [json.loads(line) for line in (out / "current" / "rejected.jsonl").read_text().splitlines()]
        reasons = {r["source"].split("/")[-1].split(".")[0]: (r["reason"], r["detail"]) for r in rejected}
        assert set(reasons) == {"float", "huge"}          # the whole-image path: Pillow refuses them already
    assert {r[0] for r in reasons.values()} == {"mask_values"}    # read by region: our check says why
    assert "integers" in reasons["float"][1] and "uint32" in reasons["huge"][1]
