"""Named moments of the publish protocols at which a test can stop a process for real.

With ``TESSERA_PAUSE_AT=<name>`` in its environment, a process reaching
``crashpoint(<name>)`` writes its pid to ``$TESSERA_PAUSE_SIGNAL`` (when set) and waits
there until it is killed; the test then SIGKILLs it, exactly at that moment, and checks
what a reader or the next run finds. With ``TESSERA_PAUSE_RESUME=<file>`` too, it goes on
once that file exists (a test changes the world meanwhile). Unset (always, outside tests),
it costs one lookup.
"""
from __future__ import annotations

import os
import time

PAUSE_ENV = "TESSERA_PAUSE_AT"
SIGNAL_ENV = "TESSERA_PAUSE_SIGNAL"
RESUME_ENV = "TESSERA_PAUSE_RESUME"


def crashpoint(name: str) -> None:
    if os.environ.get(PAUSE_ENV) != name:
        return
    signal_path = os.environ.get(SIGNAL_ENV)
    if signal_path:
        with open(signal_path, "w") as handle:
            handle.write(str(os.getpid()))
    resume = os.environ.get(RESUME_ENV)
    while not (resume and os.path.exists(resume)):
        time.sleep(0.2)
