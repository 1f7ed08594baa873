"""Tessera's Beam jobs and the pure numpy code they share.

- ``core``: pure numpy used by more than one job (tiling, images, sources, pixels); no Beam, no TF.
- ``beam``: how the jobs run (runner), watch themselves (progress) and touch files (files).
- ``preprocess``: ``tessera preprocess`` (raw folders -> dataset) and ``tessera inspect``.
- ``predict``: ``tessera predict`` (images -> prediction directory).
- ``evaluate``: ``tessera evaluate`` (prediction directory + truth -> report).

Each job package has ``job.py`` with ``build_parser()`` and ``run(argv)``; ``python -m
pipelines.<job>`` runs it.
"""
