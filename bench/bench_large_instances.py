"""Benchmark of instances of large images decoded block by block (issue 18), measured side by side.

Input: tiled (256 px, deflate: exact pixels) grayscale TIFFs of nucleus-like blobs generated
tile by tile as a function of the absolute position (never whole in memory): on a lattice of
70 px cells, groups of 1-3 ellipses (radius 8-20 px, groups touching), interior 255, a 2 px
rim of 128 at every outline (also where two objects touch), background 0; cells do not divide
the blocks, so objects straddle block borders. Model: ``tessera.toy_models``' boundary model
(probabilities from brightness) with its card's seeded decoder: prediction is cheap, decoding
dominates. Each ``pipelines.predict`` run takes the block path (--large-image-pixels,
--memory-limit-mb: several blocks a side) with instances, in a fresh process with 2 worker
processes, each process's own peak RSS read from /proc (``bench.bench_large.run``). Printed:

1. per side (default 10 000 and 40 000): peak RSS of the runner process and of the largest
   worker, wall time, objects found (and drawn), temporary bytes (the largest ``_blocks``
   held while running) and output bytes; the worker ratio largest / smallest side (target <= 1.10);
2. at a side small enough to decode whole (default 6 000): the block result vs the card's
   decoder (``schemas.decoder.decode``) on the whole image's probabilities, up to renumbering,
   pixel by pixel ("identical: yes/no" with the mismatching pixels); for every side,
   objects.parquet's object_id set vs the ids of the instance pyramid's level 0 (read chunk by
   chunk) and its row count vs the number of objects.

    python bench/bench_large_instances.py             # 6 000 (equality), 10 000 and 40 000: ~1 h on 2 cores
    python bench/bench_large_instances.py --quick     # 1 024, 2 048 and 3 072: ~2 min
    python bench/bench_large_instances.py --sides 10000 20000   # if 40 000 takes too long
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
import tifffile  # noqa: E402
import zarr  # noqa: E402
from scipy import ndimage  # noqa: E402

from bench.bench_large import folder_bytes, run  # noqa: E402  (a predict job in a fresh process, peaks per process)
from schemas import layout as names  # noqa: E402
from schemas.decoder import DecoderParams, decode  # noqa: E402
from schemas.model_card import read_card  # noqa: E402
from tessera.peak_memory import Poller  # noqa: E402
from tessera.toy_models import export_model, whole_image_probabilities  # noqa: E402

PITCH, RIM, TILE = 70, 2, 256          # lattice cell, rim width and TIFF tile (px)
CORE, MARGIN = 128, 8
WORKERS = ("--direct_running_mode=multi_processing", "--direct_num_workers=2")


def uniform(i: np.ndarray, j: np.ndarray, k: int) -> np.ndarray:
    """A uniform number in [0, 1) per lattice cell (i, j) and draw k (splitmix64 of the three)."""
    h = np.uint64(0x9E3779B97F4A7C15)
    with np.errstate(over="ignore"):
        for key in (i, j, k):
            z = h + np.asarray(key).astype(np.uint64) * np.uint64(0xBF58476D1CE4E5B9)
            z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
            z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
            h = z ^ (z >> np.uint64(31))
    return (h >> np.uint64(11)).astype(np.float64) / 2.0 ** 53


def cell_objects(i: np.ndarray, j: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each cell's objects: (count, (cells, 3, 4) ellipses cy, cx, ry, rx). 10% of cells are
    empty, 40% hold one ellipse (radius 8-20), 35% two and 15% three touching ones (a body of
    radius 8-13 with satellites of 8-9 overlapping it by 3 px). A group stays 2 px inside its
    cell, so groups of different cells never touch (a foreground region spans < 70 px)."""
    kind = uniform(i, j, 0)
    count = np.select([kind < 0.1, kind < 0.5, kind < 0.85], [0, 1, 2], 3)
    radius = np.where(count == 1, 8 + 12 * uniform(i, j, 3), 8 + 5 * uniform(i, j, 3))
    room = PITCH / 2 - 2 - np.where(count == 1, radius, radius + 15) - 1     # the group's jitter
    cy = i * PITCH + PITCH / 2 + (2 * uniform(i, j, 1) - 1) * room
    cx = j * PITCH + PITCH / 2 + (2 * uniform(i, j, 2) - 1) * room
    squash = np.where(count == 1, 0.7, 0.85) + np.where(count == 1, 0.3, 0.15) * uniform(i, j, 4)
    ellipses = np.zeros((*np.shape(i), 3, 4))
    ellipses[..., 0, :] = np.stack([cy, cx, radius * squash, radius], -1)
    angle = 2 * np.pi * uniform(i, j, 5)
    for k in (1, 2):
        small = 8 + uniform(i, j, 5 + k)
        reach = radius * squash + small - 3         # the body's shorter radius: they overlap >= 3 px
        a = angle + (k - 1) * 2.3
        ellipses[..., k, :] = np.stack([cy + np.sin(a) * reach, cx + np.cos(a) * reach, small, small], -1)
    return count, ellipses


def region(y0: int, x0: int, h: int, w: int) -> np.ndarray:
    """The image's (h, w) uint8 pixels at (y0, x0): any region of any size, the same pixels."""
    pad = RIM
    ys, xs = y0 - pad, x0 - pad
    rows = np.arange(ys // PITCH, (ys + h + 2 * pad - 1) // PITCH + 1)
    cols = np.arange(xs // PITCH, (xs + w + 2 * pad - 1) // PITCH + 1)
    ii, jj = np.meshgrid(rows, cols, indexing="ij")
    count, ellipses = cell_objects(ii.ravel(), jj.ravel())
    labels = np.zeros((h + 2 * pad, w + 2 * pad), np.int32)
    best = np.full(labels.shape, np.inf)
    label = 0
    for n, group in zip(count, ellipses):
        for cy, cx, ry, rx in group[:n]:
            label += 1
            a, b = max(int(cy - ry) - ys, 0), min(int(cy + ry) + 2 - ys, labels.shape[0])
            c, d = max(int(cx - rx) - xs, 0), min(int(cx + rx) + 2 - xs, labels.shape[1])
            if a >= b or c >= d:
                continue
            yy, xx = np.ogrid[a + ys:b + ys, c + xs:d + xs]
            distance = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2     # overlaps go to the nearer centre
            mine = (distance <= 1) & (distance < best[a:b, c:d])
            labels[a:b, c:d][mine] = label
            best[a:b, c:d][mine] = distance[mine]
    size = 2 * RIM + 1                                  # a rim where another label is within RIM px
    rim = (ndimage.maximum_filter(labels, size) != ndimage.minimum_filter(labels, size)) & (labels > 0)
    pixels = np.where(rim, 128, np.where(labels > 0, 255, 0)).astype(np.uint8)
    return pixels[pad:pad + h, pad:pad + w]


def objects_drawn(side: int) -> int:
    """Objects drawn in a SIDE^2 image (those cut by its border included)."""
    cells = np.arange(-(-side // PITCH))
    ii, jj = np.meshgrid(cells, cells, indexing="ij")
    count, ellipses = cell_objects(ii.ravel(), jj.ravel())
    low, high = ellipses[..., :2] - ellipses[..., 2:], ellipses[..., :2] + ellipses[..., 2:]
    inside = (np.arange(3) < count[:, None]) & (low < side - 1).all(-1) & (high > 0).all(-1)
    return int(inside.sum())


def write_tiff(path: str, side: int) -> None:
    """A tiled, deflate-compressed grayscale TIFF written tile by tile (never whole in memory)."""
    def tiles():
        for y in range(0, side, TILE):
            for x in range(0, side, TILE):
                tile = np.zeros((TILE, TILE), np.uint8)
                h, w = min(TILE, side - y), min(TILE, side - x)
                tile[:h, :w] = region(y, x, h, w)
                yield tile

    with tifffile.TiffWriter(path, bigtiff=True) as tw:
        tw.write(tiles(), shape=(side, side), dtype=np.uint8, tile=(TILE, TILE), compression="zlib",
                 compressionargs={"level": 1}, photometric="minisblack")


class FolderPeak(Poller):
    """The largest size a folder reaches while a job runs (polled every ``interval`` s)."""

    def __init__(self, path: str, interval: float = 2.0):
        super().__init__(interval)
        self.path, self.peak = path, 0

    def poll(self) -> None:
        try:
            self.peak = max(self.peak, folder_bytes(self.path))
        except FileNotFoundError:     # a file deleted while walking: the next poll counts again
            pass


def pyramid_ids(path: str) -> np.ndarray:
    """The sorted ids > 0 of an instance pyramid's level 0, read one chunk at a time."""
    level = zarr.open_array(path, mode="r")
    side, (height, width) = level.chunks[-1], level.shape
    found = [np.unique(level[a:a + side, c:c + side]) for a in range(0, height, side) for c in range(0, width, side)]
    ids = np.unique(np.concatenate(found))
    return ids[ids > 0]


def mismatches(blocks: np.ndarray, whole: np.ndarray) -> tuple[int, int]:
    """(pixels that are background in one and not the other, object pixels whose pair of ids
    (blocks, whole) is not one-to-one): both 0 when the two are equal up to renumbering."""
    background = int(((blocks == 0) != (whole == 0)).sum())
    both = (blocks > 0) & (whole > 0)
    a, b = blocks[both].astype(np.int64), whole[both].astype(np.int64)
    base = int(b.max(initial=0)) + 1
    pairs, counts = np.unique(a * base + b, return_counts=True)
    shared = np.zeros(len(pairs), bool)
    for ids in (pairs // base, pairs % base):       # an id in more than one pair is split or merged
        _, index = np.unique(ids, return_inverse=True)
        shared |= np.bincount(index)[index] > 1
    return background, int(counts[shared].sum())


def predict(model: str, side: int, work: str, memory_mb: int) -> dict:
    """The block path with instances on the SIDE^2 TIFF, in a fresh process (2 workers)."""
    out = f"{work}/out-{side}"
    started = time.perf_counter()
    with FolderPeak(f"{out}/{names.BLOCKS_DIR}") as temporary:
        result = run(model, f"{work}/in-{side}", out, "--memory-limit-mb", str(memory_mb), beam=WORKERS)
    process_s = time.perf_counter() - started
    success = json.load(open(f"{out}/{names.SUCCESS_FILE}"))
    if success["rejected"]:
        raise SystemExit(f"side {side}: the image was rejected: {open(f'{out}/{names.REJECTED_FILE}').read()}")
    ids = pq.read_table(f"{out}/{names.objects_file()}", columns=["object_id"], use_threads=False)
    ids = np.sort(ids.column("object_id").to_numpy())
    labels = pyramid_ids(f"{out}/{names.instance_image_path('slide')}/0")
    kept = folder_bytes(f"{out}/{names.BLOCKS_DIR}") if os.path.isdir(f"{out}/{names.BLOCKS_DIR}") else 0
    return {**result, "process_s": process_s, "side": side, "objects": len(ids), "drawn": objects_drawn(side),
            "out": out,
            "ids_agree": bool(len(ids) == len(labels) and (ids == labels).all()),
            "ids_dense": bool((labels == np.arange(1, len(labels) + 1)).all()),
            "temporary_bytes": temporary.peak, "blocks_left_bytes": kept,
            "output_bytes": folder_bytes(out) - kept,
            "chunk": zarr.open_array(f"{out}/{names.instance_image_path('slide')}/0", mode="r").chunks[-1]}


def whole_image_check(model, model_dir: str, work: str, side: int) -> tuple[int, int, int, int]:
    """The block result at SIDE vs the card's decoder on the whole image's probabilities:
    (mismatching background pixels, mismatching object pixels, objects by blocks, whole)."""
    card = read_card(open(f"{model_dir}/model_card.json", "rb").read(), model_dir)
    image = tifffile.imread(f"{work}/in-{side}/slide.tif")
    probabilities = whole_image_probabilities(model, image[..., None], MARGIN)
    whole = decode(card.decoder_params(), probabilities=probabilities)
    del probabilities, image
    blocks = zarr.open_array(f"{work}/out-{side}/{names.instance_image_path('slide')}/0", mode="r")[:]
    return (*mismatches(blocks, whole), int(len(np.unique(blocks)) - 1), int(whole.max()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--sides", type=int, nargs="+", help="sides of the RSS comparison (default 10000 40000)")
    parser.add_argument("--equal-side", type=int, help="side of the whole-image comparison (default 6000; 0: none)")
    parser.add_argument("--memory-limit-mb", type=int, help="per worker (default 96: blocks of 1024 px; "
                        "48 with --quick: 640 px)")
    parser.add_argument("--work", help="a folder for the inputs and outputs (default: a temporary one, deleted)")
    args = parser.parse_args()
    sides = args.sides or ([2048, 3072] if args.quick else [10_000, 40_000])
    equal_side = (1024 if args.quick else 6000) if args.equal_side is None else args.equal_side
    memory_mb = args.memory_limit_mb or (48 if args.quick else 96)
    with tempfile.TemporaryDirectory(dir=args.work) as work:
        model_dir = f"{work}/model"
        model = export_model(model_dir, kind="boundary", core=CORE, margin=MARGIN, channels=1)
        results = {}
        for side in [equal_side, *sides] if equal_side else sides:
            started = time.perf_counter()
            os.makedirs(f"{work}/in-{side}")
            write_tiff(f"{work}/in-{side}/slide.tif", side)
            written = time.perf_counter() - started
            results[side] = {**predict(model_dir, side, work, memory_mb), "generate_s": written,
                             "input_bytes": os.path.getsize(f"{work}/in-{side}/slide.tif")}
            report(results[side])
            if side == equal_side:
                background, split, by_blocks, whole = whole_image_check(model, model_dir, work, side)
                print(f"  whole image decoded in one piece: {whole} objects, blocks {by_blocks}; "
                      f"identical: {'yes' if background == split == 0 and by_blocks == whole else 'no'} "
                      f"({background} pixels differ in background, {split} object pixels not one-to-one)",
                      flush=True)
            if side != sides[-1]:
                for folder in (f"{work}/in-{side}", results[side]["out"]):
                    os.system(f"rm -rf '{folder}'")
    small, large = results[min(sides)], results[max(sides)]
    print(f"peak RSS {max(sides)}^2 / {min(sides)}^2 (target <= 1.10): largest worker "
          f"{large['children_peak_mib'] / small['children_peak_mib']:.3f}, runner process "
          f"{large['peak_mib'] / small['peak_mib']:.3f}")


def report(r: dict) -> None:
    side, gib = r["side"], 2 ** 30
    print(f"{side}^2 ({side * side / 1e6:.0f} MP, blocks of {r['chunk']} px, input {r['input_bytes'] / 2**20:.0f} MiB "
          f"generated in {r['generate_s']:.0f} s): peak RSS runner {r['peak_mib']:.0f} MiB, largest worker "
          f"{r['children_peak_mib']:.0f} MiB; wall {r['seconds']:.0f} s ({r['process_s']:.0f} s with the process's "
          f"start); objects {r['objects']} ({r['drawn']} drawn, border ones by bounding box); "
          f"objects.parquet ids = pyramid ids: {'yes' if r['ids_agree'] else 'NO'}, "
          f"1..N: {'yes' if r['ids_dense'] else 'NO'}; temporary {r['temporary_bytes'] / gib:.2f} GiB at most "
          f"({r['blocks_left_bytes'] / gib:.2f} GiB left in _blocks), output {r['output_bytes'] / gib:.2f} GiB",
          flush=True)
    stages = r["stages"]
    total = sum(stages.values()) or 1
    print("  time (sum over workers): " + ", ".join(f"{k} {v:.0f} s ({v / total:.0%})" for k, v in stages.items()),
          flush=True)


if __name__ == "__main__":
    main()
