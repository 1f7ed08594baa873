"""``python -m pipelines.predict``: the same as ``tessera predict``."""
import sys

from pipelines.predict.job import run

sys.exit(run())
