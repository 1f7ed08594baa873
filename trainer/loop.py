"""The training loop: one custom loop for every strategy (default, Mirrored, MultiWorkerMirrored).

Keras 3 ``fit`` does not run under MultiWorkerMirroredStrategy, so the loop is ours:
``distribute_datasets_from_function`` + ``strategy.run`` in a ``tf.function``, with a Keras
model and optimiser. The loss is normalised by global counts (see ``trainer.losses``).
A ``tf.train.CheckpointManager`` backs up model, optimiser, epoch and step every
``checkpoint_every`` steps and at every epoch end; a rerun of the same command restores
it and skips the batches of the current epoch already trained (the input order is a pure
function of seed, epoch and position). The best model by the monitored validation metric
is checkpointed separately and exported at the end by the chief.
"""
from __future__ import annotations

import dataclasses
import signal
import threading
import time

import keras
import numpy as np
import tensorflow as tf

from schemas.crashpoints import crashpoint
from schemas.example import SEGMENTATION
from trainer import distribute, export
from trainer.budget import TimeBudget, plan_epochs
from trainer.calibrate import calibration_rule
from trainer.config import TrainConfig, for_task
from trainer.curves import learning_curves_png
from trainer.data import (
    DatasetInfo,
    count_examples,
    crop_to,
    has_examples,
    locate_damage,
    open_dataset,
    sample,
    train_dataset,
    verify_dataset,
    with_distance_head,
    with_weight_map,
)
from trainer.models import (
    BACKBONE_NAME,
    build_model,
    check_geometry,
    output_size,
    primary_output,
)
from trainer.models.layers import ToProbabilities
from trainer.observe import Board, History, Progress, log, triptych
from trainer.optim import build_optimizer, make_schedule
from trainer.resume import check_backup_config, current_export
from trainer.steps import (
    augment_in_pipeline,
    loss_spec_for,
    make_eval_step,
    make_train_step,
    validate,
)

class Preempted(RuntimeError):
    """SIGTERM arrived: the backup was saved at the current step; rerun to resume."""


class StopRequest:
    """Turns SIGTERM into a flag the loop checks between steps (then saves and stops)."""

    def __init__(self):
        self.signal: int | None = None
        self.previous = None

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self.previous = signal.signal(signal.SIGTERM, self._note)
        return self

    def _note(self, signum, frame) -> None:
        self.signal = signum

    def __exit__(self, *exc) -> None:
        if self.previous is not None:
            signal.signal(signal.SIGTERM, self.previous)


class XlaRefused(ValueError):
    """--xla under a multi-replica strategy on CPUs (exit 2)."""


def check_xla(cfg: TrainConfig, strategy) -> None:
    """XLA-compiled steps under MirroredStrategy over several CPU devices fail in TensorFlow
    (a resource variable is placed on the wrong device), so that combination is refused up front."""
    if not cfg.xla or strategy.num_replicas_in_sync < 2:
        return
    devices = list(strategy.extended.worker_devices)
    if not any("GPU" in d.upper() for d in devices):
        raise XlaRefused(f"--xla is not supported with {strategy.num_replicas_in_sync} CPU replicas ({devices}): "
                         "TensorFlow places a resource on the wrong device there; train without --xla, or on GPUs")


class NothingToExport(RuntimeError):
    """No epoch produced a finite monitored value, so there is no best model."""


EXPORT_RESERVE_S = 10.0   # --time-budget: kept back for the export at the end (besides validation)

@dataclasses.dataclass
class TrainResult:
    history: list[dict]
    step_losses: list[float]          # global loss of every step run by this process
    resumed_at: int                   # global step restored from the backup (0 = fresh start)
    best_epoch: int
    best_value: float
    card: object | None               # the exported ModelCard (chief) or None
    weights_checksum: float           # sum of |w| over the final weights (compare across workers)
    compute_dtype: str = "float32"    # what the network's layers computed in (the precision policy applied)
    xla: bool = False                 # whether the training step was compiled with XLA
    seconds_spent: float = 0.0        # training time of this and earlier (resumed) runs, as the budget counts it
    planned_epochs: int = 0           # --time-budget: the epochs fitted to it (0: no budget)
    trained_until_s: float = 0.0      # the budget clock when the last step ended (before the export)


def set_backbone_trainable(model, trainable: bool) -> bool:
    """Freezes / unfreezes the transfer backbone; True if the model has one."""
    names = [layer.name for layer in model.layers]
    if BACKBONE_NAME not in names:
        return False
    model.get_layer(BACKBONE_NAME).trainable = trainable
    return True


def train(cfg: TrainConfig, strategy: tf.distribute.Strategy | None = None, export_model: bool = True) -> TrainResult:
    """Trains (resuming from the backup if there is one) and, on the chief, exports the best
    model. ``strategy`` defaults to ``distribute.choose_strategy()``."""
    info = with_distance_head(with_weight_map(open_dataset(cfg.data), cfg.loss.weight_map), cfg.model.distance_head)
    verify_dataset(info, cfg.verify_digests)
    cfg = for_task(cfg, info.spec.task, objects=info.spec.target == "boundary" or bool(info.weight_map))
    strategy = strategy or distribute.choose_strategy()
    policy = distribute.mixed_precision_policy(cfg.mixed_precision)
    previous_policy = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(policy)
    try:
        with StopRequest() as stop_request:
            return _train(cfg, info, strategy, policy == "mixed_float16", export_model, stop_request)
    except tf.errors.DataLossError as error:
        raise locate_damage(info, error) from error
    finally:
        keras.mixed_precision.set_global_policy(previous_policy)


def _train(cfg: TrainConfig, info: DatasetInfo, strategy, loss_scaling: bool, export_model: bool,
           stop_request: StopRequest) -> TrainResult:
    check_xla(cfg, strategy)
    chief = distribute.is_chief(strategy)
    spec = info.spec
    global_batch = cfg.batch_size * strategy.num_replicas_in_sync
    train_examples = count_examples(info, "train", originals_only=not cfg.static_copies)
    steps_per_epoch = cfg.steps_per_epoch or train_examples // global_batch
    if steps_per_epoch < 1 or not train_examples:
        raise ValueError(f"the train split ({train_examples} examples) is smaller than one global batch "
                         f"({global_batch}); lower --batch-size or set --steps-per-epoch")
    cfg = dataclasses.replace(cfg, calibrate=calibration_rule(cfg.calibrate, spec, cfg.data))   # auto: by target
    loss_spec = loss_spec_for(cfg, info)
    transfer = cfg.model.name == "transfer"
    has_val = has_examples(info, "val")
    if chief:
        tf.io.gfile.makedirs(cfg.model_dir)
        export.clean_leftovers(cfg.model_dir)
        with tf.io.gfile.GFile(f"{cfg.model_dir}/config.json", "w") as handle:
            handle.write(cfg.to_json())
    check_backup_config(cfg, info.fingerprint, cfg.backup_dir, chief)

    keras.utils.set_random_seed(cfg.seed)
    with strategy.scope():
        model = build_model(cfg.model, spec, info.distance)
        check_geometry(model, spec, cfg.model)
        schedule = make_schedule(cfg.optim, steps_per_epoch, cfg.epochs, transfer)
        optimizer = build_optimizer(cfg.optim, schedule, loss_scaling)   # float16 only: bf16 needs no scaling
        optimizer.build(model.trainable_variables)
        epoch_var = tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch")
        step_var = tf.Variable(0, dtype=tf.int64, trainable=False, name="step_in_epoch")
        mode_max = has_val and not cfg.monitor.endswith("loss")
        best_var = tf.Variable(-np.inf if mode_max else np.inf, dtype=tf.float64, trainable=False, name="best")
        best_epoch_var = tf.Variable(-1, dtype=tf.int64, trainable=False, name="best_epoch")
        wait_var = tf.Variable(0, dtype=tf.int64, trainable=False, name="wait")
        clock = TimeBudget(cfg.time_budget_s)
    state = tf.train.Checkpoint(model=model, optimizer=optimizer, epoch=epoch_var, step=step_var, best=best_var,
                                best_epoch=best_epoch_var, wait=wait_var, seconds_spent=clock.spent,
                                epochs_planned=clock.planned)
    backup_write = distribute.write_dir(cfg.backup_dir, strategy)
    backup = tf.train.CheckpointManager(state, backup_write, max_to_keep=1, checkpoint_name="backup")
    best_write = distribute.write_dir(cfg.checkpoint_dir, strategy)
    best = tf.train.CheckpointManager(tf.train.Checkpoint(model=model), best_write, max_to_keep=1,
                                      checkpoint_name="best")
    latest = tf.train.latest_checkpoint(cfg.backup_dir)
    resumed_at = 0
    if latest:
        state.restore(latest).assert_existing_objects_matched()
        clock.resumed()
        resumed_at = int(epoch_var.numpy()) * steps_per_epoch + int(step_var.numpy())
        if int(epoch_var.numpy()) < cfg.epochs:
            log(f"Resumed from {latest}: epoch {int(epoch_var.numpy()) + 1}, step {int(step_var.numpy())} "
                f"(global step {resumed_at})")
        else:
            log(f"Training already complete in {latest} (global step {resumed_at})")

    def save(manager, write_path):
        clock.record()
        path = manager.save(checkpoint_number=int(epoch_var.numpy()) * steps_per_epoch + int(step_var.numpy()))
        distribute.remove_temp(write_path, strategy)
        return path

    binary = spec.task == SEGMENTATION and spec.num_classes == 2
    out_size = output_size(model) if spec.task == SEGMENTATION else None
    eval_step = make_eval_step(strategy, model, loss_spec, spec.num_classes, out_size, binary)
    progress, board = Progress(cfg.verbose, chief), Board(cfg.log_dir, chief)
    history = History(f"{cfg.model_dir}/history.csv", int(epoch_var.numpy()), chief)
    summary_tiles = sample(info, cfg.image_summaries) if chief and has_val and cfg.image_summaries and out_size else None
    step_losses, train_step, frozen = [], None, None
    augment_here = augment_in_pipeline(cfg.augment)

    start_epoch = int(epoch_var.numpy())
    stop = cfg.patience and int(wait_var.numpy()) >= cfg.patience
    if int(clock.planned.numpy()):       # resumed under a time budget: the schedule already fitted to it
        schedule.set_total_steps(int(clock.planned.numpy()) * steps_per_epoch)
    epoch_ends = []                      # the clock at each epoch's end: whole cycles, data set-up and saves included
    step_seconds, reserve, trained_until = 0.0, EXPORT_RESERVE_S, 0.0   # the budget: a step, validation + export
    single_worker = distribute.task(strategy)[0] is None
    for epoch in range(start_epoch, cfg.epochs if not stop else start_epoch):
        if int(clock.planned.numpy()) and epoch >= int(clock.planned.numpy()) or stop:
            break
        if transfer and frozen != (epoch < cfg.optim.freeze_epochs):
            frozen = epoch < cfg.optim.freeze_epochs
            set_backbone_trainable(model, not frozen)
            train_step = None
            log(f"Backbone {'frozen' if frozen else 'trainable (fine-tuning)'} from epoch {epoch + 1}")
        if train_step is None:
            train_step = make_train_step(strategy, model, optimizer, loss_spec, out_size, cfg.optim.clipnorm, cfg.xla,
                                         None if augment_here else cfg.augment, spec.task == SEGMENTATION)
        first = int(step_var.numpy())
        dist = strategy.distribute_datasets_from_function(
            lambda ctx, e=epoch, s=first: train_dataset(info, cfg.batch_size, e, cfg.seed, cfg.augment,
                                                         cfg.shuffle_buffer, s, ctx, augment_here=augment_here,
                                                         originals_only=not cfg.static_copies))
        iterator, started, epoch_losses, epoch_heads = iter(dist), time.time(), [], []
        progress.start_epoch(epoch, cfg.epochs, steps_per_epoch, first, int(clock.planned.numpy()), clock.on)
        for step in range(first, steps_per_epoch):
            if single_worker and clock.crosses(step_seconds, reserve):
                stop = True
                clock.planned.assign(epoch + (1 if step > first else 0))   # what was trained is the plan now
                log(f"Time budget: {clock.seconds():.0f} of {clock.budget_s:.0f} s spent; stopping at step "
                    f"{step} of epoch {epoch + 1} to leave {reserve:.0f} s for validation and export")
                break
            step_started = time.monotonic()
            losses = train_step(iterator).numpy()     # the loss; with a distance head also each head's
            loss = float(losses) if losses.ndim == 0 else float(losses[0])
            heads = {} if losses.ndim == 0 else {"loss_classes": float(losses[1]), "loss_distance": float(losses[2])}
            epoch_heads.append(heads)
            step_seconds = time.monotonic() - step_started if step > first else step_seconds
            trained_until = clock.seconds()
            step_var.assign(step + 1)
            global_step = epoch * steps_per_epoch + step + 1
            lr = float(schedule(global_step - 1))
            epoch_losses.append(loss)
            step_losses.append(loss)
            progress.step(epoch, step, global_step, loss, lr)
            board.scalars("train", {"loss": loss, **heads, "learning_rate": lr}, global_step)
            if stop_request.signal is not None:
                path = save(backup, backup_write)
                log(f"SIGTERM: backup saved at global step {global_step} ({path}); exiting to be resumed")
                raise Preempted(f"stopped by SIGTERM at global step {global_step}; the backup {path} resumes it")
            if global_step % cfg.checkpoint_every == 0 and step + 1 < steps_per_epoch:
                save(backup, backup_write)
                if cfg.verbose:
                    log(f"checkpoint saved at global step {global_step}")
        if stop and not epoch_losses:
            save(backup, backup_write)      # the plan, cut to the epochs done, for a resumed run
            break
        row = {"epoch": epoch + 1, "loss": float(np.mean(epoch_losses)) if epoch_losses else float("nan"),
               **{k: float(np.mean([h[k] for h in epoch_heads])) for k in (epoch_heads[0] if epoch_heads else {})},
               "lr": float(schedule((epoch + 1) * steps_per_epoch - 1))}
        validated = time.monotonic()
        if has_val:
            row.update(validate(strategy, eval_step, info, cfg, loss_spec))
        validation_seconds = time.monotonic() - validated
        reserve = max(reserve, 2 * validation_seconds + EXPORT_RESERVE_S)
        value = row.get(cfg.monitor, row["loss"])   # without a val split: the training loss
        improved = value > best_var.numpy() if mode_max else value < best_var.numpy()
        epoch_var.assign(epoch + 1)
        step_var.assign(0)
        if improved:
            best_var.assign(value)
            best_epoch_var.assign(epoch + 1)
            wait_var.assign(0)
            save(best, best_write)
        else:
            wait_var.assign_add(1)
        row["seconds"] = round(time.time() - started, 3)
        history.append(row)
        progress.end_epoch(row)
        board.scalars("val", {k: v for k, v in row.items() if k.startswith("val_")}, (epoch + 1) * steps_per_epoch)
        if summary_tiles is not None:
            probs = ToProbabilities()(primary_output(model(summary_tiles[0], training=False))).numpy()
            board.images("input | truth | prediction",
                         triptych(summary_tiles[0], crop_to(summary_tiles[1], out_size), probs),
                         (epoch + 1) * steps_per_epoch)
        save(backup, backup_write)
        board.flush()
        if cfg.patience and int(wait_var.numpy()) >= cfg.patience:
            log(f"Early stopping after epoch {epoch + 1}: {cfg.monitor} did not improve for {cfg.patience} epochs")
            break
        epoch_ends.append(clock.seconds())
        if clock.on and len(epoch_ends) >= 2 and not stop:  # refit the schedule to the time left, every epoch
            # the mean cycle after the first epoch (which traces), end to end: the iterator's set-up, validation
            # and every save count, or the plan runs long and the cosine does not reach its end
            epoch_seconds = (epoch_ends[-1] - epoch_ends[0]) / (len(epoch_ends) - 1)
            planned = plan_epochs(clock.budget_s, clock.seconds(), epoch_seconds, reserve, epoch + 1, cfg.epochs)
            planned = distribute.chief_value(strategy, planned)
            if planned != int(clock.planned.numpy()):
                clock.planned.assign(planned)
                schedule.set_total_steps(planned * steps_per_epoch)
                save(backup, backup_write)
                log(f"Time budget {clock.budget_s:.0f} s, {clock.seconds():.0f} s spent: an epoch takes "
                    f"{epoch_seconds:.2f} s, so {planned} of {cfg.epochs} epochs (the schedule ends with the last)")

    if chief and history.rows:
        with tf.io.gfile.GFile(f"{cfg.model_dir}/learning_curves.png", "wb") as handle:
            handle.write(learning_curves_png({"training": history.rows}, cfg.monitor))
    checksum = float(sum(np.abs(w).sum() for w in model.get_weights()))
    log(f"Finished at epoch {int(epoch_var.numpy())}; best {cfg.monitor} {float(best_var.numpy()):.4f} at epoch "
        f"{int(best_epoch_var.numpy())}" + (f"; weights checksum {checksum:.6f} (sum of |w|: the same on every worker "
                                            "and after a resume)" if cfg.verbose >= 2 else ""))   # --progress 2 only
    if export_model and int(best_epoch_var.numpy()) < 1:   # every worker stops here, none waits for the chief
        raise NothingToExport(
            f"nothing to export: {cfg.monitor if has_val else 'the training loss'} was never finite in "
            f"{int(epoch_var.numpy())} epochs (see {cfg.model_dir}/history.csv), so there is no best checkpoint in "
            f"{cfg.checkpoint_dir}; the last weights are in the backup {cfg.backup_dir}. Lower the learning "
            f"rate or set --clipnorm, and delete the backup to train again")
    card = None
    if chief and export_model:
        card = current_export(cfg, int(best_epoch_var.numpy())) if not step_losses else None
        if card is None:
            crashpoint("train:before-export")
            verify_dataset(info, cfg.verify_digests)  # what was trained on is still what the card will name
            card = export.export(cfg, info, tf.train.latest_checkpoint(cfg.checkpoint_dir), loss_spec,
                                 {"best_epoch": float(best_epoch_var.numpy())})
            log(f"Exported {cfg.model_dir}: " + " ".join(f"{k} {v:.4f}" for k, v in card.metrics.items()))
        else:
            log(f"{cfg.model_dir} already holds the export of this run's best epoch")
    if distribute.task(strategy)[0] is not None:
        distribute.barrier(strategy)  # workers leave together, after the chief has exported
    computing = [layer.compute_dtype for layer in model.layers if layer.weights]
    return TrainResult(history.rows, step_losses, resumed_at, int(best_epoch_var.numpy()), float(best_var.numpy()),
                       card, checksum, computing[0] if computing else "float32", cfg.xla, clock.seconds(),
                       int(clock.planned.numpy()), trained_until)
