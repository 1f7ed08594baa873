"""TF_CONFIG from the Indexed Job's environment (trainer/cluster.py), and two real workers.

The two workers get exactly the environment the multi-node manifest gives pod 0 and pod 1
(completion index, replica count, Service, port, job name, namespace). Only DNS differs:
the pods' names ``<job>-<i>.<service>.<namespace>.svc`` are mapped to 127.0.0.1 with a
distinct port each. They build MultiWorkerMirroredStrategy, train a tiny Keras model with
a custom loop together and must end with identical weights. Then one worker is killed,
as a preempted node would be, and the other must exit with PEER_LOST_EXIT_CODE, the code
the Job's podFailurePolicy ignores.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from tests.test_k8s_render import ROOT, container_env, find, render
from trainer import cluster

STEPS = 6


def test_tf_config_names_every_worker_and_this_task():
    config = cluster.tf_config_from_index(1, 3, "svc", 2222, namespace="ns", job_name="job")
    assert config == {
        "cluster": {"worker": ["job-0.svc.ns.svc:2222", "job-1.svc.ns.svc:2222", "job-2.svc.ns.svc:2222"]},
        "task": {"type": "worker", "index": 1},
    }
    assert cluster.tf_config_from_index(0, 1, "svc", 7, job_name="j")["cluster"]["worker"] == ["j-0.svc:7"]


@pytest.mark.parametrize("index, replicas, port", [(2, 2, 2222), (-1, 2, 2222), (0, 0, 2222), (0, 2, 0)])
def test_tf_config_rejects_impossible_workers(index, replicas, port):
    with pytest.raises(ValueError):
        cluster.tf_config_from_index(index, replicas, "svc", port, job_name="job")


def test_tf_config_from_env_is_none_outside_a_multi_worker_pod_and_strict_inside():
    assert cluster.tf_config_from_env({"JOB_COMPLETION_INDEX": "3"}) is None
    env = {"TESSERA_WORKER_REPLICAS": "2", "JOB_COMPLETION_INDEX": "1", "TESSERA_WORKER_SERVICE": "s",
           "TESSERA_JOB_NAME": "j"}
    assert cluster.tf_config_from_env(env)["cluster"]["worker"] == ["j-0.s:2222", "j-1.s:2222"]
    for broken in ({"JOB_COMPLETION_INDEX": None}, {"TESSERA_JOB_NAME": None}, {"TESSERA_WORKER_PORT": "x"},
                   {"JOB_COMPLETION_INDEX": "2"}):
        bad = {k: v for k, v in {**env, **broken}.items() if v is not None}
        with pytest.raises(ValueError):
            cluster.tf_config_from_env(bad)


def test_export_keeps_an_explicit_tf_config_and_sets_a_derived_one():
    given = {"cluster": {"worker": ["a:1"]}, "task": {"type": "worker", "index": 0}}
    env = {"TF_CONFIG": json.dumps(given), "TESSERA_WORKER_REPLICAS": "2"}
    assert cluster.export_tf_config(env) == given and json.loads(env["TF_CONFIG"]) == given
    env = {"TESSERA_WORKER_REPLICAS": "2", "JOB_COMPLETION_INDEX": "0", "TESSERA_WORKER_SERVICE": "s",
           "TESSERA_JOB_NAME": "j"}
    derived = cluster.export_tf_config(env)
    assert json.loads(env["TF_CONFIG"]) == derived and derived["task"]["index"] == 0
    assert cluster.export_tf_config({}) is None


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def _wait_for(path, processes, timeout):
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        for p in processes:
            assert p.poll() is None, f"a worker exited early with {p.returncode}:\n{p.stdout.read()}"
        assert time.monotonic() < deadline, f"no {path} after {timeout} s"
        time.sleep(0.2)


def test_two_workers_from_the_manifest_train_together_and_survive_a_lost_peer(tmp_path):
    objects = render("local")
    job = find(objects, "Job", "tessera-train-multi")
    template = job["spec"]["template"]
    container = template["spec"]["containers"][0]
    replicas = job["spec"]["completions"]
    assert replicas == 2
    pod_envs = [container_env(objects, job, template, container, i) for i in range(replicas)]
    names = cluster.tf_config_from_env(pod_envs[0])["cluster"]["worker"]
    loopback = {name: f"127.0.0.1:{port}" for name, port in zip(names, _free_ports(replicas))}

    base_env = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"}
    base_env.update(PYTHONPATH=str(ROOT), TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="",
                    K8S_TEST_LOOPBACK=json.dumps(loopback), K8S_TEST_OUT=str(tmp_path))
    workers = [subprocess.Popen([sys.executable, "-m", "tests.test_k8s_cluster"], cwd=ROOT,
                                env={**base_env, **env}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True)
               for env in pod_envs]
    try:
        for i in range(replicas):
            _wait_for(tmp_path / f"weights-{i}.npz", workers, timeout=120)
        weights = [np.load(tmp_path / f"weights-{i}.npz") for i in range(replicas)]
        initial = np.load(tmp_path / "initial-0.npz")
        for name in weights[0].files:
            np.testing.assert_array_equal(weights[0][name], weights[1][name])
        assert any(not np.allclose(weights[0][n], initial[n]) for n in initial.files), "nothing was trained"

        workers[1].send_signal(signal.SIGKILL)  # worker 1's node is preempted
        output, _ = workers[0].communicate(timeout=90)
        assert workers[0].returncode == cluster.PEER_LOST_EXIT_CODE, output[-3000:]
    finally:
        for w in workers:
            if w.poll() is None:
                w.kill()
                w.wait()


def _worker() -> int:
    """One pod of the multi-node Job: TF_CONFIG from the environment, a custom training loop."""
    config = cluster.tf_config_from_env()
    loopback = json.loads(os.environ["K8S_TEST_LOOPBACK"])
    config["cluster"]["worker"] = [loopback[name] for name in config["cluster"]["worker"]]
    os.environ["TF_CONFIG"] = json.dumps(config)
    index, out = config["task"]["index"], os.environ["K8S_TEST_OUT"]

    import keras
    import tensorflow as tf

    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    with strategy.scope():
        keras.utils.set_random_seed(index)  # different seeds: the strategy must sync them
        model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8, activation="relu"), keras.layers.Dense(1)])
        optimizer = keras.optimizers.SGD(0.05)
    np.savez(f"{out}/initial-{index}.npz", *[w.numpy() for w in model.weights])

    def dataset(context):
        x = tf.random.stateless_normal((64, 4), seed=(7, context.input_pipeline_id))
        y = tf.reduce_sum(x, axis=1, keepdims=True)
        return tf.data.Dataset.from_tensor_slices((x, y)).repeat().batch(8)

    batches = iter(strategy.distribute_datasets_from_function(dataset))

    @tf.function
    def step(iterator):
        def replica_step(x, y):
            with tf.GradientTape() as tape:
                loss = tf.reduce_mean((model(x, training=True) - y) ** 2) / strategy.num_replicas_in_sync
            optimizer.apply_gradients(zip(tape.gradient(loss, model.trainable_variables), model.trainable_variables))
            return loss

        return strategy.reduce(tf.distribute.ReduceOp.SUM, strategy.run(replica_step, args=next(iterator)), axis=None)

    try:
        for _ in range(STEPS):
            step(batches)
        np.savez(f"{out}/weights-{index}.tmp.npz", *[w.numpy() for w in model.weights])
        os.replace(f"{out}/weights-{index}.tmp.npz", f"{out}/weights-{index}.npz")
        while True:  # keep training until a peer disappears
            step(batches)
            time.sleep(0.1)
    except Exception as error:
        if cluster.is_peer_lost(error):
            print(f"worker {index}: lost a peer: {type(error).__name__}", flush=True)
            return cluster.PEER_LOST_EXIT_CODE
        raise


if __name__ == "__main__":
    sys.exit(_worker())
