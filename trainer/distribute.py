"""Which tf.distribute strategy to use, who the chief is, and where a worker may write.

``TF_CONFIG`` naming more than one worker -> MultiWorkerMirroredStrategy; more than one
GPU -> MirroredStrategy; otherwise the default strategy (one device). Only the chief
writes outputs; other workers write checkpoints (which are collective operations) into
temporary directories that are removed right away — the standard multi-worker pattern.
"""
from __future__ import annotations

import json
import os

import tensorflow as tf


def cluster_size(env=None) -> int:
    env = os.environ if env is None else env
    config = json.loads(env.get("TF_CONFIG") or "{}")
    cluster = config.get("cluster", {})
    return sum(len(cluster.get(kind, [])) for kind in ("chief", "worker"))


def choose_strategy(env=None) -> tf.distribute.Strategy:
    if cluster_size(env) > 1:
        return tf.distribute.MultiWorkerMirroredStrategy()
    if len(tf.config.list_logical_devices("GPU")) > 1:
        return tf.distribute.MirroredStrategy()
    return tf.distribute.get_strategy()


def task(strategy: tf.distribute.Strategy) -> tuple[str | None, int]:
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.task_type:
        return None, 0
    return resolver.task_type, int(resolver.task_id or 0)


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    task_type, task_id = task(strategy)
    if task_type is None:
        return True
    has_chief = "chief" in strategy.cluster_resolver.cluster_spec().as_dict()
    return task_type == "chief" or (not has_chief and task_type == "worker" and task_id == 0)


def write_dir(path: str, strategy: tf.distribute.Strategy) -> str:
    """``path`` for the chief, a per-worker temporary directory beside it for the others."""
    if is_chief(strategy):
        return path
    task_type, task_id = task(strategy)
    return f"{path}/.tmp-{task_type}-{task_id}"


def remove_temp(path: str, strategy: tf.distribute.Strategy) -> None:
    if not is_chief(strategy) and tf.io.gfile.exists(path):
        tf.io.gfile.rmtree(path)


def barrier(strategy: tf.distribute.Strategy) -> None:
    """Blocks until every replica of every worker gets here (an all-reduce of a constant)."""
    @tf.function
    def all_reduce():
        return strategy.reduce(tf.distribute.ReduceOp.SUM, strategy.run(lambda: tf.constant(1.0)), axis=None)

    all_reduce().numpy()


def mixed_precision_policy(setting: str) -> str:
    """"auto" -> mixed_float16 when a GPU is present; "on" / "off" force it."""
    if setting == "on" or (setting == "auto" and tf.config.list_logical_devices("GPU")):
        return "mixed_float16"
    return "float32"
