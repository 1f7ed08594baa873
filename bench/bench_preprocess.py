"""Preprocessing throughput vs its floor, 1 vs 2 workers, memory, PNG vs raw tiles — side by side.

    python -m bench.bench_preprocess [--sources 48] [--size 1024]

Floor: decoding the same sources and encoding the same tiles (PNG) in a plain loop —
the work the job cannot avoid. The job runs as a user runs it (`tessera preprocess` in a
fresh process, DirectRunner multi-processing with 1 then 2 workers). The fixed start-up
(launching Beam workers, TFDS metadata) is measured with a one-source run and reported
separately, so the ratio with and without it is visible. Memory: the peak resident set
of each worker process (sampled with psutil), for small images and for large ones.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np
import psutil
from PIL import Image

from pipelines.core import images, masks, pixels, tiling
from tessera import synthetic


def make_sources(root: str, count: int, size: int, seed: int = 0) -> float:
    os.makedirs(f"{root}/images"), os.makedirs(f"{root}/masks")
    rng = np.random.default_rng(seed)
    for i in range(count):
        image, mask = synthetic.segmentation_pair(rng, size, size, blobs=12)
        Image.fromarray(image).save(f"{root}/images/s{i:03d}.png")
        Image.fromarray(mask * 255).save(f"{root}/masks/s{i:03d}.png")
    return count * size * size / 1e6


def floor(root: str, core: int, margin: int) -> float:
    started = time.perf_counter()
    policy, mask_policy = images.ImagePolicy(), masks.parse_mask_values("binary", 2)
    for name in sorted(os.listdir(f"{root}/images")):
        with open(f"{root}/images/{name}", "rb") as f:
            image = images.read_image(f.read(), name, policy)
        with open(f"{root}/masks/{name}", "rb") as f:
            mask = images.read_mask(f.read(), name, mask_policy)
        for y, x, _, _ in tiling.core_grid(*image.shape[:2], core):
            pixels.encode_png(tiling.cut_tile(image, y, x, core, margin))
            pixels.encode_png(tiling.cut_mask_tile(mask[..., None], y, x, core, margin))
    return time.perf_counter() - started


def job(root: str, out: str, core: int, margin: int, workers: int) -> tuple[float, float, float]:
    """(seconds, peak launcher RSS MB, peak RSS MB of the largest worker)."""
    shutil.rmtree(out, ignore_errors=True)
    command = [sys.executable, "-m", "tessera.cli", "preprocess", "--input", root, "--output", out,
               "--tile-size", str(core), "--margin", str(margin), "--mask-values", "binary",
               "--direct_running_mode=multi_processing", f"--direct_num_workers={workers}"]
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    launcher, peaks = psutil.Process(process.pid), {}
    while process.poll() is None:
        try:
            for p in [launcher] + launcher.children(recursive=True):
                peaks[p.pid] = max(peaks.get(p.pid, 0), p.memory_info().rss)
        except psutil.Error:  # a process ended between listing and sampling
            pass
        time.sleep(0.05)
    seconds = time.perf_counter() - started
    if process.returncode:
        raise RuntimeError(f"preprocess failed with exit code {process.returncode}")
    workers_peak = max((v for k, v in peaks.items() if k != process.pid), default=0)
    return seconds, peaks.get(process.pid, 0) / 2**20, workers_peak / 2**20


def png_vs_raw(root: str, core: int, margin: int) -> dict:
    import tensorflow as tf

    name = sorted(os.listdir(f"{root}/images"))[0]
    with open(f"{root}/images/{name}", "rb") as f:
        image = images.read_image(f.read(), name)
    tiles = [tiling.cut_tile(image, y, x, core, margin) for y, x, _, _ in tiling.core_grid(*image.shape[:2], core)]
    pngs, raws, shape = [pixels.encode_png(t) for t in tiles], [t.tobytes() for t in tiles], tiles[0].shape

    def read_speed(blobs, decode) -> float:
        ds = tf.data.Dataset.from_tensor_slices(blobs).repeat(20).map(decode, num_parallel_calls=tf.data.AUTOTUNE)
        started = time.perf_counter()
        n = sum(1 for _ in ds)
        return n / (time.perf_counter() - started)

    return {"png_bytes": sum(map(len, pngs)) / len(pngs), "raw_bytes": sum(map(len, raws)) / len(raws),
            "png_tiles_per_s": read_speed(pngs, lambda b: tf.io.decode_png(b, channels=3)),
            "raw_tiles_per_s": read_speed(raws, lambda b: tf.reshape(tf.io.decode_raw(b, tf.uint8), shape))}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--sources", type=int, default=48)
    p.add_argument("--size", type=int, default=1024)
    p.add_argument("--large", type=int, default=4096, help="side of the large images of the memory run")
    p.add_argument("--core", type=int, default=256)
    p.add_argument("--margin", type=int, default=32)
    args = p.parse_args()
    work = tempfile.mkdtemp(prefix="tessera-bench-")
    try:
        mp = make_sources(f"{work}/raw", args.sources, args.size)
        make_sources(f"{work}/one", 1, args.size)
        make_sources(f"{work}/large", 2, args.large, seed=1)
        t_floor = floor(f"{work}/raw", args.core, args.margin)
        t_fixed, _, base_mb = job(f"{work}/one", f"{work}/ds0", args.core, args.margin, 1)
        t1, launcher_mb, worker_mb = job(f"{work}/raw", f"{work}/ds1", args.core, args.margin, 1)
        t2, _, _ = job(f"{work}/raw", f"{work}/ds2", args.core, args.margin, 2)
        _, _, large_mb = job(f"{work}/large", f"{work}/ds3", args.core, args.margin, 1)
        fmt = png_vs_raw(f"{work}/raw", args.core, args.margin)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    large_decoded = args.large ** 2 * 3 / 2**20
    print(f"sources: {args.sources} x {args.size}^2 RGB = {mp:.1f} MP; tiles {args.core}+2*{args.margin}; "
          f"cores: {os.cpu_count()}")
    print(f"floor (decode + encode tiles, plain loop): {mp / t_floor:6.2f} MP/s  ({t_floor:.1f} s)")
    print(f"fixed start-up (one-source run):           {t_fixed:6.1f} s")
    for label, t in (("1 worker ", t1), ("2 workers", t2)):
        print(f"job, {label}: {mp / t:6.2f} MP/s ({t:.1f} s)  ratio to floor {t_floor / t:.2f}, "
              f"without start-up {t_floor / max(t - t_fixed, 1e-9):.2f}")
    print(f"2 vs 1 worker: {t1 / t2:.2f}x end to end, {(t1 - t_fixed) / max(t2 - t_fixed, 1e-9):.2f}x without start-up")
    print(f"peak RSS: launcher {launcher_mb:.0f} MB; worker {worker_mb:.0f} MB ({args.size}^2 images), "
          f"{base_mb:.0f} MB (one image), {large_mb:.0f} MB ({args.large}^2 images, {large_decoded:.0f} MB decoded: "
          f"{(large_mb - base_mb) / large_decoded:.1f}x the decoded image above the worker's base)")
    print(f"tile bytes: PNG {fmt['png_bytes'] / 1024:.1f} KiB vs raw {fmt['raw_bytes'] / 1024:.1f} KiB "
          f"({fmt['raw_bytes'] / fmt['png_bytes']:.2f}x larger raw)")
    print(f"tf.data decode: PNG {fmt['png_tiles_per_s']:.0f} tiles/s vs raw {fmt['raw_tiles_per_s']:.0f} tiles/s "
          f"({fmt['raw_tiles_per_s'] / fmt['png_tiles_per_s']:.1f}x)")


if __name__ == "__main__":
    main()
