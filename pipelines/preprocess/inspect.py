"""``tessera inspect DATASET``: a PNG contact sheet of sample tiles, for a person to look at.

Each cell shows one tile: the image, the mask drawn over it in colour (ignore pixels
hatched grey), and the core outlined in yellow inside its mirrored margin (cyan border),
with the tile's source and position underneath::

    tessera inspect ./dataset --output tiles.png --split train --count 16
"""
from __future__ import annotations

import argparse
import sys

from PIL import Image, ImageDraw

from pipelines.beam import flags
from pipelines.beam.files import read_bytes, resolve_version
from pipelines.core.pixels import overlay
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


def run(argv: list[str] | None = None) -> int:
    import tensorflow_datasets as tfds

    args, _ = flags.parse(build_parser(), argv, beam=False)
    dataset = resolve_version(args.dataset)
    spec = DatasetSpec.from_json(read_bytes(f"{dataset}/{layout.SPEC_FILE}").decode("utf-8"))
    builder = tfds.builder_from_directory(dataset)
    if args.split not in builder.info.splits:
        raise SystemExit(f"tessera inspect: no split {args.split!r}; the dataset has {list(builder.info.splits)}")
    examples = list(tfds.as_numpy(builder.as_dataset(split=args.split).take(args.count)))
    if not examples:
        raise SystemExit(f"tessera inspect: split {args.split!r} is empty")
    contact_sheet(examples, spec, args.columns, args.cell).save(args.output)
    kind = "image | mask overlay | core outline" if spec.task == SEGMENTATION else "image [label]"
    print(f"tessera inspect: {len(examples)} {args.split} tiles ({kind}) -> {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(run())
