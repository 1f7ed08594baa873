"""Peak resident memory of a process tree, read from /proc while it runs (Linux).

``getrusage``'s ``ru_maxrss`` is not a process's own peak: Linux carries the high-water mark
of the pre-exec image across ``exec``, so a job started from a big parent reports the
parent's peak. ``VmHWM`` in ``/proc/<pid>/status`` belongs to the running image only, so
polling it for a process and its descendants gives each one's own peak.
"""
from __future__ import annotations

import os
import threading


def _status(pid: int) -> dict[str, str]:
    try:
        with open(f"/proc/{pid}/status") as handle:
            return dict(line.rstrip("\n").split(":\t", 1) for line in handle if ":\t" in line)
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return {}


def descendants(root: int) -> set[int]:
    """Pids of every living process below ``root``."""
    parents = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            ppid = _status(int(entry)).get("PPid")
            if ppid:
                parents[int(entry)] = int(ppid)
    found, frontier = set(), {root}
    while frontier:
        frontier = {pid for pid, ppid in parents.items() if ppid in frontier} - found
        found |= frontier
    return found


def peak_mib(pid: int) -> float | None:
    value = _status(pid).get("VmHWM")
    return None if value is None else int(value.split()[0]) / 1024


class Poller:
    """Calls ``poll`` every ``interval`` s in a thread, from entering the ``with`` block until
    leaving it."""

    def __init__(self, interval: float):
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while True:
            self.poll()
            if self._stop.wait(self.interval):
                return

    def poll(self) -> None:
        raise NotImplementedError


class PeakWatcher(Poller):
    """Polls the peaks of ``root`` and its descendants every ``interval`` s until stopped:
    ``peaks`` maps each pid seen to the last (largest) peak read, in MiB."""

    def __init__(self, root: int, interval: float = 0.05):
        super().__init__(interval)
        self.root = root
        self.peaks: dict[int, float] = {}

    def poll(self) -> None:
        for pid in {self.root} | descendants(self.root):
            peak = peak_mib(pid)
            if peak is not None:
                self.peaks[pid] = max(peak, self.peaks.get(pid, 0.0))

    def root_peak(self) -> float:
        return self.peaks.get(self.root, 0.0)

    def children_peak(self) -> float:
        """The largest peak of any descendant (a worker process)."""
        return max((p for pid, p in self.peaks.items() if pid != self.root), default=0.0)
