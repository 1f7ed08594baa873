"""``TF_CONFIG`` for multi-worker training, derived from a Kubernetes Indexed Job's environment.

The multi-node training Job (``k8s/base/train-multi.yaml``) is an Indexed Job whose pods
share a headless Service, so pod *i* is reachable as ``<job>-<i>.<service>``. Each pod
knows its own index (``JOB_COMPLETION_INDEX``, set by Kubernetes) and the manifest gives
the rest in plain environment variables::

    TESSERA_WORKER_REPLICAS   number of workers (the Job's completions)
    TESSERA_WORKER_SERVICE    the headless Service (the pods' subdomain)
    TESSERA_WORKER_PORT       the gRPC port every worker listens on (default 2222)
    TESSERA_JOB_NAME          the Job's name (downward API, label batch.kubernetes.io/job-name)
    TESSERA_NAMESPACE         the pod's namespace (downward API; optional)

From these every worker builds the same cluster spec and its own task, which is what
``tf.distribute.MultiWorkerMirroredStrategy`` reads from ``TF_CONFIG``. The trainer calls
``export_tf_config()`` before it chooses a strategy, and exits with ``PEER_LOST_EXIT_CODE``
when ``is_peer_lost(error)``, so the Job restarts the workers instead of failing.
Only ``is_peer_lost`` imports TensorFlow (when called).
"""
from __future__ import annotations

import json
import os
from collections.abc import Mapping

INDEX_VAR = "JOB_COMPLETION_INDEX"
REPLICAS_VAR = "TESSERA_WORKER_REPLICAS"
SERVICE_VAR = "TESSERA_WORKER_SERVICE"
PORT_VAR = "TESSERA_WORKER_PORT"
JOB_NAME_VAR = "TESSERA_JOB_NAME"
NAMESPACE_VAR = "TESSERA_NAMESPACE"
DEFAULT_PORT = 2222

# A worker whose peer disappeared (preempted, evicted) is not buggy: it exits with this
# code, which the Job's podFailurePolicy ignores (the pod is recreated and the new
# workers resume together from the backup), while exit codes 1 and 2 fail the Job.
PEER_LOST_EXIT_CODE = 75
# A worker told to stop (SIGTERM: node drain, spot reclaim, Job deletion) saves its backup
# at once and exits with the same retriable code.
PREEMPTED_EXIT_CODE = PEER_LOST_EXIT_CODE


def worker_address(job_name: str, index: int, service: str, port: int, namespace: str | None = None) -> str:
    """DNS name and port of pod ``index`` of an Indexed Job whose subdomain is ``service``."""
    host = f"{job_name}-{index}.{service}"
    if namespace:
        host += f".{namespace}.svc"
    return f"{host}:{port}"


def tf_config_from_index(
    index: int,
    replicas: int,
    service: str,
    port: int = DEFAULT_PORT,
    namespace: str | None = None,
    job_name: str = "tessera-train-multi",
) -> dict:
    """The ``TF_CONFIG`` dict of worker ``index`` of ``replicas`` (worker 0 acts as chief)."""
    if replicas < 1:
        raise ValueError(f"replicas must be >= 1, got {replicas}")
    if not 0 <= index < replicas:
        raise ValueError(f"worker index {index} is outside 0..{replicas - 1}")
    if not 0 < port < 65536:
        raise ValueError(f"port must be in 1..65535, got {port}")
    if not service or not job_name:
        raise ValueError("service and job_name must be non-empty")
    workers = [worker_address(job_name, i, service, port, namespace) for i in range(replicas)]
    return {"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}}


def _int_var(environ: Mapping[str, str], name: str, default: int | None = None) -> int:
    raw = environ.get(name)
    if raw is None or raw == "":
        if default is None:
            raise ValueError(f"{name} must be set for multi-worker training")
        return default
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"{name} must be an integer, got {raw!r}") from None


def tf_config_from_env(environ: Mapping[str, str] | None = None) -> dict | None:
    """``TF_CONFIG`` derived from the Indexed-Job variables, or None outside such a pod.

    None when ``TESSERA_WORKER_REPLICAS`` is unset (a single-node job or a laptop). When
    it is set, every other variable must be valid: a half-configured worker raises
    ValueError rather than silently training alone.
    """
    environ = os.environ if environ is None else environ
    if not environ.get(REPLICAS_VAR):
        return None
    replicas = _int_var(environ, REPLICAS_VAR)
    index = _int_var(environ, INDEX_VAR)
    port = _int_var(environ, PORT_VAR, DEFAULT_PORT)
    service = environ.get(SERVICE_VAR, "")
    job_name = environ.get(JOB_NAME_VAR, "")
    if not service or not job_name:
        raise ValueError(f"{SERVICE_VAR} and {JOB_NAME_VAR} must be set when {REPLICAS_VAR} is")
    return tf_config_from_index(index, replicas, service, port, environ.get(NAMESPACE_VAR) or None, job_name)


def export_tf_config(environ: dict | None = None) -> dict | None:
    """Set ``TF_CONFIG`` from the Indexed-Job variables unless it is already set.

    Returns the effective TF_CONFIG (the existing one parsed, the derived one, or None when
    neither applies). Call it before creating the distribution strategy.
    """
    environ = os.environ if environ is None else environ
    existing = environ.get("TF_CONFIG")
    if existing:
        return json.loads(existing)
    derived = tf_config_from_env(environ)
    if derived is not None:
        environ["TF_CONFIG"] = json.dumps(derived)
    return derived


def is_peer_lost(error: BaseException) -> bool:
    """True for the errors TensorFlow raises in a worker whose peer went away.

    Measured with two workers on loopback: killing either one makes the collective ops of
    the other fail with UnavailableError (peer gone) or AbortedError (peer came back as a
    new incarnation) within seconds. Imports TensorFlow only when called.
    """
    import tensorflow as tf

    return isinstance(error, (tf.errors.UnavailableError, tf.errors.AbortedError, tf.errors.DeadlineExceededError))
