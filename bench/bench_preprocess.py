"""Preprocessing throughput vs its floor, 1 vs 2 workers, PNG vs raw tiles — measured side by side.

    python -m bench.bench_preprocess [--sources 24] [--size 1024]

Floor: decoding the same sources and encoding the same tiles (PNG) in a plain loop —
the work the job cannot avoid. The job runs on the DirectRunner (FnApiRunner) with
``multi_processing`` and 1 then 2 workers; each run is a fresh process pool, so start-up
(TensorFlow import in the encoder's setup) is included, as a user would see it.
Peak memory: the largest resident set of any worker process (RUSAGE_CHILDREN).
"""
from __future__ import annotations

import argparse
import os
import resource
import shutil
import tempfile
import time

import numpy as np
from PIL import Image

from pipelines import images, preprocess, tiling
from tessera import synthetic


def make_sources(root: str, count: int, size: int) -> float:
    os.makedirs(f"{root}/images"), os.makedirs(f"{root}/masks")
    rng = np.random.default_rng(0)
    for i in range(count):
        image, mask = synthetic.segmentation_pair(rng, size, size, blobs=12)
        Image.fromarray(image).save(f"{root}/images/s{i:03d}.png")
        Image.fromarray(mask * 255).save(f"{root}/masks/s{i:03d}.png")
    return count * size * size / 1e6


def floor(root: str, core: int, margin: int) -> float:
    started = time.perf_counter()
    policy, mask_policy = images.ImagePolicy(), images.parse_mask_values("binary", 2)
    for name in sorted(os.listdir(f"{root}/images")):
        with open(f"{root}/images/{name}", "rb") as f:
            image = images.read_image(f.read(), name, policy)
        with open(f"{root}/masks/{name}", "rb") as f:
            mask = images.read_mask(f.read(), name, mask_policy)
        for y, x, _, _ in tiling.core_grid(*image.shape[:2], core):
            images.encode_png(tiling.cut_tile(image, y, x, core, margin))
            images.encode_png(tiling.cut_mask_tile(mask[..., None], y, x, core, margin))
    return time.perf_counter() - started


def job(root: str, out: str, core: int, margin: int, workers: int) -> float:
    shutil.rmtree(out, ignore_errors=True)
    started = time.perf_counter()
    preprocess.run(["--input", root, "--output", out, "--tile-size", str(core), "--margin", str(margin),
                    "--mask-values", "binary", "--direct_running_mode=multi_processing",
                    f"--direct_num_workers={workers}"])
    return time.perf_counter() - started


def png_vs_raw(root: str, core: int, margin: int) -> dict:
    import tensorflow as tf

    name = sorted(os.listdir(f"{root}/images"))[0]
    with open(f"{root}/images/{name}", "rb") as f:
        image = images.read_image(f.read(), name)
    tiles = [tiling.cut_tile(image, y, x, core, margin) for y, x, _, _ in tiling.core_grid(*image.shape[:2], core)]
    pngs = [images.encode_png(t) for t in tiles]
    raws = [t.tobytes() for t in tiles]
    shape = tiles[0].shape

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
    p.add_argument("--sources", type=int, default=24)
    p.add_argument("--size", type=int, default=1024)
    p.add_argument("--core", type=int, default=256)
    p.add_argument("--margin", type=int, default=32)
    args = p.parse_args()
    work = tempfile.mkdtemp(prefix="tessera-bench-")
    try:
        mp = make_sources(f"{work}/raw", args.sources, args.size)
        t_floor = floor(f"{work}/raw", args.core, args.margin)
        t1 = job(f"{work}/raw", f"{work}/ds1", args.core, args.margin, 1)
        t2 = job(f"{work}/raw", f"{work}/ds2", args.core, args.margin, 2)
        peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        largest_mb = args.size * args.size * 3 / 2**20
        fmt = png_vs_raw(f"{work}/raw", args.core, args.margin)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"sources: {args.sources} x {args.size}^2 RGB = {mp:.1f} MP; tiles {args.core}+2*{args.margin}; cores: {os.cpu_count()}")
    print(f"floor (decode + encode tiles, plain loop): {mp / t_floor:6.2f} MP/s")
    print(f"job, 1 worker:                             {mp / t1:6.2f} MP/s   ratio to floor {t_floor / t1:.2f}")
    print(f"job, 2 workers:                            {mp / t2:6.2f} MP/s   ratio to floor {t_floor / t2:.2f}"
          f"   2 vs 1 worker {t1 / t2:.2f}x")
    print(f"peak worker RSS {peak_mb:.0f} MB; largest decoded image {largest_mb:.1f} MB "
          f"({peak_mb / largest_mb:.0f}x, includes the TensorFlow runtime)")
    print(f"tile bytes: PNG {fmt['png_bytes'] / 1024:.1f} KiB vs raw {fmt['raw_bytes'] / 1024:.1f} KiB "
          f"({fmt['raw_bytes'] / fmt['png_bytes']:.2f}x larger raw)")
    print(f"tf.data decode: PNG {fmt['png_tiles_per_s']:.0f} tiles/s vs raw {fmt['raw_tiles_per_s']:.0f} tiles/s "
          f"({fmt['raw_tiles_per_s'] / fmt['png_tiles_per_s']:.1f}x)")


if __name__ == "__main__":
    main()
