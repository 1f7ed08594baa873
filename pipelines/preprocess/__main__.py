"""``python -m pipelines.preprocess``: the same as ``tessera preprocess``."""
import sys

from pipelines.preprocess.job import run

sys.exit(run())
