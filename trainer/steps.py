"""The distributed training and evaluation steps (``strategy.run`` inside ``tf.function``),
shared by the training loop, the export's calibration pass and the benchmark."""
from __future__ import annotations

import tensorflow as tf

from schemas.example import SEGMENTATION
from trainer import calibrate, metrics
from trainer.augment import augment_example_batch
from trainer.config import AugmentConfig, TrainConfig
from trainer.data import DatasetInfo, crop_to, eval_dataset, has_examples
from trainer.losses import LossSpec, class_weights_from_setting, combine, distance_sums, head_losses, loss_sums
from trainer.models import primary_output, split_outputs

SUM = tf.distribute.ReduceOp.SUM


def loss_spec_for(cfg: TrainConfig, info: DatasetInfo) -> LossSpec:
    weights = class_weights_from_setting(cfg.loss.class_weights, info.stats, info.spec.class_names, info.spec.task)
    return LossSpec.from_text(cfg.loss.loss, info.spec.task, class_weights=weights, focal_gamma=cfg.loss.focal_gamma,
                              tversky_alpha=cfg.loss.tversky_alpha, tversky_beta=cfg.loss.tversky_beta,
                              smooth=cfg.loss.smooth,
                              border_w0=info.spec.weight_map_w0 if info.weight_map else 0.0,
                              distance_weight=cfg.loss.distance_weight if info.distance else 0.0)


def with_distance_sums(y, distance, sums, counts):
    """The class terms' (sums, counts) followed by the distance head's, when there is one."""
    if distance is None:
        return sums, counts
    d_sum, d_count = distance_sums(y, distance)
    return tf.concat([sums, [d_sum]], 0), tf.concat([counts, [d_count]], 0)


def output_loss_sums(y, outputs, spec: LossSpec):
    """Loss sums of the primary output plus, under deep supervision, the mean of the side outputs';
    then the distance head's (``with_distance_sums``)."""
    classes, distance = split_outputs(outputs)
    if not isinstance(classes, (list, tuple)):
        return with_distance_sums(y, distance, *loss_sums(y, classes, spec))
    sums, counts = loss_sums(y, classes[0], spec)
    sides = [loss_sums(y, side, spec)[0] for side in classes[1:]]
    return with_distance_sums(y, distance, sums + tf.add_n(sides) / len(sides), counts)


def make_train_step(strategy, model, optimizer, spec: LossSpec, out_size, clipnorm: float, xla: bool,
                    augment_cfg=None, segmentation: bool = True):
    """The distributed step over ``next(iterator)``: (x, y), or (x, y, seed) when the step
    augments (``augment_cfg`` given: augmentation on the replica's device). Returns the global
    loss; with a distance head (``spec.distance_weight``) [loss, class loss, distance loss]."""
    variables = list(model.trainable_variables)

    def replica_step(x, y, seed=None):
        ctx = tf.distribute.get_replica_context()
        if seed is not None:
            x, y = augment_example_batch(x, y, seed, augment_cfg, segmentation)
        if out_size:
            y = crop_to(y, out_size)
        with tf.GradientTape() as tape:
            sums, counts = output_loss_sums(y, model(x, training=True), spec)
            counts = ctx.all_reduce(SUM, tf.stop_gradient(counts))
            loss = combine(sums, counts, spec)
            scaled = optimizer.scale_loss(loss)
        grads = tape.gradient(scaled, variables)
        if clipnorm:
            # clip the *global* gradient: sum over replicas first, hand the optimiser 1/n of
            # it per replica (it sums again)
            scale = optimizer.scale_loss(tf.constant(1.0))
            total = ctx.all_reduce(SUM, grads)
            clipped, _ = tf.clip_by_global_norm([g / scale for g in total], clipnorm)
            grads = [g * scale / ctx.num_replicas_in_sync for g in clipped]
        optimizer.apply(grads, variables)
        heads = head_losses(tf.stop_gradient(sums), counts, spec)
        return tf.stack([loss, heads["classes"], heads["distance"]]) if heads else loss

    replica_fn = tf.function(replica_step, jit_compile=True) if xla else replica_step

    @tf.function
    def step(iterator):
        return strategy.reduce(SUM, strategy.run(replica_fn, args=tuple(next(iterator))), axis=None)

    return step


def make_eval_step(strategy, model, spec: LossSpec, num_classes: int, out_size, binary: bool):
    """Per batch, summed over replicas: loss sums and counts, confusion matrix, and (binary
    segmentation) histograms of P(foreground) for threshold calibration."""
    def replica_step(x, y):
        outputs = model(x, training=False)
        logits = primary_output(outputs)
        if out_size:
            y = crop_to(y, out_size)
        sums, counts = with_distance_sums(y, split_outputs(outputs)[1], *loss_sums(y, logits, spec))
        hist = metrics.foreground_histograms(y, logits, metrics.HISTOGRAM_BINS) if binary else tf.zeros([2, 1])
        return sums, counts, metrics.confusion_matrix(y, logits, num_classes), hist

    @tf.function
    def step(batch):
        x, y = batch
        return [strategy.reduce(SUM, v, axis=None) for v in strategy.run(replica_step, args=(x, y))]

    return step


def evaluate_split(strategy, eval_step, info: DatasetInfo, batch_size: int, split: str = "val") -> list:
    """[loss sums, counts, confusion, histograms] over one pass of ``split`` (numpy); a
    ValueError for a split without examples (callers check ``has_examples`` first)."""
    if not has_examples(info, split):
        raise ValueError(f"cannot evaluate the {split!r} split of {info.path}: it has no examples")
    dist = strategy.distribute_datasets_from_function(lambda ctx: eval_dataset(info, batch_size, split, ctx))
    totals = None
    for batch in dist:
        values = [v.numpy() for v in eval_step(batch)]
        totals = values if totals is None else [a + b for a, b in zip(totals, values)]
    if totals is None:
        raise ValueError(f"the {split!r} split of {info.path} yielded no batch to evaluate")
    return totals


def validate(strategy, eval_step, info: DatasetInfo, cfg: TrainConfig, spec: LossSpec) -> dict:
    """val_loss and val_<metric> (binary segmentation at threshold 0.5) for the history."""
    sums, counts, confusion, hist = evaluate_split(strategy, eval_step, info, cfg.batch_size)
    if info.spec.task != SEGMENTATION:
        scores = metrics.classification_scores(confusion)
    elif info.spec.num_classes == 2:
        scores = calibrate.scores_at(hist, 0.5, cfg.beta)
    else:
        scores = metrics.segmentation_scores(confusion, cfg.beta)
    heads = {f"val_loss_{k}": float(v) for k, v in head_losses(sums, counts, spec).items()}
    return {"val_loss": float(combine(sums, counts, spec)), **heads, **{f"val_{k}": v for k, v in scores.items()}}


def augment_in_pipeline(cfg: AugmentConfig) -> bool:
    """Where augmentation runs: tf.data on the CPU, or the training step (on the accelerator)."""
    placement = cfg.placement
    if placement == "auto":
        placement = "step" if tf.config.list_logical_devices("GPU") else "pipeline"
    return placement == "pipeline" or not cfg.enabled
