"""Real kills at named moments: run a job in a subprocess until it reaches a crashpoint
(``schemas.crashpoints``), then SIGKILL it there."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from schemas.crashpoints import PAUSE_ENV, SIGNAL_ENV

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The job runs as the tests do: anonymous GCS credentials at once (the emulator needs none).
LAUNCH = ("import sys; from apache_beam.internal.gcp import auth; "
          "auth._Credentials._credentials_init, auth._Credentials._credentials = True, None; "
          "from {module} import run; sys.exit(run(sys.argv[1:]))")


def kill_at(point: str, module: str, argv: list[str], tmp_path, timeout: float = 120) -> None:
    """Runs ``module.run(argv)`` in a subprocess until it reaches ``point``, then SIGKILLs it."""
    kill(pause_at(point, module, argv, tmp_path, timeout))


def kill(process: subprocess.Popen) -> None:
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    assert process.returncode == -signal.SIGKILL


def pause_at(point: str, module: str, argv: list[str], tmp_path, timeout: float = 120) -> subprocess.Popen:
    """Runs ``module.run(argv)`` in a subprocess until it waits at ``point``; returns it there."""
    signal_file = tmp_path / f"paused-{point.replace(':', '-')}-{time.monotonic_ns()}"
    env = {**os.environ, PAUSE_ENV: point, SIGNAL_ENV: str(signal_file), "PYTHONPATH": ROOT,
           "TF_CPP_MIN_LOG_LEVEL": "2"}
    process = subprocess.Popen([sys.executable, "-c", LAUNCH.format(module=module), *argv], env=env, cwd=ROOT,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + timeout
    while not signal_file.exists():
        if process.poll() is not None:
            raise AssertionError(f"the job ended ({process.returncode}) before {point}: "
                                 f"{process.stderr.read().decode()[-2000:]}")
        if time.monotonic() > deadline:
            process.kill()
            raise AssertionError(f"the job did not reach {point} in {timeout} s")
        time.sleep(0.1)
    return process
