"""``tessera inspect DATASET``: a PNG contact sheet of sample tiles, for a person to look at.

The tiles are spread over as many sources as the split has (one per source before a
second of any). Each cell shows one tile: the image, the mask drawn over it in colour (ignore pixels
hatched grey), and the core outlined in yellow inside its mirrored margin (cyan border),
with the tile's source and position underneath::

    tessera inspect ./dataset --output tiles.png --split train --count 16
"""
from __future__ import annotations

import argparse
import io
import sys

from PIL import Image, ImageDraw

from pipelines.beam import flags
from pipelines.beam.files import read_bytes, resolve_version
from pipelines.core.pixels import overlay
from pipelines.core.sources import hash_fraction
from schemas import layout
from schemas.example import SEGMENTATION, DatasetSpec


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tessera inspect", allow_abbrev=False, description=__doc__.split("\n")[0])
    p.add_argument("dataset", help="dataset directory written by tessera preprocess")
    p.add_argument("--output", default="tiles.png", help="PNG to write")
    p.add_argument("--split", default="train")
    p.add_argument("--count", type=int, default=16, help="number of tiles")
    p.add_argument("--columns", type=int, default=4)
    p.add_argument("--cell", type=int, default=192, help="cell size in pixels")
    return p


def render_cell(example: dict, spec: DatasetSpec, cell: int) -> Image.Image:
    tile = overlay(example["image"], example.get("mask"))
    t = tile.shape[0]
    scale = cell / t
    picture = Image.fromarray(tile).resize((cell, cell), Image.NEAREST)
    draw = ImageDraw.Draw(picture)
    m, h, w = int(example["margin"]), int(example["core_h"]), int(example["core_w"])
    if not spec.whole_image:
        draw.rectangle([0, 0, cell - 1, cell - 1], outline=(0, 220, 220))
        draw.rectangle([m * scale, m * scale, (m + w) * scale - 1, (m + h) * scale - 1], outline=(255, 230, 0), width=2)
    canvas = Image.new("RGB", (cell, cell + 28), (24, 24, 24))
    canvas.paste(picture, (0, 0))
    text = ImageDraw.Draw(canvas)
    source = example["source_id"].decode() if isinstance(example["source_id"], bytes) else example["source_id"]
    label = f"{source[-22:]}" + (f"  [{spec.class_names[int(example['label'])]}]" if "label" in example else "")
    text.text((3, cell + 1), label, fill=(230, 230, 230))
    text.text((3, cell + 14), f"y{example['core_y']} x{example['core_x']} copy {example['copy']}", fill=(170, 170, 170))
    return canvas


def contact_sheet(examples: list[dict], spec: DatasetSpec, columns: int, cell: int) -> Image.Image:
    rows = max(1, -(-len(examples) // columns))
    sheet = Image.new("RGB", (columns * (cell + 4), rows * (cell + 32)), (0, 0, 0))
    for i, example in enumerate(examples):
        sheet.paste(render_cell(example, spec, cell), ((i % columns) * (cell + 4), (i // columns) * (cell + 32)))
    return sheet


def spread_sample(rows: list[dict], count: int) -> list[dict]:
    """``count`` manifest rows spread over as many sources as possible: one tile of every
    source (in a stable shuffled order) before a second of any, and so on."""
    by_source: dict[str, list[dict]] = {}
    for row in sorted(rows, key=lambda r: (hash_fraction("inspect:" + r["id"]), r["id"])):
        by_source.setdefault(row["source_id"], []).append(row)
    queues = [by_source[s] for s in sorted(by_source, key=lambda s: (hash_fraction("inspect:" + s), s))]
    picked: list[dict] = []
    while len(picked) < count and any(queues):
        for queue in queues:
            if queue and len(picked) < count:
                picked.append(queue.pop(0))
    return picked


def read_examples(builder, dataset: str, split: str, picked: list[dict]) -> list[dict]:
    """The examples of ``picked`` (in that order), read from only the shards that hold them."""
    import tensorflow as tf
    import tensorflow_datasets as tfds

    wanted = {r["id"]: i for i, r in enumerate(picked)}
    shards = sorted({f"{dataset}/{r['shard']}" for r in picked})
    decode = builder.info.features.deserialize_example
    found: dict[str, dict] = {}
    for example in tfds.as_numpy(tf.data.TFRecordDataset(shards).map(decode)):
        key = example["id"].decode()
        if key in wanted:
            found[key] = example
            if len(found) == len(wanted):
                break
    return [found[r["id"]] for r in picked if r["id"] in found]


def run(argv: list[str] | None = None) -> int:
    import pyarrow.parquet as pq
    import tensorflow_datasets as tfds

    args, _ = flags.parse(build_parser(), argv, beam=False)
    dataset = resolve_version(args.dataset)
    spec = DatasetSpec.from_json(read_bytes(f"{dataset}/{layout.SPEC_FILE}").decode("utf-8"))
    builder = tfds.builder_from_directory(dataset)
    if args.split not in builder.info.splits:
        raise SystemExit(f"tessera inspect: no split {args.split!r}; the dataset has {list(builder.info.splits)}")
    manifest = pq.read_table(io.BytesIO(read_bytes(f"{dataset}/{layout.MANIFEST_FILE}")), use_threads=False)
    rows = [r for r in manifest.select(["id", "split", "shard", "source_id"]).to_pylist() if r["split"] == args.split]
    examples = read_examples(builder, dataset, args.split, spread_sample(rows, args.count))
    if not examples:
        raise SystemExit(f"tessera inspect: split {args.split!r} is empty")
    contact_sheet(examples, spec, args.columns, args.cell).save(args.output)
    kind = "image | mask overlay | core outline" if spec.task == SEGMENTATION else "image [label]"
    sources = len({e["source_id"] for e in examples})
    print(f"tessera inspect: {len(examples)} {args.split} tiles from {sources} sources ({kind}) -> {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(run())
