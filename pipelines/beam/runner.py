"""How Tessera's Beam jobs pick a runner.

Locally (no ``--runner`` or ``--runner DirectRunner``) the jobs run Beam's FnApiRunner —
what the DirectRunner itself uses for batch pipelines — on every local core
(``--direct_running_mode=multi_processing``) unless told otherwise. They skip the
DirectRunner's first attempt to download and start the Prism runner, which fails on
machines without internet access. Any other runner and its options pass through untouched.
"""
from __future__ import annotations

import os

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions


def available_cpus() -> int:
    """CPUs this process may use: its affinity, capped by a cgroup v2 quota (a container's limit)."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        with open("/sys/fs/cgroup/cpu.max") as handle:
            quota, period = handle.read().split()[:2]
        if quota != "max":
            cpus = min(cpus, max(1, int(int(quota) / int(period))))
    except (OSError, ValueError):  # no cgroup v2 quota here: the affinity is the limit
        pass
    return max(1, cpus)


def local_defaults(beam_args: list[str], workers: int | None = None) -> list[str]:
    """Adds multi-process DirectRunner settings unless the user chose a runner or mode.

    The default worker count is the CPUs this process may use (a pod's CPU limit, not the
    node's core count), so a container is not oversubscribed.
    """
    if any(a.startswith(("--runner", "--direct_running_mode", "--direct_num_workers")) for a in beam_args):
        return list(beam_args)
    return list(beam_args) + ["--direct_running_mode=multi_processing",
                              f"--direct_num_workers={workers or available_cpus()}"]


def make_pipeline(beam_args: list[str]) -> beam.Pipeline:
    options = PipelineOptions(local_defaults(beam_args))
    runner = options.view_as(StandardOptions).runner
    if runner in (None, "DirectRunner", "SwitchingDirectRunner"):
        from apache_beam.runners.portability.fn_api_runner import FnApiRunner

        return beam.Pipeline(runner=FnApiRunner(), options=options)
    return beam.Pipeline(options=options)
