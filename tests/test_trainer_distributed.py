"""The one training loop under MirroredStrategy (2 logical CPU devices) and
MultiWorkerMirroredStrategy (2 real worker processes on loopback)."""
import json
import os
import re
import socket
import subprocess
import sys
import textwrap

import pytest

from tessera import synthetic_dataset

ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")

# One process, two logical CPU devices: the default strategy (one device, global batch 8)
# and MirroredStrategy over both devices (4 per replica) must take the same steps. Dynamic
# augmentation is off: its draws are seeded per replica batch, so with it on the two runs
# would see differently augmented copies of the same examples.
MIRRORED = textwrap.dedent("""
    import json, sys
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    from trainer.config import from_dict, resolve_paths
    from trainer.loop import train
    data, out = sys.argv[1:]
    def config(name, batch):
        return resolve_paths(from_dict({
            "data": data, "model_dir": f"{out}/{name}", "epochs": 1, "steps_per_epoch": 4, "batch_size": batch,
            "verbose": 0, "image_summaries": 0, "model": {"depth": 2, "filters": 8}, "augment": {"enabled": False},
            "optim": {"clipnorm": 0.5}, "mixed_precision": "off"}), {})   # float32: equal up to float rounding
    one = train(config("one", 8), export_model=False)
    two = train(config("two", 4), tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]), export_model=False)
    print(json.dumps({"one": one.step_losses, "two": two.step_losses, "val_one": one.history[-1]["val_loss"],
                      "val_two": two.history[-1]["val_loss"], "w_one": one.weights_checksum,
                      "w_two": two.weights_checksum}))
""")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    path = tmp_path_factory.mktemp("data")
    synthetic_dataset.segmentation_dataset(str(path), n_train=64, n_val=16, n_test=2)
    return str(path)


def test_mirrored_two_devices_take_the_same_steps_as_one(dataset, tmp_path):
    run = subprocess.run([sys.executable, "-c", MIRRORED, dataset, str(tmp_path)], capture_output=True, text=True,
                         env=ENV, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert len(result["one"]) == len(result["two"]) == 4
    # synchronised batch norm, global loss normalisation and global-norm clipping make
    # the two the same computation up to float rounding
    assert result["two"] == pytest.approx(result["one"], rel=1e-4)
    assert result["val_two"] == pytest.approx(result["val_one"], rel=1e-4)
    assert result["w_two"] == pytest.approx(result["w_one"], rel=1e-5)
    assert result["one"][-1] < result["one"][0]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_multi_worker_trains_together_and_only_the_chief_exports(dataset, tmp_path):
    model_dir = tmp_path / "model"
    workers = [f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"]
    command = [sys.executable, "-m", "trainer.task", "--data", dataset, "--model-dir", str(model_dir), "--epochs", "2",
               "--steps-per-epoch", "3", "--batch-size", "4", "--depth", "2", "--filters", "4", "--verbose", "2",
               "--checkpoint-every", "2", "--image-summaries", "1"]
    procs = []
    for index in range(2):
        tf_config = {"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}}
        procs.append(subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                      env=dict(ENV, TF_CONFIG=json.dumps(tf_config))))
    try:
        logs = [p.communicate(timeout=300)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert [p.returncode for p in procs] == [0, 0], "\n".join(log[-2000:] for log in logs)
    checksums = [re.search(r"weights checksum ([\d.]+)", log).group(1) for log in logs]
    assert checksums[0] == checksums[1]                       # the workers ended with identical weights
    assert all("Finished at epoch 2" in log for log in logs)
    assert logs[0].count("loss ") >= 6 and "step 1 " not in logs[1]   # only the chief reports progress
    assert "Exported" in logs[0] and "Exported" not in logs[1]
    assert (model_dir / "current" / "model_card.json").exists() and (model_dir / "current" / "saved_model").is_dir()
    leftovers = [p for p in model_dir.rglob("*") if ".tmp-worker" in str(p)]
    assert leftovers == []                                    # the other worker's writes were temporary
    history = (model_dir / "history.csv").read_text().strip().splitlines()
    assert len(history) == 1 + 2
