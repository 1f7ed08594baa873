"""Benchmark of ``tessera predict``, every figure measured side by side in one run.

1. The job's end-to-end tiles/s (read PNGs, cut, RunInference, stitch, write masks/overlays/
   rows/Parquet, DirectRunner in-process) vs the same SavedModel's bare ``predict`` on the
   same tiles already in memory: the job's overhead as a ratio. Two models: a conv stack
   whose cost dominates (the realistic case) and a tiny one that exposes the fixed cost per tile.
2. Cost with --overlap 0 / 0.25 / 0.5 and --tta none / flips / dihedral against the ratios
   that the tile counts (and the number of forward passes) predict.
3. Peak memory (RSS) of a job on one 10 000 x 10 000 RGB image under --memory-limit-mb,
   in a fresh process, against the documented bound (the planner's estimate is printed too).

    python bench/bench_predict.py            # about 6 minutes on 2 cores
    python bench/bench_predict.py --quick    # smaller inputs, a smoke run
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from pipelines.core import tiling  # noqa: E402
from pipelines.predict import job as predict
from pipelines.predict import models as inference
from pipelines.predict import plan
from tessera.toy_models import export_model  # noqa: E402

CORE, MARGIN, BATCH = 128, 32, 16


def synthetic(h: int, w: int, seed: int) -> np.ndarray:
    """Smooth RGB structure plus mild noise (compresses like a real photo, unlike pure noise)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.ogrid[0:h, 0:w]
    out = np.empty((h, w, 3), np.uint8)
    for c in range(3):
        f = rng.uniform(0.005, 0.05, 2)
        out[..., c] = (127 + 90 * np.sin(yy * f[0] + c) * np.cos(xx * f[1])).astype(np.uint8)
    out[::7, ::5] ^= rng.integers(0, 32, out[::7, ::5].shape, dtype=np.uint8)
    return out


def write_inputs(folder: str, count: int, size: int) -> list[np.ndarray]:
    os.makedirs(folder, exist_ok=True)
    arrays = [synthetic(size, size, i) for i in range(count)]
    for i, a in enumerate(arrays):
        Image.fromarray(a).save(os.path.join(folder, f"img{i:03d}.png"), compress_level=1)
    return arrays


def bare_tiles_per_second(model_dir: str, arrays: list[np.ndarray]) -> tuple[float, float, int]:
    """(tiles/s by wall clock, tiles per CPU second, tiles): the SavedModel signature alone on
    every tile of ``arrays``, cut beforehand and held in memory, in batches."""
    predictor = inference.load_predictor([model_dir], "none", "mean")
    tiles = np.stack([t for a in arrays for _, t in tiling.cut_tiles(a, CORE, MARGIN)])
    predictor.models[0](tiles[:BATCH])  # warm-up (graph tracing)
    started, cpu = time.perf_counter(), time.process_time()
    for i in range(0, len(tiles), BATCH):
        predictor.models[0](tiles[i:i + BATCH])
    return len(tiles) / (time.perf_counter() - started), len(tiles) / (time.process_time() - cpu), len(tiles)


def job(model_dir: str, folder: str, output: str, *flags: str) -> tuple[float, float, int, dict]:
    """(seconds, CPU seconds, tiles, seconds per stage) of one fresh job (model load and
    pipeline start included; in-process DirectRunner, so the CPU time is the whole job's)."""
    argv = ["--model-dir", model_dir, "--input", folder, "--output", output, "--batch-size", str(BATCH), *flags]
    args, beam_args = predict.build_parser().parse_known_args(argv)
    started, cpu = time.perf_counter(), time.process_time()
    summary, stages = predict.execute(predict.config_from_args(args), beam_args, collect_metrics=True)
    return time.perf_counter() - started, time.process_time() - cpu, summary["tiles"], stages


def peak_rss() -> int:
    """This process's peak resident set (VmHWM: reset at exec, unlike ru_maxrss which Linux keeps)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def split(seconds: float, stages: dict) -> str:
    known = sum(stages.values())
    return (f"inference {stages.get('inference', 0):5.1f} s, read+cut {stages.get('read_cut', 0):4.1f} s, "
            f"stitch+write {stages.get('stitch_write', 0):4.1f} s, other {seconds - known:4.1f} s")


def memory_child(model_dir: str, folder: str, output: str, limit_mb: int) -> None:
    """Runs in a fresh process: baseline RSS after loading the model, then the job's peak RSS."""
    predictor = inference.load_predictor([model_dir], "none", "mean")
    predictor.predict(np.zeros((BATCH, CORE + 2 * MARGIN, CORE + 2 * MARGIN, 3), np.uint8))
    baseline = peak_rss()
    started = time.perf_counter()
    predict.run(["--model-dir", model_dir, "--input", folder, "--output", output, "--batch-size", str(BATCH),
                 "--memory-limit-mb", str(limit_mb)])
    peak = peak_rss()
    with open(os.path.join(output, "predictions.parquet"), "rb"):
        pass
    print(json.dumps({"baseline": baseline, "peak": peak, "seconds": time.perf_counter() - started}))


def memory_run(model_dir: str, work: str, side: int, limit_mb: int) -> dict:
    folder = os.path.join(work, "huge")
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, "huge.png")
    if not os.path.exists(path):
        Image.fromarray(synthetic(side, side, 99)).save(path, compress_level=1)
    output = os.path.join(work, f"pred-huge-{limit_mb}")
    child = subprocess.run([sys.executable, __file__, "--memory-child", model_dir, folder, output, str(limit_mb)],
                           capture_output=True, text=True, check=True)
    result = json.loads(child.stdout.strip().splitlines()[-1])
    g = plan.Geometry("segmentation", CORE, MARGIN, 3, 1, 2, CORE, BATCH)
    strips = plan.plan_strips(side, side, os.path.getsize(path), g, limit_mb * 2**20)
    with open(os.path.join(output, "rows", os.listdir(os.path.join(output, "rows"))[0], "huge.json")) as f:
        row = json.load(f)
    return {**result, "estimate": plan.peak_bytes(side, side, os.path.getsize(path), g, strips),
            "strips": row["strips"], "limit": limit_mb * 2**20, "tiles": row["tiles"]}


def best_job(repeat: int, model_dir: str, folder: str, output: str, *flags: str) -> tuple[float, float, int, dict]:
    """The fastest of ``repeat`` fresh runs (each into a new output), to see through a shared machine's noise."""
    runs = [job(model_dir, folder, f"{output}-{i}", *flags) for i in range(repeat)]
    return min(runs, key=lambda r: r[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--repeat", type=int, default=2, help="runs per configuration; the fastest counts")
    parser.add_argument("--memory-child", nargs=4, metavar=("MODEL", "INPUT", "OUTPUT", "LIMIT_MB"))
    parser.add_argument("--memory-limit-mb", type=int, default=1280)
    args = parser.parse_args()
    if args.memory_child:
        model_dir, folder, output, limit = args.memory_child
        memory_child(model_dir, folder, output, int(limit))
        return
    count, size, side = (3, 512, 3000) if args.quick else (8, 1024, 10_000)
    work = tempfile.mkdtemp(prefix="bench-predict-")
    conv = os.path.join(work, "conv")
    light = os.path.join(work, "light")
    export_model(conv, kind="same", core=CORE, margin=MARGIN, layers=4, width=16)
    export_model(light, kind="same", core=CORE, margin=MARGIN, layers=2, width=4)
    folder = os.path.join(work, "images")
    arrays = write_inputs(folder, count, size)
    print(f"inputs: {count} RGB images of {size}x{size}; core {CORE}, margin {MARGIN}, batch {BATCH}; "
          f"{os.cpu_count()} CPU cores; best of {args.repeat} runs", flush=True)

    print("\n1. job vs bare predict on the same tiles (wall clock, and CPU time which a shared machine disturbs less;"
          "\n   job time split by stage)")
    bare_rate = {}
    for name, model_dir in (("conv (4x3x3x16)", conv), ("tiny (2x3x3x4)", light)):
        bare, bare_cpu, n = max(bare_tiles_per_second(model_dir, arrays) for _ in range(args.repeat))
        bare_rate[model_dir] = bare
        seconds, cpu, tiles, stages = best_job(args.repeat, model_dir, folder, os.path.join(work, f"pred-{name[:4]}"))
        assert tiles == n, (tiles, n)
        print(f"   {name:16s} bare {bare:6.1f} tiles/s ({bare_cpu:6.1f}/CPU-s)   job {tiles / seconds:6.1f} tiles/s "
              f"({tiles / cpu:6.1f}/CPU-s)   ratio {tiles / seconds / bare:.2f} (CPU {tiles / cpu / bare_cpu:.2f})\n"
              f"   {'':16s} {tiles} tiles in {seconds:.1f} s: {split(seconds, stages)}", flush=True)

    print("\n2. cost vs theory (conv model): relative to overlap 0 / tta none; theory = tiles x forward passes")
    configs = [((), 1), (("--overlap", "0.25"), 1), (("--overlap", "0.5"), 1), (("--tta", "flips"), 2),
               (("--tta", "dihedral"), 8)]
    base = None
    for flags, passes in configs:
        seconds, cpu, tiles, stages = best_job(args.repeat, conv, folder,
                                               os.path.join(work, "pred-2" + "-".join(flags)), *flags)
        if base is None:
            base = (seconds, cpu, tiles, stages)
            print(f"   {'baseline':16s} tiles {tiles:6d}  {seconds:6.1f} s  {cpu:6.1f} CPU-s  ({split(seconds, stages)})",
                  flush=True)
            continue
        theory = passes * tiles / base[2]
        wall, cpu_ratio = seconds / base[0], cpu / base[1]
        inference_ratio = stages["inference"] / base[3]["inference"]
        print(f"   {' '.join(flags):16s} tiles {tiles:6d}  {seconds:6.1f} s  {cpu:6.1f} CPU-s  theory x{theory:5.2f}  "
              f"CPU x{cpu_ratio:5.2f} ({cpu_ratio / theory - 1:+.0%})  wall x{wall:5.2f} ({wall / theory - 1:+.0%})  "
              f"inference wall x{inference_ratio:5.2f} ({inference_ratio / theory - 1:+.0%})\n"
              f"   {'':16s} {split(seconds, stages)}", flush=True)

    print(f"\n3. peak memory, one {side}x{side} RGB image, --memory-limit-mb {args.memory_limit_mb} (tiny model)")
    m = memory_run(light, work, side, args.memory_limit_mb)
    mib = 2**20
    print(f"   strips {m['strips']}, tiles {m['tiles']}, {m['seconds']:.1f} s ({m['tiles'] / m['seconds']:.0f} tiles/s)\n"
          f"   baseline RSS (runtime + model) {m['baseline'] / mib:.0f} MiB, peak RSS {m['peak'] / mib:.0f} MiB, "
          f"job's own {(m['peak'] - m['baseline']) / mib:.0f} MiB\n"
          f"   planner estimate {m['estimate'] / mib:.0f} MiB, bound {m['limit'] / mib:.0f} MiB", flush=True)


if __name__ == "__main__":
    main()
