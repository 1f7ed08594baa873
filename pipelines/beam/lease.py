"""A lease on a shared output directory, for local disks and object stores alike.

Each run writes its own *claim* (``<folder>/<run id>.claim``, written once, never
rewritten) and keeps a *heartbeat* (``<run id>.alive``) fresh while it works. Claims are
ordered by the time the storage itself stamped on them (listing metadata), so no two
runs' clocks are compared and no conditional write is needed: every run that lists the
folder sees the same order. A claim is live while its newest stamp (heartbeat or claim)
is younger than its ``ttl`` at the time of the newest stamp in the folder. A run
proceeds when no live claim ordered before its own ``conflicts`` with it; otherwise it
withdraws its claim, waits, and tries again until ``wait_s`` is spent, then raises
:class:`LeaseBusy` naming the other run. A killed run's claim expires after its ``ttl``.
"""
from __future__ import annotations

import json
import socket
import sys
import threading
import time
import uuid
from typing import Callable

from apache_beam.io.filesystems import FileSystems

from pipelines.beam.files import delete_if_present, read_bytes, write_atomically

CLAIM, ALIVE = ".claim", ".alive"


class LeaseBusy(RuntimeError):
    """Another live run holds a conflicting claim on the directory."""


def _stamps(folder: str) -> dict[str, dict[str, float]]:
    """{run id: {".claim": stamp, ".alive": stamp}} as the storage lists them."""
    found: dict[str, dict[str, float]] = {}
    for m in FileSystems.match([f"{folder}/*"])[0].metadata_list:
        name = m.path.rsplit("/", 1)[-1]
        for kind in (CLAIM, ALIVE):
            if name.endswith(kind):
                found.setdefault(name[:-len(kind)], {})[kind] = m.last_updated_in_seconds or 0.0
    return found


class Lease:
    def __init__(self, folder: str, info: dict, ttl_s: float = 60.0):
        self.folder, self.ttl_s = folder.rstrip("/"), ttl_s
        self.run_id = f"{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:8]}"
        self.info = {**info, "run_id": self.run_id, "host": socket.gethostname(), "ttl_s": ttl_s}
        self._stop = threading.Event()
        self._beat: threading.Thread | None = None

    def _path(self, run_id: str, kind: str) -> str:
        return f"{self.folder}/{run_id}{kind}"

    def _claim(self) -> None:
        write_atomically(self._path(self.run_id, CLAIM), json.dumps(self.info, sort_keys=True).encode())
        self._heartbeat()

    def _heartbeat(self) -> None:
        write_atomically(self._path(self.run_id, ALIVE), str(time.time()).encode())

    def _withdraw(self) -> None:
        delete_if_present([self._path(self.run_id, ALIVE), self._path(self.run_id, CLAIM)])

    def blockers(self, conflicts: Callable[[dict, dict], bool]) -> list[dict]:
        """Live claims ordered before ours that conflict with it (their recorded info)."""
        stamps = _stamps(self.folder)
        mine = stamps.get(self.run_id, {})
        if CLAIM not in mine:
            raise RuntimeError(f"{self._path(self.run_id, CLAIM)} disappeared: another run removed this run's lease")
        now = max(s for entry in stamps.values() for s in entry.values())
        found, expired = [], []
        for run_id, entry in stamps.items():
            if run_id == self.run_id or CLAIM not in entry:
                continue
            if (entry[CLAIM], run_id) > (mine[CLAIM], self.run_id):
                continue  # claimed after us: that run yields to us
            try:
                theirs = json.loads(read_bytes(self._path(run_id, CLAIM)))
            except (OSError, ValueError):
                continue  # withdrawn while we looked
            age = now - max(entry.values())
            if age > float(theirs.get("ttl_s", self.ttl_s)):
                expired += [self._path(run_id, kind) for kind in entry]
            elif conflicts(self.info, theirs):
                found.append({**theirs, "seconds_since_heartbeat": round(age, 1)})
        delete_if_present(expired)  # runs killed long enough ago: their claims mean nothing now
        return found

    def acquire(self, conflicts: Callable[[dict, dict], bool], wait_s: float = 0.0, poll_s: float = 1.0,
                stream=None) -> None:
        """Claim the directory, waiting up to ``wait_s`` for conflicting live runs to finish."""
        deadline, announced = time.monotonic() + wait_s, False
        while True:
            self._claim()
            blocking = self.blockers(conflicts)
            if not blocking:
                break
            self._withdraw()
            if time.monotonic() >= deadline:
                other = blocking[0]
                raise LeaseBusy(
                    f"{self.folder}: another run is writing here ({other.get('host')}, pid {other.get('pid')}, "
                    f"run {other.get('run_id')}, settings {other.get('settings')}, shard "
                    f"{other.get('shard_index')}/{other.get('num_shards')}; last heartbeat "
                    f"{other['seconds_since_heartbeat']} s ago, expires {other.get('ttl_s')} s after it). Wait for "
                    "it to finish, or, if it was killed, rerun once its lease has expired")
            if not announced:
                print(f"tessera: waiting up to {wait_s:.0f} s for run {blocking[0].get('run_id')} on "
                      f"{self.folder} to finish", file=stream or sys.stderr, flush=True)
                announced = True
            time.sleep(poll_s)
        self._beat = threading.Thread(target=self._keep_alive, daemon=True)
        self._beat.start()

    def _keep_alive(self) -> None:
        while not self._stop.wait(self.ttl_s / 3):
            self._heartbeat()

    def release(self) -> None:
        self._stop.set()
        if self._beat is not None:
            self._beat.join()
        self._withdraw()
