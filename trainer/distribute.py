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


def chief_value(strategy: tf.distribute.Strategy, value: int) -> int:
    """The chief's ``value`` on every worker (an all-reduce sum: the chief's replicas share
    its value, every other replica adds 0), so a decision taken from a clock is everyone's."""
    if task(strategy)[0] is None:
        return value
    local = len(strategy.extended.worker_devices)
    share = tf.constant(float(value) / local if is_chief(strategy) else 0.0)

    @tf.function
    def broadcast():
        return strategy.reduce(tf.distribute.ReduceOp.SUM, strategy.run(lambda: tf.identity(share)), axis=None)

    return int(round(float(broadcast().numpy())))


def barrier(strategy: tf.distribute.Strategy) -> None:
    """Blocks until every replica of every worker gets here (an all-reduce of a constant)."""
    @tf.function
    def all_reduce():
        return strategy.reduce(tf.distribute.ReduceOp.SUM, strategy.run(lambda: tf.constant(1.0)), axis=None)

    all_reduce().numpy()


NATIVE_BF16_FLAGS = ("amx_bf16", "avx512_bf16")   # /proc/cpuinfo flags of CPUs with bf16 arithmetic


def cpu_has_native_bf16(cpuinfo: str | None = None) -> bool:
    """Whether this CPU computes bfloat16 natively (AMX-BF16 or AVX512-BF16), from the flags
    of /proc/cpuinfo (``cpuinfo``: its text, for tests); False where it cannot be read."""
    if cpuinfo is None:
        try:
            with open("/proc/cpuinfo") as handle:
                cpuinfo = handle.read()
        except OSError:
            return False
    flags = {f for line in cpuinfo.splitlines() if line.startswith("flags") for f in line.split(":", 1)[1].split()}
    return any(flag in flags for flag in NATIVE_BF16_FLAGS)


def mixed_precision_policy(setting: str, gpu: bool | None = None, native_bf16: bool | None = None) -> str:
    """The Keras precision policy: "auto" -> mixed_float16 with a GPU, mixed_bfloat16 on a CPU
    with native bf16, float32 otherwise; "on" / "float16" -> mixed_float16, "bfloat16" ->
    mixed_bfloat16, "off" -> float32."""
    if setting == "auto":
        gpu = bool(tf.config.list_logical_devices("GPU")) if gpu is None else gpu
        if gpu:
            return "mixed_float16"
        native_bf16 = cpu_has_native_bf16() if native_bf16 is None else native_bf16
        return "mixed_bfloat16" if native_bf16 else "float32"
    return {"on": "mixed_float16", "float16": "mixed_float16", "bfloat16": "mixed_bfloat16", "off": "float32"}[setting]
