"""Training killed (SIGKILL) while it exports, then rerun: the model directory always holds a
whole export or none (a card and the SavedModel it names), predict never pairs a card with
another export's SavedModel, and the rerun exports — at the first export (staged, or
published but not yet pointed to) and inside a re-export over an existing one."""
from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest  # noqa: E402

from pipelines.beam.files import resolve_version  # noqa: E402
from pipelines.predict import models as inference  # noqa: E402
from schemas import model_card as mc  # noqa: E402
from schemas import versions  # noqa: E402
from tessera import synthetic_dataset  # noqa: E402
from tests.crash import kill_at  # noqa: E402
from trainer import export, task  # noqa: E402


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    path = tmp_path_factory.mktemp("ds") / "ds"
    synthetic_dataset.segmentation_dataset(str(path), n_train=16, n_val=8, n_test=0)
    return path


def train_argv(data, model_dir, epochs: int = 1) -> list[str]:
    return ["--data", str(data), "--model-dir", str(model_dir), "--epochs", str(epochs), "--batch-size", "4",
            "--depth", "1", "--filters", "2", "--verbose", "1", "--image-summaries", "0"]


def version_dirs(model_dir) -> list[str]:
    return sorted(n for n in os.listdir(model_dir) if versions.is_version(n))


def what_predict_reads(model_dir) -> mc.ModelCard:
    """The card predict resolves, after checking it names the SavedModel beside it (exit 2 if not)."""
    current = resolve_version(str(model_dir))
    card, _ = inference.read_card(current)
    inference.check_saved_model(current, card)
    assert card.saved_model_digest == export.saved_model_digest(f"{current}/{mc.SAVED_MODEL_DIR}")
    return card


@pytest.mark.parametrize("point", ["train:export-staged", "train:before-pointer"])
def test_a_kill_during_the_first_export_leaves_none_and_the_rerun_exports(dataset, tmp_path, capsys, point):
    model_dir = tmp_path / "model"
    kill_at(point, "trainer.task", train_argv(dataset, model_dir), tmp_path, timeout=300)
    assert not (model_dir / versions.POINTER_FILE).exists()
    with pytest.raises(FileNotFoundError, match="no model_card.json"):
        what_predict_reads(model_dir)                    # predict refuses the directory: no export yet
    left = version_dirs(model_dir)
    assert len(left) == (1 if point == "train:before-pointer" else 0)   # a version never pointed to
    capsys.readouterr()
    assert task.run(train_argv(dataset, model_dir)) == 0
    out, err = capsys.readouterr()
    assert "Training already complete" in out and f"Exported {model_dir}" in out
    assert "Threshold: foreground where P(foreground) >=" in out and "at this threshold on the validation" in out
    card = what_predict_reads(model_dir)
    assert card.metrics["best_epoch"] == 1
    assert version_dirs(model_dir) == [os.path.basename(export.current_export(str(model_dir)))]  # unpointed pruned
    if point == "train:export-staged":                   # the staging the kill left is named (removed when old)
        assert "by another export" in err and any(versions.STAGING_MARK in n for n in os.listdir(model_dir))


def test_a_kill_inside_a_re_export_keeps_the_previous_export_whole(dataset, tmp_path, capsys):
    model_dir = tmp_path / "model"
    assert task.run(train_argv(dataset, model_dir, epochs=1)) == 0
    first = what_predict_reads(model_dir)
    first_dir = export.current_export(str(model_dir))
    kill_at("train:before-pointer", "trainer.task", train_argv(dataset, model_dir, epochs=2), tmp_path, timeout=300)
    assert export.current_export(str(model_dir)) == first_dir      # readers still get the first export, whole
    assert what_predict_reads(model_dir) == first
    assert len(version_dirs(model_dir)) == 2                        # the new one, published but never pointed to
    capsys.readouterr()
    assert task.run(train_argv(dataset, model_dir, epochs=2)) == 0
    out, _ = capsys.readouterr()
    assert "Training already complete" in out and f"Exported {model_dir}" in out
    second = what_predict_reads(model_dir)
    assert second.config["epochs"] == 2 and second.saved_model_digest
    current = os.path.basename(export.current_export(str(model_dir)))
    assert version_dirs(model_dir) == sorted([os.path.basename(first_dir), current])  # the first kept, the orphan gone
    assert task.run(train_argv(dataset, model_dir, epochs=2)) == 0   # nothing new: the export is not redone
    out, _ = capsys.readouterr()
    assert "already holds the export" in out and "Exported" not in out
    assert os.path.basename(export.current_export(str(model_dir))) == current
