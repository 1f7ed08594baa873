"""Live progress of a running Beam job, for people watching a local run.

One mechanism for every job: the launcher runs a :class:`ProgressPrinter` thread that
asks the job for a line (``report(elapsed)``) every few seconds, and once more when the
job stops. A job counts what its workers left on storage: preprocessing workers write
small JSON counter files (:class:`CounterFile`, throttled; :func:`counter_report` sums
them), prediction counts finished row files. This works on every runner whose workers
can write to the job's directory; Beam's own metrics are only readable after a
DirectRunner job has finished.
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


def counter_report(pattern: str, describe: Callable[[dict, float], str]) -> Callable[[float], str | None]:
    """A ``report`` that sums the counter files matching ``pattern`` (None while there are none)."""
    def report(elapsed: float) -> str | None:
        totals = read_counters(pattern)
        return describe(totals, elapsed) if totals else None
    return report


class ProgressPrinter(threading.Thread):
    """Prints ``report(elapsed seconds)`` every ``interval`` seconds until stopped, and once
    more at :meth:`stop` when ``final`` (a line that is None is not printed)."""

    def __init__(self, report: Callable[[float], str | None], interval: float = 5.0, stream=None,
                 final: bool = False):
        super().__init__(daemon=True)
        self.report, self.interval, self.final = report, interval, final
        self.stream = stream or sys.stderr
        self.started, self._stopping = time.monotonic(), threading.Event()

    def _print(self) -> None:
        line = self.report(time.monotonic() - self.started)
        if line:
            print(line, file=self.stream, flush=True)

    def run(self) -> None:
        while not self._stopping.wait(self.interval):
            self._print()

    def stop(self) -> None:
        self._stopping.set()
        if self.is_alive():
            self.join()
        if self.final:
            self._print()
