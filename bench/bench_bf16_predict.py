"""float32 vs bfloat16 prediction of one trained model, side by side.

Re-exports a trained segmentation model (its best checkpoint) with ``--export-bf16`` into a
copy, then measures on the same tiles, alternating, the forward time of its float32 and its
bfloat16 SavedModel (the one predict loads), and runs ``tessera predict`` both ways on the
images to compare the masks and probabilities.

    python bench/bench_bf16_predict.py --model-dir /tmp/q25/model-d --images /tmp/q25/test/images
"""
from __future__ import annotations

import argparse
import dataclasses
import glob
import os
import shutil
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def re_export(model_dir: str, target: str) -> None:
    import tensorflow as tf

    from trainer import export
    from trainer.config import from_dict
    from trainer.data import open_dataset, with_weight_map
    from trainer.steps import loss_spec_for

    card = export.load_card(model_dir)
    cfg = dataclasses.replace(from_dict(card.config), model_dir=target, export_bf16=True)
    info = with_weight_map(open_dataset(cfg.data), cfg.loss.weight_map)
    export.export(cfg, info, tf.train.latest_checkpoint(cfg.checkpoint_dir), loss_spec_for(cfg, info))


def forward_times(model_dir: str, tiles: np.ndarray, rounds: int, batch: int) -> dict[str, float]:
    from pipelines.predict.models import load_predictor

    predictors = {p: load_predictor([model_dir], "none", "mean", p) for p in ("float32", "bfloat16")}
    for predictor in predictors.values():
        predictor.predict(tiles[:batch])                       # trace and warm up
    seconds = {p: 0.0 for p in predictors}
    for _ in range(rounds):
        for precision, predictor in predictors.items():
            started = time.perf_counter()
            for i in range(0, len(tiles), batch):
                predictor.predict(tiles[i:i + batch])
            seconds[precision] += time.perf_counter() - started
    return {p: len(tiles) * rounds / s for p, s in seconds.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model-dir", required=True)
    parser.add_argument("--images", required=True)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch", type=int, default=8)
    args = parser.parse_args()
    work = tempfile.mkdtemp(prefix="tessera-bf16-")
    target = f"{work}/model"
    re_export(args.model_dir, target)
    from trainer import export

    card = export.load_card(target)
    size = card.input_size
    paths = sorted(glob.glob(f"{args.images}/*.png"))
    tiles = []
    for path in paths:
        pixels = np.asarray(Image.open(path))
        pixels = pixels[..., None] if pixels.ndim == 2 else pixels
        for y in range(0, pixels.shape[0] - size + 1, size // 2):
            for x in range(0, pixels.shape[1] - size + 1, size // 2):
                tiles.append(pixels[y:y + size, x:x + size])
    tiles = np.stack(tiles)
    speed = forward_times(export.current_export(target), tiles, args.rounds, args.batch)
    print(f"{len(tiles)} tiles of {size}^2, batch {args.batch}, {args.rounds} rounds alternating")
    print(f"  float32 {speed['float32']:.2f} tiles/s, bfloat16 {speed['bfloat16']:.2f} tiles/s: "
          f"{speed['bfloat16'] / speed['float32']:.2f}x")
    masks = {}
    for precision in ("float32", "bfloat16"):
        out = f"{work}/pred-{precision}"
        subprocess.run([sys.executable, "-m", "tessera.cli", "predict", "--model-dir", target, "--input",
                        args.images, "--output", out, "--save-probabilities", "--precision", precision],
                       cwd=REPO, check=True, capture_output=True)
        masks[precision] = out
    agree, worst, mean = [], 0.0, []
    for path in sorted(glob.glob(f"{masks['float32']}/masks/*.png")):
        other = path.replace("pred-float32", "pred-bfloat16")
        agree.append(np.mean(np.asarray(Image.open(path)) == np.asarray(Image.open(other))))
        full = np.load(path.replace("/masks/", "/probabilities/").replace(".png", ".npy")).astype(np.float32)
        half = np.load(other.replace("/masks/", "/probabilities/").replace(".png", ".npy")).astype(np.float32)
        worst, mean = max(worst, float(np.abs(full - half).max())), mean + [float(np.abs(full - half).mean())]
    print(f"  masks agree on {100 * min(agree):.3f}% (worst image) / {100 * np.mean(agree):.3f}% (mean) of pixels; "
          f"|p_bf16 - p_f32| max {worst:.4f}, mean {np.mean(mean):.5f}")
    shutil.rmtree(work)


if __name__ == "__main__":
    main()
