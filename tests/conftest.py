"""Shared fixtures: a real GCS emulator, quiet TensorFlow, small synthetic inputs."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

EMULATOR_BUCKET = "tessera-test"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def gcs_emulator():
    """A real GCS emulator (gcp-storage-emulator) on loopback; yields ``gs://<bucket>``.

    Beam's FileSystems (google-cloud-storage underneath) talks to it through
    STORAGE_EMULATOR_HOST; TensorFlow's own gs:// cannot (fixed endpoints).
    """
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "gcp_storage_emulator", "start", "--port", str(port), "--in-memory",
         "--default-bucket", EMULATOR_BUCKET],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                raise RuntimeError("the GCS emulator did not start")
            time.sleep(0.2)
    previous = os.environ.get("STORAGE_EMULATOR_HOST")
    os.environ["STORAGE_EMULATOR_HOST"] = f"http://127.0.0.1:{port}"
    # Beam otherwise spends ~20 s retrying a metadata-server credential lookup before it
    # falls back to anonymous access; the emulator needs no credentials (private attributes).
    from apache_beam.internal.gcp import auth

    auth._Credentials._credentials_init, auth._Credentials._credentials = True, None
    try:
        yield f"gs://{EMULATOR_BUCKET}"
    finally:
        if previous is None:
            os.environ.pop("STORAGE_EMULATOR_HOST", None)
        else:
            os.environ["STORAGE_EMULATOR_HOST"] = previous
        process.terminate()
        process.wait(timeout=10)


@pytest.fixture
def gcs_prefix(gcs_emulator):
    """A fresh ``gs://bucket/<random>`` prefix per test."""
    return f"{gcs_emulator}/{uuid.uuid4().hex[:10]}"


def upload_tree(local_root, gs_prefix: str) -> None:
    """Copies a local folder to ``gs_prefix`` through Beam's FileSystems."""
    from apache_beam.io.filesystems import FileSystems

    for dirpath, _, files in os.walk(local_root):
        for name in files:
            path = os.path.join(dirpath, name)
            rel = os.path.relpath(path, local_root).replace(os.sep, "/")
            with open(path, "rb") as src, FileSystems.create(f"{gs_prefix}/{rel}") as dst:
                dst.write(src.read())
