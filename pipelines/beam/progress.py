"""Live progress of a running Beam job, for people watching a local run.

Workers write small JSON counter files (:class:`CounterFile`, throttled); the launcher
runs a :class:`ProgressPrinter` thread that sums them and prints a line every few
seconds. Works on every runner whose workers can write to the job's work directory;
Beam's own metrics are only readable after a DirectRunner job has finished.
"""
from __future__ import annotations

import json
import sys
import threading
import time
from typing import Callable

from apache_beam.io.filesystems import FileSystems


class CounterFile:
    """Counters of one unit of work (e.g. a shard), flushed at most every ``interval`` s."""

    def __init__(self, path: str, interval: float = 2.0):
        self.path, self.interval, self.counts, self._flushed = path, interval, {}, time.monotonic()

    def add(self, **increments: int) -> None:
        for name, n in increments.items():
            self.counts[name] = self.counts.get(name, 0) + n
        if time.monotonic() - self._flushed > self.interval:
            self.flush()

    def flush(self) -> None:
        with FileSystems.create(self.path) as handle:
            handle.write(json.dumps(self.counts).encode())
        self._flushed = time.monotonic()


def read_counters(pattern: str) -> dict[str, int]:
    totals: dict[str, int] = {}
    for m in FileSystems.match([pattern])[0].metadata_list:
        try:
            with FileSystems.open(m.path) as handle:
                counts = json.loads(handle.read())
        except (OSError, ValueError):  # a file being rewritten right now: read it next time
            continue
        for name, n in counts.items():
            totals[name] = totals.get(name, 0) + n
    return totals


class ProgressPrinter(threading.Thread):
    """Prints ``describe(totals, elapsed)`` every ``interval`` seconds until stopped."""

    def __init__(self, pattern: str, describe: Callable[[dict, float], str], interval: float = 5.0, stream=None):
        super().__init__(daemon=True)
        self.pattern, self.describe, self.interval = pattern, describe, interval
        self.stream = stream or sys.stderr
        self.started, self._stopping = time.monotonic(), threading.Event()

    def run(self) -> None:
        while not self._stopping.wait(self.interval):
            totals = read_counters(self.pattern)
            if totals:
                print(self.describe(totals, time.monotonic() - self.started), file=self.stream, flush=True)

    def stop(self) -> None:
        self._stopping.set()
        if self.is_alive():
            self.join()
