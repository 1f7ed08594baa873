"""Live progress of a running Beam job, for people watching a local run.

One mechanism for every job: the launcher runs a :class:`ProgressPrinter` thread that
asks the job for its :class:`Status` every few seconds (and once more when it stops) and
shows it as a tqdm bar on a terminal, or as plain lines in a log. A job counts what its workers left on storage: preprocessing workers write
small JSON counter files (:class:`CounterFile`, throttled; :func:`counter_report` sums
them), prediction counts finished row files. This works on every runner whose workers
can write to the job's directory; Beam's own metrics are only readable after a
DirectRunner job has finished.
"""
from __future__ import annotations

import dataclasses
import json
import os
import sys
import threading
import time
from typing import Callable

import tqdm
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


@dataclasses.dataclass(frozen=True)
class Status:
    """What a job reports: ``done`` of ``total`` (None: unknown) ``unit``, and the details."""

    done: int
    total: int | None
    unit: str
    details: str = ""


def counter_report(pattern: str, describe: Callable[[dict], Status]) -> Callable[[], Status | None]:
    """A ``report`` that sums the counter files matching ``pattern`` (None while there are none)."""
    def report() -> Status | None:
        totals = read_counters(pattern)
        return describe(totals) if totals else None
    return report


def plain_line(job: str, status: Status, elapsed: float) -> str:
    """``job: 12/40 images (3.1/s, 9 s left), details, 4 s`` for logs (no terminal)."""
    rate = status.done / elapsed if elapsed > 0 else 0.0
    left = ""
    if status.total is not None and rate > 0:
        left = f", {max(status.total - status.done, 0) / rate:.0f} s left"
    of = f"/{status.total}" if status.total is not None else ""
    details = f", {status.details}" if status.details else ""
    return f"{job}: {status.done}{of} {status.unit} ({rate:.1f}/s{left}){details}, {elapsed:.0f} s"


def is_terminal(stream) -> bool:
    """Whether ``stream`` is a terminal a bar can redraw (a pseudo-terminal counts; TERM=dumb does not)."""
    try:
        return bool(stream.isatty()) and os.environ.get("TERM") != "dumb"
    except (AttributeError, ValueError):     # no isatty, or a closed stream
        return False


def fixed_shape(stream) -> tuple[int, int] | None:
    """None when a bar can follow the terminal's size, else the (columns, rows) to draw it in:
    a terminal that reports no size (a pseudo-terminal nobody sized, as ``script``, ``docker
    run -t`` or CI runners give) gets 80 x 24, since tqdm draws nothing at 0 x 0."""
    try:
        size = os.get_terminal_size(stream.fileno())
    except (AttributeError, OSError, ValueError):     # not a real file (tests' stand-ins): tqdm asks itself
        return None
    return None if size.columns > 0 and size.lines > 0 else UNSIZED_TERMINAL


UNSIZED_TERMINAL = (80, 24)


class ProgressPrinter(threading.Thread):
    """Shows ``report()`` every ``interval`` seconds until stopped (and once more at :meth:`stop`
    when ``final``): a tqdm bar with total, rate and time left on a terminal, plain lines
    otherwise (a report of None shows nothing)."""

    def __init__(self, job: str, report: Callable[[], Status | None], interval: float = 5.0, stream=None,
                 final: bool = False):
        super().__init__(daemon=True)
        self.job, self.report, self.interval, self.final = job, report, interval, final
        self.stream = stream or sys.stderr
        self.started, self._stopping = time.monotonic(), threading.Event()
        self.bar = None
        self.interactive = is_terminal(self.stream)
        if self.interactive:
            self.interval = min(interval, 1.0)

    def _show(self) -> None:
        status = self.report()
        if status is None:
            return
        if not self.interactive:
            print(plain_line(self.job, status, time.monotonic() - self.started), file=self.stream, flush=True)
            return
        if self.bar is None:
            shape = fixed_shape(self.stream)
            columns, rows = shape or (None, None)
            self.bar = tqdm.tqdm(total=status.total, unit=status.unit.rstrip("s") or "it", desc=self.job,
                                 file=self.stream, dynamic_ncols=shape is None, ncols=columns, nrows=rows)
        self.bar.total = status.total
        self.bar.update(status.done - self.bar.n)
        self.bar.set_postfix_str(status.details, refresh=True)

    def run(self) -> None:
        while not self._stopping.wait(self.interval):
            self._show()

    def stop(self) -> None:
        self._stopping.set()
        if self.is_alive():
            self.join()
        if self.final:
            self._show()
        if self.bar is not None:
            self.bar.close()
