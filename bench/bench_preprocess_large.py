"""Benchmark of preprocessing sources larger than memory, measured side by side.

Inputs: JPEG-tiled TIFFs (+ zlib-tiled masks) written tile by tile, never whole in memory,
and the same texture as small PNG pairs. Every job runs in a fresh process
(``python -m pipelines.preprocess``, DirectRunner multi-process); each process's own peak
is read from /proc while it runs (``tessera.peak_memory``). Printed:

1. source megapixels/s: one SIDE^2 tiled source vs the same content as 1024^2 PNGs (target >= 0.8x);
2. per-worker peak memory for a SIDE/2 and a 2*SIDE source (target: equal within 10%);
3. 1 vs 2 workers on the one SIDE^2 source (target >= 1.5x on 2 cores).

    python bench/bench_preprocess_large.py            # SIDE 20 000 (the 40 000^2 source: 1.6 GP), ~15 min
    python bench/bench_preprocess_large.py --quick    # SIDE 4 000
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import tifffile  # noqa: E402
from PIL import Image  # noqa: E402

from tessera.peak_memory import PeakWatcher  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TILE_BYTES = 256
FLAGS = ["--tile-size", "256", "--margin", "32", "--split-fractions", "1,0,0", "--memory-limit-mb", "64",
         "--large-image-pixels", "1000000", "--min-shards", "8"]


def texture(y0: int, x0: int, h: int, w: int) -> np.ndarray:
    yy, xx = np.mgrid[y0:y0 + h, x0:x0 + w].astype(np.float32)
    base = 127 + 60 * np.sin(yy * 0.013) * np.cos(xx * 0.017)
    blobs = 60 * (np.sin(yy * 0.09) * np.sin(xx * 0.07) > 0.6)
    return np.stack([base + blobs, base, base - blobs], axis=-1).clip(0, 255).astype(np.uint8)


def mask_of(pixels: np.ndarray) -> np.ndarray:
    return (pixels[..., 0] > 170).astype(np.uint8)


def write_slide(root: str, side: int) -> None:
    os.makedirs(f"{root}/images")
    os.makedirs(f"{root}/masks")

    def tiles(mask: bool):
        for y in range(0, side, TILE_BYTES):
            for x in range(0, side, TILE_BYTES):
                pixels = texture(y, x, TILE_BYTES, TILE_BYTES)
                yield mask_of(pixels) if mask else pixels

    tifffile.imwrite(f"{root}/images/slide.tif", tiles(False), shape=(side, side, 3), dtype=np.uint8, bigtiff=True,
                     tile=(TILE_BYTES, TILE_BYTES), compression="jpeg", photometric="rgb")
    tifffile.imwrite(f"{root}/masks/slide.tif", tiles(True), shape=(side, side), dtype=np.uint8, bigtiff=True,
                     tile=(TILE_BYTES, TILE_BYTES), compression="zlib")


def write_pngs(root: str, side: int, size: int = 1024) -> None:
    os.makedirs(f"{root}/images")
    os.makedirs(f"{root}/masks")
    for y in range(0, side, size):
        for x in range(0, side, size):
            pixels = texture(y, x, size, size)
            Image.fromarray(pixels).save(f"{root}/images/p{y}_{x}.png", compress_level=1)
            Image.fromarray(mask_of(pixels)).save(f"{root}/masks/p{y}_{x}.png", compress_level=1)


def run(raw: str, out: str, workers: int) -> dict:
    beam = ["--direct_running_mode=multi_processing", f"--direct_num_workers={workers}"]
    started = time.perf_counter()
    job = subprocess.Popen([sys.executable, "-m", "pipelines.preprocess", "--input", raw, "--output", out,
                            *FLAGS, *beam], cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                           env={**os.environ, "PYTHONPATH": REPO, "TF_CPP_MIN_LOG_LEVEL": "2"})
    with PeakWatcher(job.pid, interval=0.1) as watcher:
        _, err = job.communicate()
    if job.returncode:
        raise SystemExit(err[-3000:])
    return {"seconds": time.perf_counter() - started, "worker_peak": watcher.children_peak(),
            "launcher_peak": watcher.root_peak()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    side = 4000 if parser.parse_args().quick else 20_000
    png_side = -(-min(side, 8192) // 1024) * 1024      # whole 1024^2 PNGs
    with tempfile.TemporaryDirectory() as work:
        for name, size in (("half", side // 2), ("one", side), ("double", 2 * side)):
            write_slide(f"{work}/{name}", size)
        write_pngs(f"{work}/pngs", png_side)
        one = run(f"{work}/one", f"{work}/out-one", 1)
        two = run(f"{work}/one", f"{work}/out-two", 2)
        pngs = run(f"{work}/pngs", f"{work}/out-pngs", 2)
        half = run(f"{work}/half", f"{work}/out-half", 2)
        double = run(f"{work}/double", f"{work}/out-double", 2)
    rate = {"two": side ** 2 / 1e6 / two["seconds"], "pngs": png_side ** 2 / 1e6 / pngs["seconds"]}
    print(f"sources: {side}^2 JPEG-tiled TIFF + zlib mask; PNG pairs of 1024^2 ({png_side}^2 in all); "
          f"{' '.join(FLAGS)}")
    print(f"1. source MP/s (2 workers): tiled {rate['two']:.1f}, PNGs {rate['pngs']:.1f} "
          f"(ratio {rate['two'] / rate['pngs']:.2f})")
    print(f"2. worker peak: {side // 2}^2 {half['worker_peak']:.0f} MiB, {2 * side}^2 {double['worker_peak']:.0f} MiB "
          f"(ratio {double['worker_peak'] / half['worker_peak']:.2f}); launcher {half['launcher_peak']:.0f} / "
          f"{double['launcher_peak']:.0f} MiB")
    print(f"3. 2 workers vs 1 on the {side}^2 source: {one['seconds'] / two['seconds']:.2f}x "
          f"({one['seconds']:.0f} s vs {two['seconds']:.0f} s)")


if __name__ == "__main__":
    main()
