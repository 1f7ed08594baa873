"""The preprocessing job: composite transforms, the whole job on real runners, bad inputs, gs://."""
from __future__ import annotations

import io
import json
import os
import pathlib

import apache_beam as beam
import numpy as np
import pyarrow.parquet as pq
import pytest
from apache_beam.testing import test_pipeline
from apache_beam.testing.util import assert_that, equal_to
from PIL import Image

from pipelines.beam.files import resolve_version
from pipelines.core import images, masks, pixels, sources, tiling
from pipelines.preprocess import examples, shards, static_augment
from pipelines.preprocess import job as preprocess
from pipelines.preprocess import transforms as pt
from schemas import rejected as rejected_schema
from schemas import versions
from schemas.example import SEGMENTATION, DatasetSpec
from tessera import synthetic
from tests import corpus
from tests.conftest import upload_tree

IN_PROCESS = ["--direct_running_mode=in_memory"]
MULTI_PROCESS = ["--direct_running_mode=multi_processing", "--direct_num_workers=2"]


def run_job(raw, out, *extra, beam_args=IN_PROCESS) -> int:
    return preprocess.run(["--input", str(raw), "--output", str(out), *map(str, extra), *beam_args])


def read_rejected(dataset) -> list[dict]:
    with open(os.path.join(dataset, "rejected.jsonl")) as handle:
        return [json.loads(line) for line in handle]


# ------------------------------------------------------------------ composite transforms

def test_read_image_pairs_pairs_by_stem_and_rejects_the_rest(tmp_path):
    for rel in ["images/a.png", "images/b.jpg", "masks/a.png", "masks/b.png", "images/c.png",
                "masks/d.png", "images/train/e.png", "masks/train/e.tif", "images/readme.txt"]:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"x")
    root = str(tmp_path)
    with test_pipeline.TestPipeline() as p:
        out = p | pt.ReadImagePairs(root)
        assert_that(out.sources | beam.Map(lambda s: (s.id, s.split, os.path.basename(s.mask_path))),
                    equal_to([("a", None, "a.png"), ("b", None, "b.png"), ("train/e", "train", "e.tif")]),
                    label="pairs")
        assert_that(out.rejected | beam.Map(lambda r: (os.path.relpath(r["source"], root), r["reason"])),
                    equal_to([("images/c.png", "missing_mask"), ("masks/d.png", "missing_image"),
                              ("images/readme.txt", "not_an_image")]), label="rejected")


def test_assign_splits_hash_is_stable_and_stratified_covers_every_split():
    ids = [f"img_{i}" for i in range(200)]
    fractions = (0.8, 0.1, 0.1)
    splits = {i: sources.assign_split(i, fractions) for i in ids}
    more = {i: sources.assign_split(i, fractions) for i in ids + [f"new_{i}" for i in range(50)]}
    assert all(more[i] == splits[i] for i in ids)  # adding sources moves nothing
    assert 0.65 < sum(s == "train" for s in splits.values()) / len(ids) < 0.95
    strat = sources.stratified_splits(["a", "b", "c"], fractions)
    assert sorted(strat.values()) == ["test", "train", "val"]
    with test_pipeline.TestPipeline() as p:
        srcs = [sources.Source(id=f"{c}/{i}", image_path="x", label=c) for c in "xyz" for i in range(4)]
        srcs.append(sources.Source(id="test/x/fixed", image_path="x", label="x", split="test"))
        out = p | beam.Create(srcs) | pt.AssignSplits(fractions, stratify=True)
        assert_that(out | beam.Map(lambda s: (s.label, s.split)) | beam.Distinct(),
                    equal_to([(c, s) for c in "xyz" for s in ("train", "val", "test")]))


def write_pair(root: pathlib.Path, name: str, rng, h=20, w=30) -> sources.Source:
    image, mask = synthetic.segmentation_pair(rng, h, w)
    (root / f"{name}.png").write_bytes(pixels.encode_png(image))
    (root / f"{name}_mask.png").write_bytes(pixels.encode_png((mask * 255)[..., None]))
    return sources.Source(name, str(root / f"{name}.png"), str(root / f"{name}_mask.png"),
                          num_bytes=1000, split="train" if name.startswith("t") else "val")


def test_write_shards_builds_every_shard_and_dead_letters_bad_sources(tmp_path):
    rng = np.random.default_rng(0)
    good = [write_pair(tmp_path, f"t{i}", rng) for i in range(5)] + [write_pair(tmp_path, "v0", rng)]
    (tmp_path / "tbad.png").write_bytes(b"not a png")
    bad = sources.Source("tbad", str(tmp_path / "tbad.png"), good[0].mask_path, num_bytes=10, split="train")
    gone = sources.Source("tgone", str(tmp_path / "gone.png"), good[0].mask_path, num_bytes=10, split="train")
    spec = DatasetSpec(SEGMENTATION, core=16, margin=4, channels=3)
    settings = examples.TileSettings(spec=spec, augment_copies=1)
    with test_pipeline.TestPipeline() as p:
        out = p | beam.Create(good + [bad, gone]) | shards.WriteShards(
            str(tmp_path / "out"), settings, images.ImagePolicy(), masks.parse_mask_values("binary", 2),
            shard_bytes=10**9, min_shards=3)
        # 7 train sources -> 3 shards, 1 val source -> 1 shard; 2 x 2 cores, train doubled by one copy
        assert_that(out.shards | beam.Map(lambda s: (s["name"], s["count"])),
                    equal_to([(f"tessera-train.tfrecord-0000{i}-of-00003", 3) for i in range(3)]
                             + [("tessera-val.tfrecord-00000-of-00001", 1)]), label="shards")
        assert_that(out.shards | beam.Map(lambda s: s["num_examples"]) | beam.CombineGlobally(sum),
                    equal_to([5 * 4 * 2 + 4]), label="examples")
        assert_that(out.rejected | beam.Map(lambda r: (r["source"].split(" + ")[0][-8:], r["reason"])),
                    equal_to([("tbad.png", "not_an_image"), ("gone.png", "missing_file")]), label="rejected")
        assert_that(out.source_stats | beam.Map(lambda s: s["split"]), equal_to(["train"] * 5 + ["val"]),
                    label="stats")


def test_tile_examples_cut_cores_and_add_copies_only_in_train():
    spec = DatasetSpec(SEGMENTATION, core=16, margin=4, channels=3)
    settings = examples.TileSettings(spec=spec, augment_copies=2)
    image, mask = synthetic.segmentation_pair(np.random.default_rng(1), 20, 40)
    train = list(examples.tile_examples(sources.Source("t", "t.png", "m.png", split="train"), image, mask, settings))
    val = list(examples.tile_examples(sources.Source("v", "v.png", "m.png", split="val"), image, mask, settings))
    assert sorted(e["copy"] for e in train) == [0] * 6 + [1] * 6 + [2] * 6  # 2 x 3 cores
    assert [e["copy"] for e in val] == [0] * 6
    assert all(e["image"].shape == (24, 24, 3) and e["mask"].shape == (24, 24, 1) for e in train)
    assert len({e["id"] for e in train}) == 18
    assert len({e["augmentation"] for e in train if e["copy"]}) == 12  # every copy its own transform


def test_tile_examples_match_the_source_at_the_recorded_coordinates():
    spec = DatasetSpec(SEGMENTATION, core=16, margin=6, channels=3)
    rng = np.random.default_rng(2)
    image, mask = synthetic.segmentation_pair(rng, 23, 37)
    source = sources.Source("s", "s.png", "m.png", split="val")
    cut = list(examples.tile_examples(source, image, mask, examples.TileSettings(spec)))
    assert len(cut) == len(tiling.core_grid(23, 37, 16))
    for e in cut:
        y, x, h, w, m = e["core_y"], e["core_x"], e["core_h"], e["core_w"], e["margin"]
        np.testing.assert_array_equal(e["image"][m:m + h, m:m + w], image[y:y + h, x:x + w])
        np.testing.assert_array_equal(e["mask"][m:m + h, m:m + w, 0], mask[y:y + h, x:x + w])
        assert (e["mask"] == 255).sum() == e["mask"].size - np.count_nonzero(
            tiling.cut_mask_tile(np.zeros((23, 37, 1), np.uint8), y, x, 16, 6) != 255)


# ------------------------------------------------------------------ the whole job

@pytest.fixture(scope="module")
def raw_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("raw")
    synthetic.write_segmentation_folder(root, count=10, size=(40, 56), seed=3)
    return root


@pytest.fixture(scope="module")
def dataset(raw_folder, tmp_path_factory):
    out = tmp_path_factory.mktemp("out") / "ds"
    assert run_job(raw_folder, out, "--tile-size", 24, "--margin", 8, "--augment-copies", 2, "--target", "classes") == 0
    return out / versions.CURRENT_LINK


def test_job_writes_a_tfds_dataset_whose_tiles_equal_the_source_pixels(dataset, raw_folder):
    import tensorflow_datasets as tfds

    builder = tfds.builder_from_directory(str(dataset))
    manifest = pq.read_table(dataset / "manifest.parquet").to_pylist()
    assert sum(builder.info.splits[s].num_examples for s in builder.info.splits) == len(manifest)
    success = json.loads((dataset / "_SUCCESS").read_text())
    assert success["sources_in"] == 10 == success["sources_written"] + success["rejected"]
    checked = 0
    for split in builder.info.splits:
        for e in tfds.as_numpy(builder.as_dataset(split=split)):
            sid = e["source_id"].decode()
            image = images.read_image((raw_folder / "images" / f"{sid}.png").read_bytes(), sid)
            mask = images.read_mask((raw_folder / "masks" / f"{sid}.png").read_bytes(), sid,
                                    masks.parse_mask_values("binary", 2))
            y, x, m = int(e["core_y"]), int(e["core_x"]), int(e["margin"])
            if e["copy"] == 0:
                np.testing.assert_array_equal(e["image"], tiling.cut_tile(image, y, x, 24, m))
                np.testing.assert_array_equal(e["mask"], tiling.cut_mask_tile(mask[..., None], y, x, 24, m))
                checked += 1
            else:  # the recorded transform reproduces the augmented tile
                params = json.loads(e["augmentation"])
                expected, _ = static_augment.apply_transform(tiling.cut_tile(image, y, x, 24, m), None, params)
                np.testing.assert_array_equal(e["image"], expected)
    assert checked == sum(1 for r in manifest if r["copy"] == 0)


def test_no_split_leakage_and_augmentation_only_in_train(dataset):
    rows = pq.read_table(dataset / "manifest.parquet").to_pylist()
    split_of: dict[str, set] = {}
    for r in rows:
        split_of.setdefault(r["source_id"], set()).add(r["split"])
        assert r["copy"] == 0 or r["split"] == "train"
    assert all(len(s) == 1 for s in split_of.values())
    assert len({r["id"] for r in rows}) == len(rows)
    stats = json.loads((dataset / "stats.json").read_text())
    assert abs(sum(stats["class_frequencies"].values()) - 1) < 1e-9
    assert stats["examples"] == {s: sum(r["split"] == s for r in rows) for s in stats["examples"]}


def test_multi_process_run_is_byte_identical_to_in_process(dataset, raw_folder, tmp_path):
    out = tmp_path / "ds"
    run_job(raw_folder, out, "--tile-size", 24, "--margin", 8, "--augment-copies", 2, "--target", "classes", beam_args=MULTI_PROCESS)
    shards = sorted(p.name for p in dataset.glob("tessera-*.tfrecord-*"))
    assert shards == sorted(p.name for p in (out / versions.CURRENT_LINK).glob("tessera-*.tfrecord-*"))
    for name in shards:
        assert (out / versions.CURRENT_LINK / name).read_bytes() == (dataset / name).read_bytes(), name
    assert json.loads((out / versions.CURRENT_LINK / "_SUCCESS").read_text())["fingerprint"] == json.loads(
        (dataset / "_SUCCESS").read_text())["fingerprint"]


def test_shards_follow_the_byte_target(raw_folder, tmp_path):
    out = tmp_path / "ds"
    run_job(raw_folder, out, "--tile-size", 24, "--margin", 8, "--shard-bytes", 30_000, "--min-shards", 1,
            "--split-fractions", "1,0,0")
    shards = sorted((out / versions.CURRENT_LINK).glob("tessera-train.tfrecord-*"))
    sizes = [p.stat().st_size for p in shards]
    assert len(shards) > 2 and max(sizes) < 3 * 30_000  # sized from an estimate: within a small factor
    rows = pq.read_table(out / versions.CURRENT_LINK / "manifest.parquet").to_pylist()
    assert {r["shard"] for r in rows} == {p.name for p in shards}


def test_existing_output_is_refused_without_overwrite_and_replaced_with_it(dataset, raw_folder, tmp_path):
    out = tmp_path / "ds"
    run_job(raw_folder, out, "--tile-size", 32, "--margin", 0)
    with pytest.raises(SystemExit, match="--overwrite"):
        run_job(raw_folder, out, "--tile-size", 32, "--margin", 0)
    run_job(raw_folder, out, "--tile-size", 24, "--margin", 8, "--augment-copies", 2, "--overwrite")
    assert json.loads((out / versions.CURRENT_LINK / "tessera_dataset.json").read_text())["core"] == 24
    assert not list(tmp_path.glob("ds.*"))  # no temporary or old directories left behind


def test_empty_input_fails_clearly(tmp_path):
    (tmp_path / "raw" / "images").mkdir(parents=True)
    with pytest.raises(SystemExit, match="no input files"):
        run_job(tmp_path / "raw", tmp_path / "ds")
    assert not (tmp_path / "ds").exists()


# ------------------------------------------------------------------ bad inputs

def test_every_bad_input_is_rejected_with_its_reason_and_nothing_is_lost(tmp_path):
    info = corpus.write_segmentation_corpus(tmp_path / "raw")
    out = tmp_path / "ds"
    run_job(tmp_path / "raw", out, "--tile-size", 32, "--margin", 4, "--mask-values", "binary",
            "--max-rejected-fraction", "0.9", "--max-pixels", 10_000_000)
    rejected = read_rejected(out / versions.CURRENT_LINK)
    assert all(tuple(sorted(r)) == tuple(sorted(rejected_schema.FIELDS)) for r in rejected)  # the contract
    reasons_by_file = {f: r["reason"] for r in rejected for f in r["files"]}
    for sid, reason in info["bad"].items():
        for rel in info["sources"][sid]:
            path = str(tmp_path / "raw" / rel)
            assert reasons_by_file.get(path) == reason, (sid, path, reasons_by_file.get(path))
    written = set(pq.read_table(out / versions.CURRENT_LINK / "manifest.parquet").column("source_id").to_pylist())
    assert written == set(info["good"])
    success = json.loads((out / versions.CURRENT_LINK / "_SUCCESS").read_text())
    assert success["sources_in"] == success["sources_written"] + success["rejected"] == len(written) + len(rejected)
    every_file = {str(p) for p in (tmp_path / "raw").rglob("*") if p.is_file()}
    good_files = {str(p) for p in (tmp_path / "raw").rglob("*") if p.is_file() and p.stem in info["good"]}
    assert every_file == good_files | set(reasons_by_file)  # every file is accounted for


def test_too_many_rejections_fail_the_job_and_publish_nothing(tmp_path, capsys):
    corpus.write_segmentation_corpus(tmp_path / "raw", good=2)
    with pytest.raises(SystemExit, match="max-rejected-fraction") as refused:
        run_job(tmp_path / "raw", tmp_path / "ds", "--tile-size", 32, "--margin", 4, "--max-rejected-fraction", 0.1)
    assert not (tmp_path / "ds").exists()
    kept = list(tmp_path.glob("ds.rejected-*.jsonl"))
    assert len(kept) == 1 and kept[0].read_text().count("\n") > 5
    assert str(kept[0]) in str(refused.value)   # the message says where the records are
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds.rejected-" + kept[0].name.split("-", 1)[1], "raw"]
    printed = capsys.readouterr()
    assert "dataset:" not in printed.out + printed.err and " train " not in printed.out + printed.err


def test_classification_layout_standardises_inputs_and_stratifies(tmp_path):
    import tensorflow_datasets as tfds

    info = corpus.write_classification_corpus(tmp_path / "raw", per_class=4)
    out = tmp_path / "ds"
    run_job(tmp_path / "raw", out, "--layout", "classification", "--image-size", 32, "--augment-copies", 1,
            "--max-rejected-fraction", 0.5)
    spec = DatasetSpec.from_json((out / versions.CURRENT_LINK / "tessera_dataset.json").read_text())
    assert spec.class_names == tuple(sorted(info["classes"])) and spec.whole_image
    reasons = {r["reason"] for r in read_rejected(out / versions.CURRENT_LINK)}
    assert reasons == {"not_an_image", "empty_folder"}
    builder = tfds.builder_from_directory(str(out / versions.CURRENT_LINK))
    labels_per_split = {s: {int(e["label"]) for e in tfds.as_numpy(builder.as_dataset(split=s))}
                        for s in builder.info.splits}
    assert all(labels == set(range(len(spec.class_names))) for labels in labels_per_split.values())
    rows = pq.read_table(out / versions.CURRENT_LINK / "manifest.parquet").to_pylist()
    assert {r["source_id"] for r in rows} == set(info["good"])
    assert all(r["label"] == info["labels"][r["source_id"]] for r in rows)
    for e in tfds.as_numpy(builder.as_dataset(split="train").take(3)):
        assert e["image"].shape == (32, 32, 3) and e["image"].dtype == np.uint8


# ------------------------------------------------------------------ gs://

def test_gs_input_and_output_through_the_emulator(raw_folder, dataset, gcs_prefix, tmp_path):
    from apache_beam.io.filesystems import FileSystems

    upload_tree(raw_folder, f"{gcs_prefix}/raw")
    run_job(f"{gcs_prefix}/raw", f"{gcs_prefix}/ds", "--tile-size", 24, "--margin", 8, "--augment-copies", 2, "--target", "classes")
    version = resolve_version(f"{gcs_prefix}/ds")
    assert version != f"{gcs_prefix}/ds"  # published as a version, pointed to by CURRENT
    listed = {m.path[len(version) + 1:] for m in FileSystems.match([f"{version}/**"])[0].metadata_list}
    assert "_SUCCESS" in listed and not any(p.startswith("_parts") for p in listed)
    for name in listed:
        if "tfrecord" in name:
            with FileSystems.open(f"{version}/{name}") as handle:
                assert handle.read() == (dataset / name).read_bytes(), name
    assert not FileSystems.match([f"{gcs_prefix}/ds.tmp-*"])[0].metadata_list


def test_inspect_renders_a_contact_sheet(dataset, tmp_path):
    from PIL import Image

    from pipelines.preprocess import inspect

    out = tmp_path / "tiles.png"
    assert inspect.run([str(dataset), "--output", str(out), "--count", "6", "--columns", "3", "--cell", "64"]) == 0
    sheet = np.asarray(Image.open(out))
    assert sheet.shape == (2 * (64 + 32), 3 * (64 + 4), 3)
    assert sheet.std() > 10  # tiles were drawn, not a blank canvas


def test_inspect_samples_tiles_from_many_sources(dataset, capsys):
    from pipelines.preprocess import inspect

    rows = pq.read_table(dataset / "manifest.parquet").to_pylist()
    train = [r for r in rows if r["split"] == "train"]
    sources = {r["source_id"] for r in train}
    picked = inspect.spread_sample(train, len(sources) + 2)
    assert {r["source_id"] for r in picked[:len(sources)]} == sources     # every source once before any twice
    assert inspect.run([str(dataset), "--output", str(dataset.parent.parent / "s.png"), "--count", "8"]) == 0
    assert f"from {min(8, len(sources))} sources" in capsys.readouterr().out


def test_read_class_folders_labels_by_folder_and_rejects_strays(tmp_path):
    for rel in ["cup/a.jpg", "cup/sub/b.png", "book/c.png", "loose.png", "book/notes.txt", "mug/d.png"]:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"xx")
    with test_pipeline.TestPipeline() as p:
        out = p | pt.ReadClassFolders(str(tmp_path), ("book", "cup"))
        assert_that(out.sources | beam.Map(lambda s: (s.id, s.label, s.num_bytes)),
                    equal_to([("cup/a", "cup", 2), ("cup/sub/b", "cup", 2), ("book/c", "book", 2)]), label="ok")
        assert_that(out.rejected | beam.Map(lambda r: (os.path.relpath(r["source"], tmp_path), r["reason"])),
                    equal_to([("loose.png", "no_class_folder"), ("book/notes.txt", "not_an_image"),
                              ("mug/d.png", "unknown_class")]), label="rejected")


def test_summarise_sources_counts_splits_pixels_labels_and_the_blocks_of_large_sources(tmp_path):
    from collections import Counter

    spec = DatasetSpec("segmentation", 8, 2, 3)

    def unit(source_id, split, pixels, units=1, failed=False, tiles=4, kept=4):
        counts = Counter(tiles=tiles, kept=kept, dropped_background=tiles - kept, class_0=pixels[0], class_1=pixels[1])
        if failed:
            counts = Counter(rejected_tiles=tiles, tiles=tiles)
        return examples.unit_stats(sources.Source(source_id, f"{source_id}.png", f"m/{source_id}.png", split=split),
                                   counts, spec, units=units, failed=failed, level=0, pixel_size_um=None)

    stats = [unit("a", "train", [3, 1]), unit("b", "train", [5, 7]), unit("c", "val", [100, 100]),
             unit("big", "train", [10, 0], units=3), unit("big", "train", [0, 10], units=3, kept=1),
             unit("big", "train", [0, 0], units=3, failed=True),           # one block unreadable: the rest stays
             unit("lost", "test", [0, 0], failed=True)]                    # its only block unreadable: rejected
    with test_pipeline.TestPipeline() as p:
        _ = p | beam.Create(stats) | pt.SummariseSources(str(tmp_path / "s.json"))
    summary = json.loads((tmp_path / "s.json").read_text())
    assert summary["sources"] == {"train": 3, "val": 1} and summary["failed_sources"] == ["lost"]
    assert summary["class_pixels"] == [18, 18] and summary["labels"] == {}
    big = summary["per_source"]["big"]
    assert (big["tiles"], big["kept"], big["dropped_background"], big["rejected_tiles"]) == (12, 5, 3, 4)
    assert summary["tiles"]["tiles"] == 4 * 3 + 12 and summary["tiles"]["kept"] == 12 + 5


def test_sixteen_bit_grayscale_is_kept_when_asked(tmp_path):
    import tensorflow_datasets as tfds
    from PIL import Image

    raw = tmp_path / "raw"
    (raw / "images").mkdir(parents=True)
    (raw / "masks").mkdir()
    rng = np.random.default_rng(5)
    for i in range(3):
        wide = rng.integers(0, 65536, (30, 40), dtype=np.uint16)
        Image.fromarray(wide).save(raw / "images" / f"w{i}.png")
        Image.fromarray((rng.random((30, 40)) > 0.5).astype(np.uint8) * 255).save(raw / "masks" / f"w{i}.png")
    out = tmp_path / "ds"
    run_job(raw, out, "--tile-size", 16, "--margin", 4, "--bit-depth", "keep16", "--color-mode", "grayscale",
            "--split-fractions", "1,0,0")
    spec = DatasetSpec.from_json((out / versions.CURRENT_LINK / "tessera_dataset.json").read_text())
    assert (spec.dtype, spec.channels) == ("uint16", 1)
    source = np.asarray(Image.open(raw / "images" / "w0.png"))
    for e in tfds.as_numpy(tfds.builder_from_directory(str(out / versions.CURRENT_LINK)).as_dataset(split="train")):
        if e["source_id"] == b"w0":
            y, x = int(e["core_y"]), int(e["core_x"])
            assert e["image"].dtype == np.uint16
            np.testing.assert_array_equal(e["image"][..., 0], tiling.cut_tile(source, y, x, 16, 4))


def test_a_failing_pipeline_leaves_nothing_behind(raw_folder, tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("worker died")

    monkeypatch.setattr(examples, "tile_examples", broken)  # a bug inside the job, not bad input
    with pytest.raises(RuntimeError, match="worker died"):
        run_job(raw_folder, tmp_path / "ds", "--tile-size", 24, "--margin", 8)
    assert list(tmp_path.iterdir()) == []


def test_classification_files_sharing_an_id_are_all_rejected(tmp_path):
    raw = tmp_path / "raw"
    synthetic.write_classification_folder(raw, classes=("disc", "square"), per_class=4)
    image = (raw / "disc" / "img_000.jpg").read_bytes()
    (raw / "disc" / "img_000.png").write_bytes(pixels.encode_png(images.read_image(image, "x.jpg")))
    run_job(raw, tmp_path / "ds", "--layout", "classification", "--image-size", 24, "--max-rejected-fraction", 0.5)
    rejected = read_rejected(tmp_path / "ds" / versions.CURRENT_LINK)
    assert sorted((os.path.basename(r["source"]), r["reason"]) for r in rejected) == [
        ("img_000.jpg", "duplicate_id"), ("img_000.png", "duplicate_id")]
    success = json.loads((tmp_path / "ds" / versions.CURRENT_LINK / "_SUCCESS").read_text())
    assert (success["sources_in"], success["sources_written"], success["rejected"]) == (9, 7, 2)


def test_default_worker_count_respects_the_cpus_this_process_may_use():
    from pipelines.beam import runner

    assert 1 <= runner.available_cpus() <= (os.cpu_count() or 1)
    args = runner.local_defaults([])
    assert f"--direct_num_workers={runner.available_cpus()}" in args
    assert runner.local_defaults(["--runner=DataflowRunner"]) == ["--runner=DataflowRunner"]


def test_reject_duplicate_ids_and_write_json(tmp_path):
    a = sources.Source("cup/a", "/r/cup/a.png", label="cup")
    a_jpg = sources.Source("cup/a", "/r/cup/a.jpg", label="cup")
    b = sources.Source("cup/b", "/r/cup/b.png", label="cup")
    with test_pipeline.TestPipeline() as p:
        out = p | beam.Create([a, a_jpg, b]) | pt.RejectDuplicateIds()
        assert_that(out.sources | beam.Map(lambda s: s.image_path), equal_to(["/r/cup/b.png"]), label="kept")
        assert_that(out.rejected | beam.Map(lambda r: (r["source"], r["reason"])),
                    equal_to([("/r/cup/a.jpg", "duplicate_id"), ("/r/cup/a.png", "duplicate_id")]), label="dup")
        _ = out.rejected | pt.WriteJson(str(tmp_path / "rejected.json"))
    written = json.loads((tmp_path / "rejected.json").read_text())
    assert [r["source"] for r in written] == ["/r/cup/a.jpg", "/r/cup/a.png"]  # sorted, one file


# ------------------------------------------------------------------ boundary target

def boundary_raw(root: pathlib.Path, masks_by_name: dict) -> pathlib.Path:
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for name, mask in masks_by_name.items():
        Image.fromarray((np.arange(mask.size).reshape(mask.shape) % 251).astype(np.uint8)).save(
            root / "images" / f"{name}.png")
        Image.fromarray(mask).save(root / "masks" / f"{name}.png")
    return root


def test_target_auto_is_a_boundary_for_one_object_class_and_classes_otherwise():
    from pipelines.preprocess.options import PreprocessConfig, resolved_target

    assert resolved_target(PreprocessConfig(input="i", output="o")) == "boundary"
    assert resolved_target(PreprocessConfig(input="i", output="o", class_names=("bg", "cell"))) == "boundary"
    assert resolved_target(PreprocessConfig(input="i", output="o", class_names=("bg", "a", "b"))) == "classes"
    assert resolved_target(PreprocessConfig(input="i", output="o", layout="classification")) == "classes"
    assert resolved_target(PreprocessConfig(input="i", output="o", target="classes")) == "classes"


def test_boundary_target_settings_are_checked_before_running(tmp_path):
    raw = boundary_raw(tmp_path / "raw", {"a": np.zeros((40, 40), np.uint8)})
    with pytest.raises(SystemExit, match="one class.*--mask-values v:c"):
        run_job(raw, tmp_path / "ds", "--target", "boundary", "--class-names", "background,cell,nucleus")
    with pytest.raises(SystemExit, match="--distance-map needs --target boundary"):
        run_job(raw, tmp_path / "ds", "--distance-map", "--target", "classes")
    with pytest.raises(SystemExit, match="border-thickness"):
        run_job(raw, tmp_path / "ds", "--target", "boundary", "--border-thickness", "0")
    assert not (tmp_path / "ds").exists()


def test_a_boundary_target_keeps_ignore_and_refuses_masks_of_two_object_classes(tmp_path):
    mask = np.zeros((40, 40), np.uint8)
    mask[5:20, 5:20] = 1
    mask[5:20, 20:30] = 2                       # ignored: the object's right side is unknown
    raw = boundary_raw(tmp_path / "raw", {"good": mask, "plain": (mask == 1).astype(np.uint8)})
    out = tmp_path / "ds"
    assert run_job(raw, out, "--tile-size", 40, "--margin", 0, "--split-fractions", "1,0,0", "--target", "boundary",
                   "--mask-values", "0:0,1:1,2:ignore", "--max-rejected-fraction", 1) == 0
    # with the map both masks are fine; as class ids, "good" holds a second object class
    assert run_job(raw, tmp_path / "ids", "--tile-size", 40, "--margin", 0, "--split-fractions", "1,0,0",
                   "--target", "boundary", "--mask-values", "ids", "--max-rejected-fraction", 1) == 0
    rejected = read_rejected(tmp_path / "ids" / versions.CURRENT_LINK)
    assert [(r["reason"], r["files"][0].split("/")[-1]) for r in rejected] == [("mask_values", "good.png")]
    assert "--target boundary takes masks of one object class" in rejected[0]["detail"]
    import tensorflow as tf

    version = out / versions.CURRENT_LINK
    files = sorted(str(p) for p in version.glob("tessera-*"))
    targets_by_id = {}
    for record in tf.data.TFRecordDataset(files):
        features = tf.train.Example.FromString(record.numpy()).features.feature
        png = features["mask"].bytes_list.value[0]
        targets_by_id[features["source_id"].bytes_list.value[0].decode()] = np.asarray(Image.open(io.BytesIO(png)))
    target = targets_by_id["good"]
    expected = np.zeros((40, 40), np.uint8)
    expected[5:20, 5:20] = 1
    expected[7:18, 7:20] = 2                    # no boundary along the ignored side
    expected[5:20, 20:30] = 255
    assert np.array_equal(target, expected)
    spec = DatasetSpec.from_json((version / "tessera_dataset.json").read_text())
    assert spec.class_names == ("background", "boundary", "interior") and spec.object_class == "foreground"
