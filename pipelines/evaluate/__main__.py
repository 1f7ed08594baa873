"""``python -m pipelines.evaluate``: the same as ``tessera evaluate``."""
import sys

from pipelines.evaluate.job import run

sys.exit(run())
