"""``tessera predict``: batch prediction of exported models over images (Beam RunInference).

Geometry (core, margin, input size) and normalisation come from the model card; images are
cut into overlap tiles, predicted in batches (with optional test-time augmentation and an
ensemble of models), stitched back per image to exactly its size, and written as masks,
overlays, optional probabilities and ``predictions.parquet`` (layout: ``schemas.layout``; writers: ``pipelines.predict.outputs``).
Classifiers see each image as their dataset prepared it: fitted whole to the input size
(the card's ``fit``), or, for tile classifiers, cut into tiles whose probabilities are averaged.

Run locally (DirectRunner, in-process; progress is printed while it works)::

    python -m pipelines.predict --model-dir ./model --input ./new-images --output ./pred --tta flips

or on several local processes::

    tessera predict --model-dir ./model --input ./imgs --output ./pred \\
        --direct_running_mode=multi_processing --direct_num_workers=2

An ensemble on Dataflow (flags we do not know pass through to Beam untouched)::

    tessera predict --model-dir gs://m/a --model-dir gs://m/b --ensemble mean \\
        --input gs://bucket/images --output gs://bucket/pred --runner DataflowRunner ...

Rerunning the same command skips images whose outputs are complete; an interrupted run
resumes; a run with other settings is refused (exit 2) unless ``--overwrite``, which first
deletes the previous settings' results.
``--num-shards N --shard-index I`` (default ``$JOB_COMPLETION_INDEX``) predicts only
shard I of the inputs, for Kubernetes Indexed Jobs; the last shard to finish merges.
Bad flags, model directories or inputs exit with status 2 (do not retry).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time

import apache_beam as beam

from pipelines.beam import flags, runner
from pipelines.beam.files import delete_if_present, resolve_version
from pipelines.beam.lease import Lease, LeaseBusy
from pipelines.beam.progress import ProgressPrinter
from pipelines.core import images
from pipelines.predict import blocks, large, outputs, plan
from pipelines.predict import finish as predict_finish
from pipelines.predict import instances as predict_instances
from pipelines.predict import inputs as predict_inputs
from pipelines.predict import models as inference
from pipelines.predict import transforms as pt
from pipelines.predict import tta as predict_tta
from schemas import decoder as dec
from schemas import layout as names
from schemas import model_card
from schemas.crashpoints import crashpoint


@dataclasses.dataclass(frozen=True)
class PredictConfig:
    model_dirs: tuple[str, ...]
    input: str
    output: str
    ensemble: str = "mean"
    threshold: float = -1.0           # binary models: decide P(foreground) >= this (-1: the model card's)
    precision: str = "float32"        # the models' SavedModel computing in float32, or their bfloat16 export
    tta: str = "none"
    batch_size: int = 16
    overlap: float = 0.0
    blend: str = "gaussian"
    binary_255: bool = False
    save_probabilities: bool = False
    num_shards: int = 1
    shard_index: int = 0
    max_image_pixels: int = 400_000_000
    memory_limit_mb: int = 2048
    lease_ttl_s: float = 60.0         # a run's claim on the output expires this long after its last heartbeat
    lease_wait_s: float = 120.0       # how long to wait for a conflicting run (a killed one's lease expiring)
    large_image_pixels: int = 64_000_000  # tiled TIFF / zarr inputs larger than this go block by block
    max_large_image_pixels: int = large.MAX_LARGE_IMAGE_PIXELS   # ... and larger than this are rejected
    pixel_size_um: float = 0.0        # predict the pyramid level of this pixel size (0: the model card's, else 0)
    connectivity: int = 0             # objects (and instances): 4- or 8-connected (0: the card's decoder's, else 4)
    instances: str = "auto"           # auto | none | components | watershed (predict_instances.resolve_decoder)
    # the decoder's settings; unset (-1 / ""): the model card's (predict_instances.resolve_decoder)
    decoder: str = ""                 # components | watershed | seeded | partition
    seed_threshold: float = -1.0
    foreground_threshold: float = -1.0
    min_size: int = -1
    expand: int = -1
    min_distance: int = -1            # watershed: seeds at least this many px apart (5 unless the card says)
    model_copies: int = 0             # > 0: copies per machine shared by its processes (0: one per process)
    mask_format: str = "ome-zarr"     # large images: ome-zarr, or ome-tiff (an OME-TIFF beside the zarr)
    halo: int = blocks.DEFAULT_HALO   # large images with instances: px of context decoded around each block
    follow_symlinks: bool = False
    overwrite: bool = False           # replace the results of a run with other settings in --output

    def __post_init__(self) -> None:
        if not self.model_dirs:
            raise ValueError("at least one --model-dir is required")
        if self.ensemble not in inference.ENSEMBLES:
            raise ValueError(f"--ensemble must be one of {inference.ENSEMBLES}")
        predict_tta.transforms(self.tta)
        if self.precision not in model_card.PRECISIONS:
            raise ValueError(f"--precision must be one of {model_card.PRECISIONS}, got {self.precision!r}")
        if self.threshold != -1.0 and not 0.0 < self.threshold < 1.0:
            raise ValueError(f"--threshold must be in (0, 1), got {self.threshold}")
        plan.stride_for(1, self.overlap)
        if self.blend not in ("gaussian", "linear"):
            raise ValueError(f"--blend must be gaussian or linear, got {self.blend!r}")
        if self.batch_size < 1 or self.memory_limit_mb < 1 or self.max_image_pixels < 1:
            raise ValueError("--batch-size, --memory-limit-mb and --max-image-pixels must be positive")
        if self.max_large_image_pixels < 1:
            raise ValueError(f"--max-large-image-pixels must be positive, got {self.max_large_image_pixels}")
        if self.lease_ttl_s <= 0 or self.lease_wait_s < 0:
            raise ValueError("--lease-ttl-s must be positive and --lease-wait-s not negative")
        if self.instances not in predict_instances.METHODS or self.decoder not in ("", *dec.MODES):
            raise ValueError(f"--instances must be one of {predict_instances.METHODS} and --decoder one of "
                             f"{dec.MODES}, got {self.instances!r}, {self.decoder!r}")
        for name, value in (("--seed-threshold", self.seed_threshold), ("--foreground-threshold",
                                                                       self.foreground_threshold)):
            if value != -1.0 and not 0.0 < value <= 1.0:
                raise ValueError(f"{name} must be in (0, 1], got {value}")
        if self.min_size < -1 or self.expand < -1 or self.min_distance not in (-1,) and self.min_distance < 1:
            raise ValueError(f"--min-size and --expand must be >= 0 and --min-distance >= 1, got "
                             f"{self.min_size}, {self.expand}, {self.min_distance}")
        if self.halo < 1:
            raise ValueError(f"--halo must be at least 1 px, got {self.halo}")
        if self.connectivity not in (0, 4, 8):
            raise ValueError(f"--connectivity must be 4 or 8, got {self.connectivity}")
        if self.num_shards < 1 or not 0 <= self.shard_index < self.num_shards:
            raise ValueError(f"--shard-index must be in [0, --num-shards={self.num_shards}), got {self.shard_index}")


def build_parser() -> argparse.ArgumentParser:
    d = PredictConfig(("-",), "", "")
    p = argparse.ArgumentParser(prog="tessera predict", allow_abbrev=False, description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model-dir", action="append", required=True, dest="model_dirs",
                   help="a `tessera train` model directory; repeat for an ensemble")
    p.add_argument("--ensemble", choices=inference.ENSEMBLES, default=d.ensemble,
                   help="combine several models by mean probability or majority vote")
    p.add_argument("--precision", choices=model_card.PRECISIONS, default=d.precision,
                   help="bfloat16: run the models' bfloat16 export (train --export-bf16), faster on CPUs with "
                        "AMX / AVX512-BF16; masks agree with float32 on ~99.9%% of pixels (docs/BENCHMARKS.md)")
    p.add_argument("--threshold", type=float, default=d.threshold,
                   help="binary models: foreground where P >= this, instead of the model card's calibrated one (-1)")
    p.add_argument("--input", required=True, help="folder, glob, or .txt list of images (local or gs://)")
    p.add_argument("--output", required=True, help="prediction directory (local or gs://)")
    p.add_argument("--tta", choices=tuple(predict_tta.TTA_MODES), default=d.tta,
                   help="test-time augmentation: none, flips (identity + mirror) or dihedral (8)")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="tiles per inference call")
    p.add_argument("--overlap", type=float, default=d.overlap, help="fraction of the core shared by neighbours (0..0.5)")
    p.add_argument("--blend", choices=("gaussian", "linear"), default=d.blend, help="weights of overlapping cores")
    p.add_argument("--binary-255", action="store_true", help="binary masks as 0/255 instead of class ids 0/1")
    p.add_argument("--save-probabilities", action="store_true", help="also write float16 (H, W, K) .npy maps")
    p.add_argument("--num-shards", type=int, default=d.num_shards, help="split the inputs into N shards")
    p.add_argument("--shard-index", type=int, default=int(os.environ.get("JOB_COMPLETION_INDEX", d.shard_index)),
                   help="the shard this run predicts; the default is $JOB_COMPLETION_INDEX when set")
    p.add_argument("--max-image-pixels", type=int, default=d.max_image_pixels, help="larger images are rejected")
    p.add_argument("--memory-limit-mb", type=int, default=d.memory_limit_mb,
                   help="per-worker bound for one image's arrays: larger images go in strips, or are rejected")
    p.add_argument("--large-image-pixels", type=int, default=d.large_image_pixels,
                   help="region-readable inputs (tiled TIFF, OME-TIFF, SVS, OME-Zarr) with more pixels are read "
                        "by region and predicted block by block over the workers, into an OME-Zarr mask")
    p.add_argument("--max-large-image-pixels", type=int, default=d.max_large_image_pixels,
                   help="large (region-readable) inputs with more pixels to predict are rejected (too_large) "
                        "before any block is planned")
    p.add_argument("--pixel-size", type=float, default=d.pixel_size_um, dest="pixel_size_um",
                   help="µm/px to predict at: the pyramid level of that size is read (0: the model card's)")
    p.add_argument("--model-copies", type=int, default=d.model_copies,
                   help="load this many model copies per machine, shared by its worker processes "
                        "(Beam large_model; 0: one copy per worker process)")
    p.add_argument("--mask-format", choices=("ome-zarr", "ome-tiff"), default=d.mask_format,
                   help="large images' masks: an OME-Zarr label pyramid, or that and a tiled pyramidal OME-TIFF")
    predict_instances.add_flags(p, d)
    p.add_argument("--follow-symlinks", action="store_true",
                   help="read symlinked inputs whose target lies outside the input folder (refused by default)")
    p.add_argument("--overwrite", action="store_true",
                   help="when --output holds results of other settings (another model, TTA, overlap, decoder...), "
                        "delete them and predict with these (refused by default, naming what changed)")
    p.add_argument("--lease-ttl-s", type=float, default=d.lease_ttl_s,
                   help="this run's claim on --output expires this long after its last heartbeat (if killed)")
    p.add_argument("--lease-wait-s", type=float, default=d.lease_wait_s,
                   help="wait this long for another run on the same shard or with other settings to finish")
    return p


def config_from_args(args: argparse.Namespace) -> PredictConfig:
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(PredictConfig)}
    values["decoder"] = values["decoder"] or ""
    # each model directory's current export, resolved once: every worker loads the same one
    return PredictConfig(**{**values, "model_dirs": tuple(resolve_version(d) for d in args.model_dirs),
                            "output": predict_inputs.absolute(args.output)})


def job_spec(config: PredictConfig) -> tuple[pt.JobSpec, list]:
    """The workers' spec from the model cards (geometry is never typed by the user)."""
    read = [inference.read_card(d) for d in config.model_dirs]
    cards = [card for card, _ in read]
    inference.check_compatible(cards, config.model_dirs)
    for model_dir, card in zip(config.model_dirs, cards):
        inference.check_saved_model(model_dir, card, config.precision)
        inference.verify_model(model_dir, card, config.precision)
    card = cards[0]
    if config.threshold != -1.0 and (card.num_classes != 2 or config.ensemble == "vote"):
        hint = " (a boundary model: --foreground-threshold, --seed-threshold)" if card.is_boundary_model else ""
        raise ValueError("--threshold applies to a binary model's (or a mean ensemble's) P(foreground); "
                         f"{config.model_dirs[0]} has {card.num_classes} classes, --ensemble {config.ensemble}{hint}")
    decoder = predict_instances.resolve_decoder(config.instances, cards, predict_instances.decoder_overrides(config),
                                                config.model_dirs[0])
    connectivity = config.connectivity or (decoder or card.decoder_params()).connectivity
    boundary = decoder is not None and card.is_boundary_model     # masks: its output classes, decoded
    classes = card.output_class_names if boundary else card.class_names
    if config.binary_255 and len(classes) != 2:
        raise ValueError(f"--binary-255 needs binary masks; {config.model_dirs[0]} predicts {len(classes)} classes"
                         + (" (without --instances none a boundary model's masks are binary)"
                            if card.is_boundary_model else ""))
    settings = outputs.OutputSettings(
        task=card.task, class_names=classes,
        model_ids=tuple(model_id for _, model_id in read),
        ensemble=config.ensemble, tta=config.tta, overlap=config.overlap, blend=config.blend,
        binary_255=config.binary_255, save_probabilities=config.save_probabilities and card.task == "segmentation",
        connectivity=connectivity, mask_format=config.mask_format,
        instances=decoder.mode if decoder else "none",
        decoder=json.dumps(decoder.to_dict(), sort_keys=True) if decoder else "",
        threshold=config.threshold, precision=config.precision, head_classes=card.class_names if boundary else ())
    geometry = plan.Geometry(card.task, card.core, card.margin, card.channels, 2 if card.input_dtype == "uint16" else 1,
                             card.num_classes, plan.stride_for(card.core, config.overlap), config.batch_size,
                             settings.save_probabilities, decoder is not None,
                             decoder.mode if decoder else "components", boundary)
    policy = images.ImagePolicy(color_mode="rgb" if card.channels == 3 else "grayscale",
                                bit_depth="keep16" if card.input_dtype == "uint16" else "scale8",
                                max_pixels=config.max_image_pixels, intensity=card.intensity)
    threshold = config.threshold if config.threshold != -1.0 else inference.ensemble_threshold(cards, config.ensemble)
    spec = pt.JobSpec(geometry, policy, outputs.OutputLayout(config.output, settings), config.memory_limit_mb * 2**20,
                      threshold, card.fit, card.input_size,
                      whole_image=card.task == "classification" and card.whole_image,
                      connectivity=connectivity, decoder=decoder, boundary=boundary)
    if card.task == "segmentation" and config.large_image_pixels:
        fits = blocks.refusal(geometry, spec.memory_limit_bytes, config.halo) is None   # else large images are
        spec = dataclasses.replace(spec, large_image_pixels=config.large_image_pixels,   # rejected, not the job
                                   block_side=blocks.block_side(geometry, spec.memory_limit_bytes, halo=config.halo)
                                   if fits else 0,
                                   pixel_size_um=config.pixel_size_um or card.pixel_size_um or None)
    return spec, cards


@dataclasses.dataclass(frozen=True)
class Job:
    """What a run works on, decided before anything is written."""

    spec: pt.JobSpec
    inputs: list[pt.ImageInput]          # this shard's images
    listing_rejected: list[dict]         # this shard's inputs refused while listing


def prepare(config: PredictConfig) -> Job:
    """Read the model cards and list the inputs; bad flags, models or inputs raise ValueError
    or FileNotFoundError here, before the output directory is touched."""
    spec, _ = job_spec(config)
    inputs, listing_rejected, root = predict_inputs.list_inputs(config.input, output=config.output)
    spec = dataclasses.replace(spec, input_root=root, follow_symlinks=config.follow_symlinks)
    mine = lambda key: predict_inputs.in_shard(key, config.num_shards, config.shard_index)  # noqa: E731
    return Job(spec, [i for i in inputs if mine(i.image_id)],
               [r for r in listing_rejected if mine(r["image_id"] or r["source"])])


def build_pipeline(p: beam.Pipeline, config: PredictConfig, spec: pt.JobSpec, todo: list[pt.ImageInput]) -> None:
    """Ordinary images in strips; large region-readable ones block by block (pipelines.predict.large).
    Each path keeps its pixels inside one fused stage: only small records cross a shuffle."""
    handler = inference.TileModelHandler(config.model_dirs, config.tta, config.ensemble, config.batch_size,
                                         config.model_copies, config.precision)
    cut = (p | "Inputs" >> beam.Create(todo) | "Spread" >> beam.Reshuffle() | "CutStrips" >> pt.CutStrips(spec))
    _ = cut.tasks | "PredictTiles" >> pt.PredictTiles(handler) | "StitchImages" >> pt.StitchImages(spec)
    _ = cut[pt.LARGE] | "PredictLargeImages" >> large.PredictLargeImages(spec, handler, config.halo,
                                                                             config.max_large_image_pixels)
    _ = cut[pt.REJECTED] | "WriteRejected" >> pt.WriteRejected(spec.layout)


def make_pipeline(beam_args: list[str]) -> beam.Pipeline:
    """In-process DirectRunner unless told otherwise (TensorFlow already uses every core):
    the mode is given first, so the user's own runner and direct_* flags come later and win."""
    return runner.make_pipeline(["--direct_running_mode=in_memory", "--direct_num_workers=1", *beam_args])


def run(argv: list[str] | None = None) -> int:
    args, beam_args = flags.parse(build_parser(), argv)
    try:
        config = config_from_args(args)
        job = prepare(config)
        summary, _ = execute(config, beam_args, job=job)
    except (ValueError, FileNotFoundError, LeaseBusy) as e:  # bad flags, models, inputs, a busy output: exit 2
        print(f"tessera predict: error: {e}", file=sys.stderr)
        return 2
    print(f"tessera predict: {summary['predicted']} predicted, {summary['skipped_done']} already done, "
          f"{summary['rejected']} rejected {summary['rejected_reasons'] or ''} -> {summary['output']}", flush=True)
    return 0


def execute(config: PredictConfig, beam_args: list[str], collect_metrics: bool = False,
            job: Job | None = None) -> tuple[dict, dict]:
    """Run one prediction job; returns its _SUCCESS summary and (when asked) time spent per stage.

    The timings are sums over all workers, in seconds: "inference" (RunInference batches),
    "read_cut" (read, validate, decode, plan) and "stitch_write" (stitch strips, write outputs).
    """
    started = time.time()
    job = job or prepare(config)
    layout = job.spec.layout
    lease = Lease(layout.path(names.LEASES_DIR), {
        "settings": layout.settings.fingerprint(), "num_shards": config.num_shards,
        "shard_index": config.shard_index, "pid": os.getpid(), "started": time.time()}, config.lease_ttl_s)
    lease.acquire(conflicting_runs, config.lease_wait_s)
    try:
        return _execute(config, beam_args, collect_metrics, job, started)
    finally:
        lease.release()


def conflicting_runs(mine: dict, theirs: dict) -> bool:
    """Two runs cannot share an output when they do the same shard, or differ in settings or
    sharding (one would forget or overwrite the other's results)."""
    return (theirs.get("settings") != mine["settings"] or theirs.get("num_shards") != mine["num_shards"]
            or theirs.get("shard_index") == mine["shard_index"])


def _execute(config: PredictConfig, beam_args: list[str], collect_metrics: bool, job: Job,
             started: float) -> tuple[dict, dict]:
    spec, inputs, listing_rejected = job.spec, job.inputs, job.listing_rejected
    layout = spec.layout
    suffix = names.shard_suffix(config.num_shards, config.shard_index)
    predict_finish.forget_other_settings(layout, overwrite=config.overwrite)
    delete_if_present([layout.path(names.success_file(s)) for s in {suffix, ""}])
    crashpoint("predict:started")
    done = predict_inputs.completed(layout, inputs)
    todo = [i for i in inputs if i.image_id not in done]
    config_record = {**dataclasses.asdict(config), "shard_index": None, "settings": dataclasses.asdict(layout.settings),
                     "fingerprint": layout.settings.fingerprint(), "geometry": dataclasses.asdict(spec.geometry),
                     "threshold": spec.threshold, "image_policy": spec.policy.describe(),
                     "memory_limit_bytes": spec.memory_limit_bytes, "beam_args": list(beam_args)}
    outputs.write_json(layout.path(names.CONFIG_FILE), config_record)
    print(f"tessera predict: {len(inputs)} images in shard {config.shard_index + 1}/{config.num_shards}, "
          f"{len(done)} already done, {len(todo)} to predict -> {config.output}", flush=True)
    timings: dict = {}
    if todo:
        pipeline = make_pipeline(beam_args)
        build_pipeline(pipeline, config, spec, todo)
        progress = ProgressPrinter("tessera predict", predict_finish.ImagesDone(layout, todo), final=True)
        progress.start()
        try:
            result = pipeline.run()
            result.wait_until_finish()
        finally:
            progress.stop()
        if collect_metrics:
            timings = stage_seconds(result)
    summary = predict_finish.finish(layout, inputs, listing_rejected, done, config.num_shards,
                                    config.shard_index, started)
    return {**summary, "output": config.output}, timings


def stage_seconds(result) -> dict:
    """Seconds per stage from the pipeline's distributions (sums over workers)."""
    scale = {"inference_batch_latency_micro_secs": ("inference", 1e-6), "read_cut_ms": ("read_cut", 1e-3),
             "stitch_write_ms": ("stitch_write", 1e-3)}
    out = {}
    for item in result.metrics().query()["distributions"]:
        name = item.key.metric.name
        if name in scale:
            key, factor = scale[name]
            out[key] = out.get(key, 0.0) + item.committed.sum * factor
    return out


if __name__ == "__main__":
    sys.exit(run())
