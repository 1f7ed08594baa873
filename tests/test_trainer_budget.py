"""--time-budget: the epochs that fit are planned after the warm-up epoch, a long epoch is
cut at the step that would cross the budget, the best checkpoint is exported, and the time
spent and the plan survive in the checkpoint for a resumed run."""
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest  # noqa: E402

from tessera import synthetic_dataset  # noqa: E402
from trainer import export  # noqa: E402
from trainer.budget import plan_epochs  # noqa: E402
from trainer.config import from_dict, parse_duration, resolve_paths, validate  # noqa: E402
from trainer.loop import EXPORT_RESERVE_S, train  # noqa: E402


def test_durations_and_plans_by_hand():
    assert [parse_duration(t) for t in ("90", "90s", "25m", "1.5h", 12)] == [90, 90, 1500, 5400, 12]
    with pytest.raises(ValueError, match="time-budget"):
        parse_duration("soon")
    assert validate(from_dict({"data": "d", "time_budget_s": "2m"})).time_budget_s == 120
    # 100 s budget, 20 spent (one epoch of 20 s), 15 kept back: 3 more epochs fit
    assert plan_epochs(100, 20, 20, 15, done=1, max_epochs=50) == 4
    assert plan_epochs(100, 20, 20, 15, done=1, max_epochs=2) == 2           # --epochs still caps it
    assert plan_epochs(100, 95, 20, 15, done=1, max_epochs=50) == 1           # nothing left: no more
    assert plan_epochs(100, 20, 0, 15, done=1, max_epochs=50) == 1


@pytest.fixture(scope="module")
def discs(tmp_path_factory):
    path = tmp_path_factory.mktemp("discs")
    synthetic_dataset.segmentation_dataset(str(path), n_train=64, n_val=8, n_test=0, core=16, margin=4)
    return path


def config(data, model_dir, **values):
    base = {"data": str(data), "model_dir": str(model_dir), "verbose": 0, "seed": 0, "batch_size": 4,
            "image_summaries": 0, "mixed_precision": "off", "model": {"depth": 1, "filters": 4}}
    base.update(values)
    return resolve_paths(from_dict(base), {})


def test_a_long_epoch_stops_at_the_step_that_would_cross_the_budget_and_exports(discs, tmp_path):
    budget = EXPORT_RESERVE_S + 6
    cfg = config(discs, tmp_path / "m", epochs=1, steps_per_epoch=100_000, time_budget_s=budget)
    result = train(cfg)
    assert 1 < len(result.step_losses) < 100_000                  # cut short, after some training
    step = 1.0                                                     # a generous bound on one step of this model
    # stopped when one more step would have left less than the reserve for validation and export
    assert budget - EXPORT_RESERVE_S - step <= result.trained_until_s <= budget - EXPORT_RESERVE_S + step
    assert result.seconds_spent < 2 * budget                       # (the export's own time varies by machine)
    assert result.card is not None and export.load_card(cfg.model_dir).task == "segmentation"


def test_the_schedule_is_fitted_after_the_warm_up_and_a_resumed_run_keeps_plan_and_clock(discs, tmp_path):
    budget = EXPORT_RESERVE_S + 12
    cfg = config(discs, tmp_path / "m", epochs=500, steps_per_epoch=2, time_budget_s=budget)
    first = train(cfg)
    assert 1 <= first.planned_epochs < 500 and len(first.history) == first.planned_epochs
    assert first.trained_until_s <= budget + 1.0
    assert first.history[-1]["lr"] < 0.05 * first.history[0]["lr"]   # cosine decay ends with the last epoch
    again = train(cfg)                                                # resumes from the backup: nothing left
    assert again.planned_epochs == first.planned_epochs and not again.step_losses
    assert again.seconds_spent >= first.trained_until_s               # the earlier run's time counts
