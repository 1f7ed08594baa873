"""Benchmark of block-wise prediction of images larger than memory, measured side by side.

Inputs: a pyramidal JPEG-compressed tiled TIFF of SIDE x SIDE RGB (generated tile by tile,
never whole in memory) and the same content at SIDE / 4 a side; a folder of small PNGs for
the ordinary path. Each job runs in a fresh process (DirectRunner); each process's own peak
RSS (TensorFlow and the model included) is read from /proc while it runs (tessera.peak_memory). Printed:

1. peak RSS per worker for the large and the small TIFF (target: the same within 10%);
2. tiles/s of the block path vs the same model on small images (target >= 0.8x);
3. 1 vs 2 worker processes on the large TIFF;
4. where the time goes: region reads vs inference vs stitching and writing;
5. output bytes (the OME-Zarr pyramid, the thumbnail).

    python bench/bench_large.py            # SIDE 12 000, a few minutes on 2 cores
    python bench/bench_large.py --quick    # SIDE 4 000
    python bench/bench_large.py --side 40000 --small-side 10000   # the 1.6 GP case (~40 min)
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import tifffile  # noqa: E402
from PIL import Image  # noqa: E402

from tessera.peak_memory import PeakWatcher  # noqa: E402
from tessera.toy_models import export_model  # noqa: E402

CORE, MARGIN, TILE_BYTES = 128, 16, 256
MEMORY_MB = 48   # blocks of ~640 px: both TIFFs span several blocks a side

JOB = """
import json, sys, time
from pipelines.predict import job
config = job.config_from_args(job.build_parser().parse_args(sys.argv[1:sys.argv.index("--")]))
started = time.perf_counter()
summary, stages = job.execute(config, sys.argv[sys.argv.index("--") + 1:], collect_metrics=True)
print(json.dumps({"seconds": time.perf_counter() - started, "tiles": summary["tiles"], "stages": stages}))
"""


def texture(y0: int, x0: int, h: int, w: int) -> np.ndarray:
    """Smooth structure with blobs, a function of the absolute position (any tile, any size)."""
    yy, xx = np.mgrid[y0:y0 + h, x0:x0 + w].astype(np.float32)
    base = 127 + 60 * np.sin(yy * 0.013) * np.cos(xx * 0.017)
    blobs = 60 * (np.sin(yy * 0.09) * np.sin(xx * 0.07) > 0.6)
    return np.stack([base + blobs, base, base - blobs], axis=-1).clip(0, 255).astype(np.uint8)


def write_pyramid(path: str, side: int, tile: int = TILE_BYTES) -> None:
    """A JPEG-tiled pyramidal TIFF written tile by tile (never whole in memory)."""
    levels = [side]
    while levels[-1] > 2048:
        levels.append(-(-levels[-1] // 2))

    def tiles(size: int, step: int):
        for y in range(0, size, tile):
            for x in range(0, size, tile):
                h, w = min(tile, size - y), min(tile, size - x)
                out = np.zeros((tile, tile, 3), np.uint8)
                out[:h, :w] = texture(y * step, x * step, h * step, w * step)[::step, ::step]
                yield out

    with tifffile.TiffWriter(path, bigtiff=True) as tw:
        for i, size in enumerate(levels):
            tw.write(tiles(size, 2 ** i), shape=(size, size, 3), dtype=np.uint8, tile=(tile, tile),
                     compression="jpeg", photometric="rgb", subifds=len(levels) - 1 if i == 0 else None,
                     subfiletype=1 if i else 0)


def run(model: str, inputs: str, output: str, *extra: str, beam=("--direct_running_mode=in_memory",)) -> dict:
    argv = ["--model-dir", model, "--input", inputs, "--output", output, "--batch-size", "16",
            "--large-image-pixels", "1000000", "--memory-limit-mb", str(MEMORY_MB), *extra, "--", *beam]
    job = subprocess.Popen([sys.executable, "-c", JOB, *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True, cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    with PeakWatcher(job.pid, interval=0.1) as watcher:   # each process's own peak (not ru_maxrss: see there)
        out, err = job.communicate()
    if job.returncode:
        raise SystemExit(err[-3000:])
    return {**json.loads(out.strip().splitlines()[-1]), "peak_mib": watcher.root_peak(),
            "children_peak_mib": watcher.children_peak()}


def folder_bytes(path: str) -> int:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--side", type=int, help="the large TIFF's side (default 12 000; 4 000 with --quick)")
    parser.add_argument("--small-side", type=int, help="the small TIFF's side (default side / 4)")
    args = parser.parse_args()
    side = args.side or (4000 if args.quick else 12_000)
    small_side = args.small_side or side // 4
    with tempfile.TemporaryDirectory() as work:
        model = f"{work}/model"
        export_model(model, kind="same", core=CORE, margin=MARGIN, channels=3, layers=4, width=8)
        for name, size in (("large", side), ("small", small_side)):
            os.makedirs(f"{work}/{name}")
            write_pyramid(f"{work}/{name}/slide.tif", size)
        os.makedirs(f"{work}/pngs")
        for i in range(8):
            Image.fromarray(texture(i * 997, i * 991, 1024, 1024)).save(f"{work}/pngs/p{i}.png", compress_level=1)
        large = run(model, f"{work}/large", f"{work}/out-large")
        small = run(model, f"{work}/small", f"{work}/out-small")
        pngs = run(model, f"{work}/pngs", f"{work}/out-pngs")
        two = run(model, f"{work}/large", f"{work}/out-two",
                  beam=("--direct_running_mode=multi_processing", "--direct_num_workers=2"))
        zarr_bytes = folder_bytes(f"{work}/out-large/masks")
        thumb = os.path.getsize(f"{work}/out-large/overlays/slide.png")
    rate = {k: v["tiles"] / v["seconds"] for k, v in (("large", large), ("pngs", pngs), ("two", two))}
    print(f"large TIFF {side}^2 ({side * side / 1e6:.0f} MP), small TIFF {small_side}^2, 8 PNGs of 1024^2; "
          f"core {CORE}, margin {MARGIN}, --memory-limit-mb {MEMORY_MB}")
    print(f"1. peak RSS: large {large['peak_mib']:.0f} MiB, small {small['peak_mib']:.0f} MiB "
          f"(ratio {large['peak_mib'] / small['peak_mib']:.2f})")
    print(f"2. tiles/s: blocks {rate['large']:.1f}, small images {rate['pngs']:.1f} "
          f"(ratio {rate['large'] / rate['pngs']:.2f})")
    print(f"3. 2 workers vs 1 on the large TIFF: {rate['two'] / rate['large']:.2f}x "
          f"(worker peak RSS {two['children_peak_mib']:.0f} MiB)")
    stages = large["stages"]
    total = sum(stages.values()) or 1
    print("4. time (sum over workers): " + ", ".join(f"{k} {v:.1f} s ({v / total:.0%})" for k, v in stages.items())
          + f"; wall {large['seconds']:.1f} s")
    print(f"5. output: label pyramid {zarr_bytes / 2**20:.1f} MiB, thumbnail {thumb / 2**10:.0f} KiB")


if __name__ == "__main__":
    main()
