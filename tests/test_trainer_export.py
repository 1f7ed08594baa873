"""The exported model directory: a valid-convolution U-Net (output = core), a threshold
calibrated to a target recall, a SavedModel that a fresh process (without the trainer)
loads and that reproduces the Keras model's outputs, and a re-export that replaces it whole."""
import dataclasses
import json
import os
import pathlib
import shutil
import subprocess
import sys
import textwrap

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

from schemas import model_card as mc  # noqa: E402
from schemas import versions  # noqa: E402
from tessera import synthetic_dataset  # noqa: E402
from tests.test_trainer_learning import make_config  # noqa: E402
from trainer import calibrate, data, export  # noqa: E402
from trainer.config import from_dict  # noqa: E402
from trainer.loop import train  # noqa: E402
from trainer.models import CUSTOM_OBJECTS  # noqa: E402
from trainer.steps import loss_spec_for  # noqa: E402


def served_probabilities(model_dir: str, tiles: np.ndarray) -> np.ndarray:
    """Runs the exported serving signature (what ``tessera predict`` does)."""
    loaded = tf.saved_model.load(f"{export.current_export(model_dir)}/{mc.SAVED_MODEL_DIR}")
    return loaded.signatures["serving_default"](**{mc.SERVING_INPUT: tf.constant(tiles)})[mc.SERVING_OUTPUT].numpy()


FRESH_PROCESS = textwrap.dedent("""
    import json, sys
    import numpy as np
    import tensorflow as tf
    model_dir, tiles_path, out_path = sys.argv[1:]
    loaded = tf.saved_model.load(model_dir + "/saved_model")
    serve = loaded.signatures["serving_default"]
    (spec,) = serve.structured_input_signature[1].values()
    out = serve(tiles=tf.constant(np.load(tiles_path)))
    np.save(out_path, out["probabilities"].numpy())
    print(json.dumps({"input": [spec.name, spec.dtype.name, spec.shape.as_list()], "outputs": sorted(out),
                      "trainer_imported": any(m.startswith("trainer") for m in sys.modules)}))
""")


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("valid")
    synthetic_dataset.segmentation_dataset(str(root / "data"), n_train=64, n_val=16, n_test=2, core=16, margin=8,
                                           pixel_size_um=0.5, intensity="percentile")
    cfg = make_config(root / "data", root / "model", epochs=2, batch_size=8, target_recall=0.9,
                      model={"depth": 1, "filters": 8, "padding": "valid"}, optim={"learning_rate": 0.01},
                      image_summaries=1)
    train(cfg)
    return cfg, root


def test_valid_unet_card_geometry_and_recall_calibration(exported):
    cfg, _ = exported
    card = export.load_card(cfg.model_dir)
    assert card.geometry() == (16, 8, 32, 16)
    assert card.threshold_rule == "recall >= 0.9 on val" and card.metrics["recall"] >= 0.9
    assert card.input_dtype == "uint8" and card.normalization == {"scale": 1 / 255, "offset": 0.0}
    assert card.pixel_size_um == 0.5 and card.intensity == "percentile"   # from the dataset, for predict
    # the card's threshold is the highest one that reaches the recall on val: recompute it
    info = data.open_dataset(cfg.data)
    resolved = from_dict(card.config)   # the card holds the resolved config
    net = export.restore_network(resolved, info, f"{cfg.checkpoint_dir}/" + _latest(cfg.checkpoint_dir))
    _, _, hist = export.evaluate(net, info, export.LossSpec.from_text("ce"), 8)
    assert calibrate.calibrate_threshold(hist, target_recall=0.9)[0] == pytest.approx(card.threshold)
    assert calibrate.scores_at(hist, card.threshold + 0.01)["recall"] < 0.9 or card.threshold >= 0.99


def _latest(directory):
    with open(os.path.join(directory, "checkpoint")) as handle:
        return json.loads(handle.readline().split(":", 1)[1])


def test_saved_model_in_a_fresh_process_reproduces_keras(exported, tmp_path):
    cfg, _ = exported
    tiles = np.random.default_rng(0).integers(0, 256, (3, 32, 32, 1)).astype(np.uint8)
    tiles_path, out_path = tmp_path / "tiles.npy", tmp_path / "out.npy"
    np.save(tiles_path, tiles)
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    run = subprocess.run([sys.executable, "-c", FRESH_PROCESS, f"{cfg.model_dir}/{versions.CURRENT_LINK}", str(tiles_path), str(out_path)],
                         capture_output=True, text=True, env=env, cwd=str(tmp_path), timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    report = json.loads(run.stdout.strip().splitlines()[-1])
    assert report == {"input": ["tiles", "uint8", [None, 32, 32, 1]], "outputs": ["probabilities"],
                      "trainer_imported": False}
    served = np.load(out_path)
    keras_model = keras.models.load_model(f"{cfg.model_dir}/{versions.CURRENT_LINK}/{mc.KERAS_FILE}", custom_objects=CUSTOM_OBJECTS)
    expected = np.asarray(keras_model(tiles.astype(np.float32), training=False))
    assert served.shape == (3, 16, 16, 2)
    np.testing.assert_allclose(served, expected, atol=1e-5)
    np.testing.assert_allclose(served.sum(-1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(served_probabilities(cfg.model_dir, tiles), served, atol=1e-6)


def test_a_re_export_is_a_new_whole_version_and_leaves_no_staging(exported, tmp_path):
    cfg, _ = exported
    model_dir = tmp_path / "model"
    shutil.copytree(cfg.model_dir, model_dir, symlinks=True)
    first = export.current_export(str(model_dir))
    (pathlib.Path(first) / mc.SAVED_MODEL_DIR / "stale.txt").write_text("a file of an earlier export")
    resolved = dataclasses.replace(from_dict(export.load_card(cfg.model_dir).config), model_dir=str(model_dir))
    info = data.open_dataset(cfg.data)
    card = export.export(resolved, info, tf.train.latest_checkpoint(cfg.checkpoint_dir), loss_spec_for(resolved, info))
    second = export.current_export(str(model_dir))
    assert second != first and os.path.realpath(model_dir / versions.CURRENT_LINK) == second
    assert not any(versions.STAGING_MARK in name for name in os.listdir(model_dir))    # no staging left behind
    assert not (pathlib.Path(second) / mc.SAVED_MODEL_DIR / "stale.txt").exists()
    assert (pathlib.Path(first) / mc.SAVED_MODEL_DIR / "stale.txt").exists()           # the old one, whole, kept
    assert export.load_card(str(model_dir)) == card
    assert card.saved_model_digest == export.saved_model_digest(f"{second}/{mc.SAVED_MODEL_DIR}")
    assert card.versions["tensorflow"] == tf.__version__ and card.versions["tessera"]
    tiles = np.random.default_rng(1).integers(0, 256, (2, 32, 32, 1)).astype(np.uint8)
    np.testing.assert_allclose(served_probabilities(str(model_dir), tiles),
                               served_probabilities(cfg.model_dir, tiles), atol=1e-6)
