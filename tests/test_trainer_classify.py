"""Classification: a small CNN learns shapes (val accuracy >= 0.9); transfer learning runs
freeze -> fine-tune in one command, the second phase at a lower learning rate."""
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

from tessera import synthetic_dataset  # noqa: E402
from tests.test_trainer_export import served_probabilities  # noqa: E402
from tests.test_trainer_learning import make_config  # noqa: E402
from trainer import export  # noqa: E402
from trainer.config import for_task  # noqa: E402
from trainer.data import open_dataset  # noqa: E402
from trainer.loop import loss_spec_for, train  # noqa: E402
from trainer.models import BACKBONE_NAME, build_model  # noqa: E402


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    path = tmp_path_factory.mktemp("shapes")
    synthetic_dataset.classification_dataset(str(path), n_train=240, n_val=60, imbalance=(2, 1, 1), fit="pad")
    return path


def test_small_cnn_learns_shapes_with_class_weights(shapes, tmp_path):
    cfg = make_config(shapes, tmp_path / "cnn", epochs=4, batch_size=16, model={"depth": 3, "filters": 8},
                      optim={"learning_rate": 0.01})
    result = train(cfg)
    assert max(row["val_accuracy"] for row in result.history) >= 0.9, result.history
    card = export.load_card(cfg.model_dir)
    assert card.task == "classification" and card.class_names == ("disc", "square", "cross")
    assert card.metrics["accuracy"] >= 0.9 and card.metrics["macro_f1"] >= 0.9 and card.threshold is None
    # how the photos were prepared (tessera_dataset.json, the preprocess config.json): predict must do the same
    assert card.whole_image is True and card.fit == "pad"
    # "auto" class weights come from the train label counts in stats.json (2:1:1 here)
    info = open_dataset(str(shapes))
    counts = [info.stats["labels"][name] for name in info.spec.class_names]
    weights = loss_spec_for(for_task(cfg, "classification"), info).class_weights
    assert weights == pytest.approx([sum(counts) / (3 * c) for c in counts])
    assert weights[0] < weights[1]
    probs = served_probabilities(cfg.model_dir, np.zeros((2, 32, 32, 1), np.uint8))
    assert probs.shape == (2, 3)


def backbone_weights(cfg, checkpoint_dir):
    """Backbone weights of the network as of the latest checkpoint in ``checkpoint_dir``."""
    model = build_model(cfg.model, open_dataset(cfg.data).spec)
    tf.train.Checkpoint(model=model).restore(tf.train.latest_checkpoint(checkpoint_dir)).expect_partial()
    return model.get_layer(BACKBONE_NAME).get_weights(), model.get_layer("logits").get_weights()


def test_transfer_freezes_then_fine_tunes_at_a_lower_rate(shapes, tmp_path):
    values = dict(steps_per_epoch=2, batch_size=8, model={"name": "transfer", "backbone": "mobilenetv2"},
                  optim={"learning_rate": 0.001, "schedule": "constant", "freeze_epochs": 1,
                         "fine_tune_lr_factor": 0.1})
    phase1 = make_config(shapes, tmp_path / "t", epochs=1, **values)
    keras.utils.set_random_seed(phase1.seed)
    initial = build_model(for_task(phase1, "classification").model, open_dataset(str(shapes)).spec)
    train(phase1, export_model=False)
    resolved = for_task(phase1, "classification")
    backbone, head = backbone_weights(resolved, phase1.backup_dir)
    for before, after in zip(initial.get_layer(BACKBONE_NAME).get_weights(), backbone):
        np.testing.assert_array_equal(before, after)      # frozen: not even BN statistics move
    assert any(not np.allclose(a, b) for a, b in zip(initial.get_layer("logits").get_weights(), head))

    # the same command with more epochs continues into phase 2
    result = train(make_config(shapes, tmp_path / "t", epochs=2, **values), export_model=False)
    assert result.resumed_at == 2 and len(result.step_losses) == 2
    assert [row["lr"] for row in result.history] == pytest.approx([0.001, 0.0001])
    tuned, _ = backbone_weights(resolved, phase1.backup_dir)
    assert any(not np.allclose(a, b) for a, b in zip(backbone, tuned))
