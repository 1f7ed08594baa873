"""Trainer benchmark: is the input pipeline ever the bottleneck?

Measured side by side in one run, on one dataset:

1. input pipeline examples/s (shuffle, decode, augment, batch, prefetch: what training
   reads) against a floor that only reads and parses the same records (TFRecord read +
   PNG decode, parallel) — ratio target >= 0.8;
2. training steps/s fed by that pipeline against the same training step fed from batches
   already in memory — ratio target >= 0.95.

    python -m bench.bench_train                      # synthetic 128-pixel tiles
    python -m bench.bench_train --data ./dataset     # a `tessera preprocess` output

A GPU run would add images/s at 572x572 with mixed precision on vs off and 1 GPU vs all;
this benchmark reports what the machine it runs on has (see --help).
"""
from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402

from trainer import data  # noqa: E402
from trainer.config import AugmentConfig, ModelConfig, OptimConfig, for_task, from_dict  # noqa: E402
from trainer.loop import loss_spec_for, make_train_step  # noqa: E402
from trainer.models import build_model, output_size  # noqa: E402
from trainer.optim import build_optimizer, make_schedule  # noqa: E402


def rate(dataset: tf.data.Dataset, batches: int, batch_size: int, warmup: int = 5) -> float:
    """Examples per second over ``batches`` batches after ``warmup`` batches."""
    iterator = iter(dataset)
    for _ in range(warmup):
        next(iterator)
    start = time.perf_counter()
    for _ in range(batches):
        next(iterator)
    return batches * batch_size / (time.perf_counter() - start)


def floor_dataset(info: data.DatasetInfo, batch_size: int) -> tf.data.Dataset:
    """Read and parse only: the same records, parallel reads and decoding, nothing else."""
    files = list(info.split_files["train"])
    ds = tf.data.Dataset.from_tensor_slices(files).interleave(
        tf.data.TFRecordDataset, cycle_length=len(files), num_parallel_calls=tf.data.AUTOTUNE).repeat()
    return ds.map(data.parse_fn(info.spec), num_parallel_calls=tf.data.AUTOTUNE).batch(batch_size).prefetch(2)


def steps_per_second(step, iterator, steps: int, warmup: int = 3) -> float:
    for _ in range(warmup):
        float(step(iterator))
    start = time.perf_counter()
    for _ in range(steps):
        float(step(iterator))
    return steps / (time.perf_counter() - start)


def component_costs(info: data.DatasetInfo, batch: int, repeats: int = 20) -> dict[str, float]:
    """Milliseconds per batch of each piece, alone, in a tf.function (where the time goes)."""
    from trainer import augment

    records = list(tf.data.TFRecordDataset(list(info.split_files["train"])).take(batch))
    parse = data.parse_fn(info.spec)
    images, masks = (tf.stack(t) for t in zip(*[parse(r) for r in records]))
    seed = tf.constant([1, 2], tf.int64)
    no_photo = dict(brightness=0.0, contrast=0.0, gamma=0.0, noise=0.0)
    pieces = {
        "parse + PNG decode": lambda: [parse(r) for r in records],
        "flips + rot90 (image and mask)": lambda: augment.augment(images, masks, seed, AugmentConfig(**no_photo)),
        "brightness + contrast": lambda: augment.photometric(images, seed, AugmentConfig(gamma=0.0, noise=0.0)),
        "gamma": lambda: augment.photometric(images, seed, AugmentConfig(brightness=0.0, contrast=0.0, noise=0.0)),
        "noise": lambda: augment.photometric(images, seed, AugmentConfig(brightness=0.0, contrast=0.0, gamma=0.0)),
    }
    costs = {}
    for name, piece in pieces.items():
        fn = tf.function(piece)
        fn()
        start = time.perf_counter()
        for _ in range(repeats):
            fn()
        costs[name] = (time.perf_counter() - start) / repeats * 1000
    return costs


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", help="dataset directory (default: a synthetic one in a temp dir)")
    parser.add_argument("--examples", type=int, default=1024, help="synthetic train examples")
    parser.add_argument("--tile", type=int, default=128, help="synthetic tile size")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--input-batches", type=int, default=60)
    parser.add_argument("--steps", type=int, default=15)
    parser.add_argument("--depth", type=int, default=3)
    parser.add_argument("--filters", type=int, default=16)
    args = parser.parse_args(argv)

    path = args.data
    if not path:
        from tessera import synthetic_dataset

        path = tempfile.mkdtemp(prefix="tessera-bench-")
        synthetic_dataset.segmentation_dataset(path, n_train=args.examples, n_val=8, n_test=2, core=args.tile - 16,
                                          margin=8, num_shards=8)
    info = data.open_dataset(path)
    batch = args.batch_size
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPU cores, GPUs: "
          f"{len(tf.config.list_physical_devices('GPU'))}; TF {tf.__version__}")
    print(f"dataset: {info.split_sizes['train']} train tiles of {info.spec.tile_size}^2 x {info.spec.channels}; "
          f"batch {batch}")

    def pipeline_with(cfg: AugmentConfig, augment_here: bool = True) -> tf.data.Dataset:
        return data.train_dataset(info, batch, epoch=0, seed=0, augment_cfg=cfg, augment_here=augment_here)

    no_photometric = dict(brightness=0.0, contrast=0.0, gamma=0.0, noise=0.0)
    variants = {
        "read+parse floor": lambda: floor_dataset(info, batch),
        "pipeline, augmentation in step": lambda: pipeline_with(AugmentConfig(), augment_here=False),
        "pipeline, flips+rot90 only": lambda: pipeline_with(AugmentConfig(**no_photometric)),
        "pipeline, full augmentation": lambda: pipeline_with(AugmentConfig()),
    }
    # the machine may be shared: alternate the variants and keep each one's best of 3
    rates = {name: 0.0 for name in variants}
    for _ in range(3):
        for name, make in variants.items():
            rates[name] = max(rates[name], rate(make(), args.input_batches, batch))
    floor = rates["read+parse floor"]
    print("\n1. input pipeline (examples/s, best of 3)")
    for name, value in rates.items():
        print(f"   {name:<30} {value:9.1f}   ratio to floor {value / floor:.2f}")
    full = rates["pipeline, full augmentation"]
    print(f"   where the time goes (ms per batch of {batch}, each piece alone):")
    for name, ms in component_costs(info, batch).items():
        print(f"     {name:<32} {ms:7.2f}")
    step_pipeline = rates["pipeline, augmentation in step"]
    print(f"   target >= 0.8 x floor: augmenting in tf.data {'met' if full >= 0.8 * floor else 'NOT met'}, "
          f"augmenting in the step {'met' if step_pipeline >= 0.8 * floor else 'NOT met'}")

    cfg = for_task(from_dict({"data": path, "model_dir": "unused", "batch_size": batch,
                              "model": {"depth": args.depth, "filters": args.filters}}), info.spec.task)
    strategy = tf.distribute.get_strategy()
    with strategy.scope():
        model = build_model(ModelConfig(name="unet", depth=args.depth, filters=args.filters), info.spec)
        optimizer = build_optimizer(OptimConfig(), make_schedule(OptimConfig(), 100, 10), mixed_precision=False)
        optimizer.build(model.trainable_variables)
    print(f"\n2. training (steps/s, best of 2; U-Net depth {args.depth}, {args.filters} filters, "
          f"{model.count_params():,} parameters, batch {batch})")
    loss_spec = loss_spec_for(cfg, info)
    for placement in ("pipeline", "step"):
        here = placement == "pipeline"
        step = make_train_step(strategy, model, optimizer, loss_spec, output_size(model), 0.0, False,
                               None if here else AugmentConfig())
        cached = list(pipeline_with(AugmentConfig(), here).take(8))
        in_memory = tf.data.Dataset.from_tensor_slices(tuple(tf.stack(parts) for parts in zip(*cached))).repeat()

        def fed(here=here):
            return iter(strategy.distribute_datasets_from_function(lambda ctx: data.train_dataset(
                info, batch, 0, 0, AugmentConfig(), input_context=ctx, augment_here=here)))

        memory_rate = fed_rate = 0.0
        for _ in range(2):
            memory_rate = max(memory_rate, steps_per_second(
                step, iter(strategy.distribute_datasets_from_function(lambda _: in_memory)), args.steps))
            fed_rate = max(fed_rate, steps_per_second(step, fed(), args.steps))
        print(f"   augmentation in {placement:<8}  in memory {memory_rate:6.2f}   fed by the pipeline {fed_rate:6.2f}"
              f"   ratio {fed_rate / memory_rate:.2f}   target >= 0.95 -> "
              f"{'met' if fed_rate >= 0.95 * memory_rate else 'NOT met'}   ({fed_rate * batch:.1f} images/s)")
    if not tf.config.list_physical_devices("GPU"):
        print("\nno GPU here: mixed precision (on vs off) and 1 GPU vs all are not measured")


if __name__ == "__main__":
    main()
