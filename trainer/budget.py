"""``--time-budget``: train for at most a given time, with a schedule that ends on time.

From the second epoch on (the first is the warm-up that traces the steps), after every
epoch the number of epochs that fit the rest of the budget is refitted from the mean time
of a whole epoch (validation and checkpoints included) — kept in the checkpoint, so a
resumed run starts from the same plan — and the learning-rate schedule's horizon follows
(a variable: no retracing), so cosine decay reaches its end when the time does. The time spent is kept in the
checkpoint too: a resumed run has only what is left. Should an epoch run long, training
stops at the step that would cross the budget (single-worker runs; workers of a
multi-worker run stop together at epoch ends). Either way the best checkpoint is exported
and the job exits 0.
"""
from __future__ import annotations

import math
import time

import tensorflow as tf

def plan_epochs(budget_s: float, spent_s: float, epoch_s: float, reserve_s: float, done: int,
                max_epochs: int) -> int:
    """Epochs in all: those done plus as many more as fit what is left after ``reserve_s``
    (validation and export at the end), at most ``max_epochs``, at least ``done``."""
    left = budget_s - spent_s - reserve_s
    more = math.floor(left / epoch_s) if epoch_s > 0 and left > 0 else 0
    return max(done, min(max_epochs, done + more))


class TimeBudget:
    """The clock of one run against the budget; ``spent`` and ``planned`` live in the checkpoint."""

    def __init__(self, budget_s: float):
        self.budget_s = budget_s
        self.spent = tf.Variable(0.0, dtype=tf.float64, trainable=False, name="seconds_spent")
        self.planned = tf.Variable(0, dtype=tf.int64, trainable=False, name="epochs_planned")
        self._started, self._before = time.monotonic(), 0.0

    @property
    def on(self) -> bool:
        return self.budget_s > 0

    def resumed(self) -> None:
        """Call after restoring the checkpoint: the earlier runs' time counts."""
        self._before, self._started = float(self.spent.numpy()), time.monotonic()

    def seconds(self) -> float:
        return self._before + time.monotonic() - self._started

    def record(self) -> None:
        """Before a checkpoint is saved: write the time spent so far into it."""
        self.spent.assign(self.seconds())

    def crosses(self, step_s: float, reserve_s: float) -> bool:
        """Whether one more step (of ``step_s``) would leave less than ``reserve_s`` of the budget."""
        return self.on and self.seconds() + step_s + reserve_s > self.budget_s
