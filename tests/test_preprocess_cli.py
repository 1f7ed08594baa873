"""``tessera preprocess`` as a user meets it: a missing input folder, --help, --color-mode auto,
failed runs that publish nothing and leave only their rejected records, splits of small data
(empty-split warning, --split-file, --folds), and outputs inside the input refused however written."""
from __future__ import annotations

import json
import os
import re

import apache_beam as beam
import numpy as np
import pytest
import tifffile
from apache_beam.testing import test_pipeline
from apache_beam.testing.util import assert_that, equal_to
from PIL import Image

from pipelines.core import sources
from pipelines.preprocess import colour, splits
from pipelines.preprocess import job as preprocess
from pipelines.preprocess import transforms as pt
from pipelines.preprocess.options import build_parser
from tessera import synthetic
from tests.test_cli_help import option_helps
from tests.test_preprocess_large import records

IN_PROCESS = ["--direct_running_mode=in_memory"]
SMALL = ["--tile-size", "16", "--margin", "4"]


def run_job(raw, out, *extra) -> int:
    return preprocess.run(["--input", str(raw), "--output", str(out), *map(str, extra), *IN_PROCESS])


def published(out, name: str) -> dict:
    return json.loads((out / "current" / name).read_text())


def manifest_splits(out) -> dict[str, str]:
    import pyarrow.parquet as pq

    rows = pq.read_table(out / "current" / "manifest.parquet").to_pylist()
    return {r["source_id"]: r["split"] for r in rows}


# ------------------------------------------------------------------ input folder and --help

def test_a_missing_input_folder_is_named_in_one_line_with_exit_2(tmp_path, capsys):
    for given, says in ((tmp_path / "nope", "no such folder"), (tmp_path / "file.txt", "is a file")):
        if given.name == "file.txt":
            given.write_text("x")
        with pytest.raises(SystemExit) as exited:
            run_job(given, tmp_path / "ds")
        assert exited.value.code == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and says in err and str(given) in err, err
    assert not (tmp_path / "ds").exists()


def test_help_describes_both_layouts_and_every_flag_with_its_default(monkeypatch):
    monkeypatch.setenv("COLUMNS", "100")
    parser = build_parser()
    text = parser.format_help()
    for part in ("INPUT/images/", "INPUT/masks/", "INPUT/<class>/", "train/, val/ or test/", "outside --input"):
        assert part in text, part
    helps = option_helps(parser)
    assert len(helps) >= 40
    undocumented = {f: h for f, h in helps.items() if f != "-h" and not re.search(r"\(default|\brequired\b", h)}
    assert undocumented == {}
    assert [f for f, h in helps.items() if len(h.split()) < 5] == []
    assert "instances" in helps["--mask-values"] and "auto" in helps["--color-mode"]
    for flag in ("--layout", "--bit-depth", "--fit", "--max-rejected-fraction", "--png-compression"):
        assert len(helps[flag].split()) > 8, helps[flag]


# ------------------------------------------------------------------ --color-mode auto

def save(path, array, **kw):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, **kw)
    return str(path)


def test_auto_color_mode_reads_headers_gray_sources_give_grayscale_any_colour_gives_rgb(tmp_path):
    gray = np.arange(64, dtype=np.uint8).reshape(8, 8)
    files = {"l": save(tmp_path / "l.png", gray), "i16": save(tmp_path / "i16.png", gray.astype(np.uint16) * 200),
             "jpg": save(tmp_path / "g.jpg", gray)}
    tifffile.imwrite(tmp_path / "t.tif", gray.astype(np.uint16))
    files["tif"] = str(tmp_path / "t.tif")
    gray_palette = Image.fromarray(gray).convert("P")
    gray_palette.putpalette([v for i in range(256) for v in (i, i, i)])
    gray_palette.save(tmp_path / "gp.png")
    files["gray_palette"] = str(tmp_path / "gp.png")
    colour_palette = Image.fromarray(gray).convert("P")
    colour_palette.putpalette([v for i in range(256) for v in (i, 0, 255 - i)])
    colour_palette.save(tmp_path / "cp.png")
    tifffile.imwrite(tmp_path / "big_rgb.tif", np.zeros((64, 64, 3), np.uint8), tile=(16, 16), photometric="rgb")
    tifffile.imwrite(tmp_path / "big_gray.tif", np.zeros((64, 64), np.uint8), tile=(16, 16))
    (tmp_path / "broken.png").write_bytes(b"\x89PNG broken")

    grays = list(files.values()) + [str(tmp_path / "big_gray.tif"), str(tmp_path / "broken.png")]
    mode, record = colour.decide(grays)
    assert mode == "grayscale" and record["headers_read"] == len(grays) - 1   # the broken one is left out
    assert record["header_modes"]["P (gray palette)"] == 1
    for colourful in ("cp.png", "big_rgb.tif"):
        mode, record = colour.decide(grays + [str(tmp_path / colourful)])
        assert mode == "rgb" and colourful in record["reason"]
    assert colour.decide([str(tmp_path / "broken.png")])[0] == "rgb"   # nothing known: rgb keeps every channel


def test_auto_color_mode_never_opens_a_fifo_nor_follows_a_link_out_of_the_input(tmp_path):
    import threading

    save(tmp_path / "raw" / "gray.png", np.zeros((8, 8), np.uint8))
    os.mkfifo(tmp_path / "raw" / "fifo.png")
    save(tmp_path / "elsewhere" / "colour.png", np.zeros((8, 8, 3), np.uint8))
    (tmp_path / "raw" / "link.png").symlink_to(tmp_path / "elsewhere" / "colour.png")
    paths = [str(tmp_path / "raw" / n) for n in ("fifo.png", "link.png", "gray.png")]
    found = {}
    reader = threading.Thread(target=lambda: found.update(zip(("mode", "record"), colour.decide(
        paths, str(tmp_path / "raw")))), daemon=True)
    reader.start()
    reader.join(60)
    assert found["mode"] == "grayscale" and found["record"]["headers_read"] == 1   # neither blocked nor followed
    assert colour.decide(paths[1:], str(tmp_path / "raw"), follow_symlinks=True)[0] == "rgb"


def test_auto_color_mode_reads_headers_on_gcs_too(tmp_path, gcs_prefix):
    from tests.conftest import upload_tree

    gray = np.arange(64, dtype=np.uint8).reshape(8, 8)
    save(tmp_path / "up" / "l.png", gray)
    tifffile.imwrite(tmp_path / "up" / "t16.tif", gray.astype(np.uint16))
    tifffile.imwrite(tmp_path / "up" / "tiled.tif", np.zeros((64, 64), np.uint8), tile=(16, 16))
    upload_tree(tmp_path / "up", f"{gcs_prefix}/up")
    paths = [f"{gcs_prefix}/up/{name}" for name in ("l.png", "t16.tif", "tiled.tif")]
    mode, record = colour.decide(paths)
    assert (mode, record["headers_read"]) == ("grayscale", 3), record


def gray_folder(root, count=3, size=40):
    rng = np.random.default_rng(3)
    for i in range(count):
        image, mask = synthetic.segmentation_pair(rng, size, size)
        save(root / "images" / f"g{i}.png", image[..., 0])
        save(root / "masks" / f"g{i}.png", mask * 255)


def test_gray_sources_make_a_grayscale_dataset_and_config_records_the_decision(tmp_path):
    gray_folder(tmp_path / "raw")
    assert run_job(tmp_path / "raw", tmp_path / "ds", *SMALL, "--split-fractions", "1,0,0") == 0
    assert published(tmp_path / "ds", "tessera_dataset.json")["channels"] == 1
    config = published(tmp_path / "ds", "config.json")
    assert config["decisions"]["color_mode"]["requested"] == "auto"
    assert config["decisions"]["color_mode"]["decided"] == config["preprocess"]["color_mode"] == "grayscale"
    assert run_job(tmp_path / "raw", tmp_path / "rgb", *SMALL, "--split-fractions", "1,0,0", "--color-mode", "rgb") == 0
    assert published(tmp_path / "rgb", "tessera_dataset.json")["channels"] == 3


def test_a_large_gray_source_read_by_blocks_agrees_with_the_whole_image_path(tmp_path):
    raw = tmp_path / "raw"
    yy, xx = np.mgrid[0:600, 0:560]   # blocks of 448 px at --memory-limit-mb 1 (one gray channel)
    save(raw / "images" / "s.png", (xx[:100] % 200).astype(np.uint8))
    tifffile.imwrite(raw / "images" / "big.tif", ((yy * 3 + xx) % 256).astype(np.uint8), tile=(32, 32))
    save(raw / "masks" / "s.png", ((xx[:100] // 25) % 2).astype(np.uint8))
    tifffile.imwrite(raw / "masks" / "big.tif", (((yy // 20) + (xx // 30)) % 2).astype(np.uint8), tile=(32, 32))
    args = ("--tile-size", 64, "--margin", 4, "--split-fractions", "1,0,0", "--mask-values", "ids")
    assert run_job(raw, tmp_path / "whole", *args, "--large-image-pixels", 0) == 0
    assert run_job(raw, tmp_path / "blocks", *args, "--large-image-pixels", 10_000, "--memory-limit-mb", 1) == 0
    for out in ("whole", "blocks"):
        assert published(tmp_path / out, "tessera_dataset.json")["channels"] == 1
    assert published(tmp_path / "blocks", "stats.json")["per_source"]["big"]["units"] > 1   # really by blocks
    assert records(tmp_path / "whole" / "current").keys() == records(tmp_path / "blocks" / "current").keys()


# ------------------------------------------------------------------ failed runs

def test_a_run_without_examples_prints_only_the_failure_and_leaves_no_work_dir(tmp_path, capsys):
    synthetic.write_segmentation_folder(tmp_path / "raw", count=3, size=(32, 32), seed=2)
    with pytest.raises(SystemExit) as refused:
        run_job(tmp_path / "raw", tmp_path / "ds", *SMALL, "--min-foreground", 1.0)
    message = str(refused.value)
    assert "no examples were written (0 of 3 inputs rejected, 0 tiles kept)" in message
    assert "nothing was published" in message and "Rejected records" not in message   # none to keep
    assert sorted(p.name for p in tmp_path.iterdir()) == ["raw"]   # no ds, no ds.tmp-*
    printed = capsys.readouterr()
    assert "dataset:" not in printed.out + printed.err and "sources written" not in printed.out + printed.err


# ------------------------------------------------------------------ splits of small data

def test_folds_deal_every_source_into_one_fold_and_every_fold_is_filled():
    ids = [f"img_{i}" for i in range(10)]
    val_of = [{i for i, s in sources.fold_splits(ids, 5, fold).items() if s == "val"} for fold in range(5)]
    assert [len(v) for v in val_of] == [2] * 5
    assert set().union(*val_of) == set(ids)          # each source is val in exactly one fold
    assert sources.fold_splits(ids, 5, 2) == sources.fold_splits(list(reversed(ids)), 5, 2)   # order-free
    assert sources.fold_splits(ids, 5, 2, salt="x") != sources.fold_splits(ids, 5, 2)


def test_split_table_reads_csv_and_json_and_names_bad_rows():
    assert sources.split_table(b"id,split\na,train\nsub/b.png,Val\n./c,test\n", "s.csv") == {
        "a": "train", "sub/b": "val", "c": "test"}
    assert sources.split_table(b'{"a": "train", "b": "test"}', "s.json") == {"a": "train", "b": "test"}
    with pytest.raises(ValueError, match="entry 2 .* one of train, val, test"):
        sources.split_table(b"a,train\nb,holdout\n", "s.csv")
    with pytest.raises(ValueError, match="two splits"):
        sources.split_table(b"a,train\na,test\n", "s.csv")


def test_stratified_folds_fill_every_fold_with_every_class():
    with test_pipeline.TestPipeline() as p:
        srcs = [sources.Source(id=f"{c}/{i}", image_path="x", label=c) for c in "xy" for i in range(6)]
        out = p | beam.Create(srcs) | pt.AssignSplits((0.8, 0.1, 0.1), stratify=True, folds=3, fold=1)
        assert_that(out | beam.Map(lambda s: (s.label, s.split)) | beam.combiners.Count.PerElement(),
                    equal_to([(("x", "val"), 2), (("x", "train"), 4), (("y", "val"), 2), (("y", "train"), 4)]))


def test_a_hash_split_of_ten_images_warns_of_the_empty_test_split(tmp_path, capsys):
    ids = synthetic.write_segmentation_folder(tmp_path / "raw", count=10, size=(24, 24), seed=4)
    salt = next(s for s in map(str, range(100)) if "test" not in {sources.assign_split(i, (0.8, 0.1, 0.1), s) for i in ids})
    assert run_job(tmp_path / "raw", tmp_path / "ds", *SMALL, "--split-salt", salt) == 0
    err = capsys.readouterr().err
    assert "warning: the test split is empty" in err and "--split-file FILE" in err and "--folds K" in err
    assert published(tmp_path / "ds", "config.json")["decisions"]["split"]["mode"] == "hash"


def test_folds_and_a_split_file_decide_the_splits_and_are_recorded(tmp_path, capsys):
    ids = synthetic.write_segmentation_folder(tmp_path / "raw", count=6, size=(24, 24), seed=5)
    assert run_job(tmp_path / "raw", tmp_path / "folds", *SMALL, "--folds", 3, "--fold", 2) == 0
    assert manifest_splits(tmp_path / "folds") == sources.fold_splits(ids, 3, 2)
    assert published(tmp_path / "folds", "config.json")["decisions"]["split"]["mode"] == "folds"
    assert "warning" not in capsys.readouterr().err   # no test split was asked for

    table = tmp_path / "splits.csv"
    table.write_text("id,split\n" + "".join(f"{i},{s}\n" for i, s in zip(ids[:5], ["train", "train", "val", "test",
                                                                                     "test"])) + "typo_1,val\n")
    assert run_job(tmp_path / "raw", tmp_path / "file", *SMALL, "--split-file", table,
                   "--max-rejected-fraction", 0.5) == 0
    assert manifest_splits(tmp_path / "file") == dict(zip(ids[:5], ["train", "train", "val", "test", "test"]))
    assert "warning: 1 of the 6 ids in --split-file" in capsys.readouterr().err   # typo_1 matches no image
    rejected = [json.loads(line) for line in (tmp_path / "file" / "current" / "rejected.jsonl").read_text().splitlines()]
    assert [(os.path.basename(r["source"]), r["reason"]) for r in rejected] == [(f"{ids[5]}.png", "not_in_split_file")]
    recorded = published(tmp_path / "file", "config.json")["decisions"]["split"]
    assert recorded["mode"] == "file" and recorded["ids"] == {"train": 2, "val": 2, "test": 2}


@pytest.mark.parametrize("argv, says", [
    (["--folds", "1"], "--folds K needs K >= 2"), (["--folds", "3", "--fold", "3"], "--fold in 0..K-1"),
    (["--fold", "1"], "--fold needs --folds"), (["--folds", "3", "--split-fractions", "0.5,0.5,0"], "choose one split"),
    (["--split-file", "nowhere.csv"], "--split-file nowhere.csv: cannot read it")])
def test_split_flags_that_contradict_are_refused(tmp_path, argv, says, monkeypatch):
    monkeypatch.chdir(tmp_path)
    synthetic.write_segmentation_folder(tmp_path / "raw", count=2, size=(16, 16), seed=1)
    with pytest.raises(SystemExit, match=re.escape(says)):
        run_job(tmp_path / "raw", tmp_path / "ds", *argv)
    assert not (tmp_path / "ds").exists()


# ------------------------------------------------------------------ output inside the input

@pytest.mark.parametrize("layout", ["segmentation", "classification"])
def test_an_output_inside_the_input_is_refused_however_it_is_written(tmp_path, monkeypatch, layout):
    raw = tmp_path / "raw"
    if layout == "segmentation":
        synthetic.write_segmentation_folder(raw, count=2, size=(16, 16), seed=1)
    else:
        synthetic.write_classification_folder(raw, per_class=2)
    (tmp_path / "link").symlink_to(raw)
    (tmp_path / "outside").mkdir()
    (raw / "to_outside").symlink_to(tmp_path / "outside")   # raw/to_outside/ds is written outside, listed inside
    monkeypatch.chdir(tmp_path)
    spellings = [(raw, raw / "ds"), (f"{raw}/", f"{raw}/ds/"), ("./raw", "./raw/ds"), ("raw/", str(raw / "ds")),
                 (str(raw), "link/ds"), ("link", "raw/images/ds"), ("raw/..", "elsewhere"), ("raw/../raw", "./raw/x"),
                 ("raw", "raw/to_outside/ds"), ("outside", "outside")]
    for given_input, given_output in spellings:
        with pytest.raises(SystemExit, match="overlap"):
            preprocess.run(["--input", str(given_input), "--output", str(given_output), "--layout", layout])
    assert sorted(os.listdir(tmp_path)) == ["link", "outside", "raw"] and not os.listdir(tmp_path / "outside")
    assert not [p for p in raw.rglob("*") if "ds" in p.name]
