"""`tessera compare`: with and without static augmentation copies, same splits, side by side."""
import json
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from PIL import Image  # noqa: E402

from tessera import synthetic_dataset  # noqa: E402
from trainer import compare, data  # noqa: E402


def test_originals_only_leaves_out_the_static_copies(tmp_path):
    synthetic_dataset.classification_dataset(str(tmp_path), n_train=12, n_val=3, static_copies=2)
    info = data.open_dataset(str(tmp_path))
    assert info.split_sizes["train"] == 36
    assert data.count_examples(info, "train", originals_only=True) == 12
    assert data.count_examples(info, "train") == 36
    cfg = compare.parse_config(["--data", str(tmp_path), "--model-dir", "m", "--augment-in", "pipeline"], env={})
    ds = data.train_dataset(info, 4, 0, 0, cfg.augment, augment_here=False, originals_only=True)
    seen = {x.numpy().tobytes() for batch in ds.take(3) for x in batch[0]}
    assert len(seen) == 12     # one pass of 3 batches of 4 = the 12 originals, each once


def test_compare_trains_both_and_reports_side_by_side(tmp_path, capsys):
    synthetic_dataset.classification_dataset(str(tmp_path / "ds"), n_train=48, n_val=12, static_copies=1)
    code = compare.run(["--data", str(tmp_path / "ds"), "--output", str(tmp_path / "cmp"), "--epochs", "2",
                        "--batch-size", "8", "--depth", "2", "--filters", "4", "--verbose", "0"])
    assert code == 0
    report = json.loads((tmp_path / "cmp" / "comparison.json").read_text())
    assert set(report["validation"]) == {"with-static-augmentation", "without-static-augmentation"}
    assert report["monitor"] == "val_accuracy"
    with_copies = json.loads((tmp_path / "cmp" / "with-static-augmentation" / "config.json").read_text())
    without = json.loads((tmp_path / "cmp" / "without-static-augmentation" / "config.json").read_text())
    assert (with_copies["static_copies"], without["static_copies"]) == (True, False)
    assert {k: v for k, v in with_copies.items() if k not in ("static_copies", "model_dir", "checkpoint_dir",
                                                               "backup_dir", "log_dir")} == \
        {k: v for k, v in without.items() if k not in ("static_copies", "model_dir", "checkpoint_dir",
                                                        "backup_dir", "log_dir")}
    # 96 train examples with copies -> 12 steps per epoch; 48 originals -> 6 (backups are named by global step)
    assert (tmp_path / "cmp" / "with-static-augmentation" / "backup" / "backup-24.index").exists()
    assert (tmp_path / "cmp" / "without-static-augmentation" / "backup" / "backup-12.index").exists()
    assert len(report["history"]["with-static-augmentation"]) == 2
    out = capsys.readouterr().out
    assert "accuracy" in out and "difference" in out
    assert Image.open(tmp_path / "cmp" / "learning_curves.png").size == (900, 380)
    assert compare.run(["--data", "x"]) == 2
