"""Tiled prediction equals whole-image prediction; TTA and ensembles combine as documented.

Runs the real exported SavedModels through the same code the job runs (strip tasks ->
batched inference -> stitching), without Beam, so each case takes milliseconds.
"""
import numpy as np
import pytest

from pipelines.predict import models as inference
from pipelines.predict import plan, stitch
from tessera.toy_models import export_model, whole_image_probabilities


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    made = {
        "same": export_model(str(root / "same"), kind="same", core=8, margin=4, layers=3),
        "valid": export_model(str(root / "valid"), kind="valid", core=7, margin=3, layers=3, seed=1),
        "pixel": export_model(str(root / "pixel"), kind="pixel", core=6, margin=2, classes=3, seed=2),
        "same2": export_model(str(root / "same2"), kind="same", core=8, margin=4, layers=2, seed=3),
        "same3": export_model(str(root / "same3"), kind="same", core=8, margin=4, layers=1, seed=4),
        "other": export_model(str(root / "other"), kind="same", core=10, margin=4, layers=2, seed=5),
    }
    return {name: (str(root / name), module) for name, module in made.items()}


def predict_image(predictor, image, overlap=0.0, blend="gaussian", rows_per_strip=None, batch=5):
    card = predictor.card
    g = plan.Geometry(card.task, card.core, card.margin, card.channels, 1, card.num_classes,
                      plan.stride_for(card.core, overlap), batch)
    h = image.shape[0]
    strips = plan.strip_rows(h, g, rows_per_strip) if rows_per_strip else [(0, h)]
    tasks = list(plan.strip_tasks("i", "i.png", image, g, strips))
    scores = inference.predict_tasks(predictor, tasks, batch)
    return np.concatenate([stitch.stitch_strip(t, s, blend) for t, s in zip(tasks, scores)])


def image(h, w, seed=0, channels=3):
    return np.random.default_rng(seed).integers(0, 256, (h, w, channels), dtype=np.uint8)


@pytest.mark.parametrize("kind", ["same", "valid"])
@pytest.mark.parametrize("size", [(37, 61), (5, 5), (1, 1), (64, 9)])
def test_tiled_prediction_equals_whole_image_prediction(models, kind, size):
    path, module = models[kind]
    predictor = inference.load_predictor([path], "none", "mean")
    pixels = image(*size)
    expected = whole_image_probabilities(module, pixels, predictor.card.margin)
    got = predict_image(predictor, pixels)
    assert got.shape == size + (2,)
    np.testing.assert_allclose(got, expected, atol=1e-4)


@pytest.mark.parametrize("overlap,blend,rows", [(0.25, "gaussian", None), (0.5, "linear", 1), (0.0, "gaussian", 2)])
def test_overlap_and_strips_stay_seamless(models, overlap, blend, rows):
    path, module = models["same"]
    predictor = inference.load_predictor([path], "none", "mean")
    pixels = image(29, 34, seed=1)
    expected = whole_image_probabilities(module, pixels, predictor.card.margin)
    np.testing.assert_allclose(predict_image(predictor, pixels, overlap, blend, rows), expected, atol=1e-4)


@pytest.mark.parametrize("tta", ["flips", "dihedral"])
def test_tta_with_an_equivariant_model_equals_no_tta(models, tta):
    path, _ = models["pixel"]
    pixels = image(13, 17, seed=2)
    plain = predict_image(inference.load_predictor([path], "none", "mean"), pixels)
    augmented = predict_image(inference.load_predictor([path], tta, "mean"), pixels)
    np.testing.assert_allclose(augmented, plain, atol=1e-6)


def test_tta_changes_a_non_equivariant_model_and_stays_a_distribution(models):
    path, _ = models["same"]
    pixels = image(16, 16, seed=3)
    plain = predict_image(inference.load_predictor([path], "none", "mean"), pixels)
    augmented = predict_image(inference.load_predictor([path], "dihedral", "mean"), pixels)
    assert np.abs(augmented - plain).max() > 1e-3
    np.testing.assert_allclose(augmented.sum(-1), 1.0, atol=1e-5)


def test_mean_ensemble_is_the_mean_of_its_members(models):
    paths = [models[n][0] for n in ("same", "same2")]
    pixels = image(20, 11, seed=4)
    singles = [predict_image(inference.load_predictor([p], "none", "mean"), pixels) for p in paths]
    both = predict_image(inference.load_predictor(paths, "none", "mean"), pixels)
    np.testing.assert_allclose(both, (singles[0] + singles[1]) / 2, atol=1e-6)


def test_vote_ensemble_gives_the_majority_class(models):
    paths = [models[n][0] for n in ("same", "same2", "same3")]
    pixels = image(20, 11, seed=5)
    votes = [predict_image(inference.load_predictor([p], "none", "mean"), pixels).argmax(-1) for p in paths]
    predictor = inference.load_predictor(paths, "none", "vote")
    shares = predict_image(predictor, pixels)
    majority = (np.sum(votes, axis=0) >= 2).astype(np.uint8)
    assert np.array_equal(predictor.decide(shares), majority)
    assert set(np.unique(shares * 3).round(4)) <= {0.0, 1.0, 2.0, 3.0}
    assert len({v.tobytes() for v in votes}) > 1  # the members really disagree somewhere


def test_an_ensemble_of_different_geometries_is_refused(models):
    with pytest.raises(ValueError, match="disagree"):
        inference.load_predictor([models["same"][0], models["other"][0]], "none", "mean")


def test_binary_threshold_and_mean_thresholds():
    scores = np.array([[0.35, 0.65], [0.2, 0.8], [0.6, 0.4]], np.float32)
    assert inference.decide(scores, 0.7).tolist() == [0, 1, 0]
    assert inference.decide(scores, None).tolist() == [1, 1, 0]
    assert inference.decide(scores, 0.3).tolist() == [1, 1, 1]


def test_a_model_exported_by_the_trainer_predicts_seamlessly(tmp_path):
    """The trainer's real export path (Keras ExportArchive) honours the contract predict reads."""
    import keras

    from schemas.model_card import ModelCard
    from trainer.export import inference_model, write_saved_model

    keras.utils.set_random_seed(0)
    inputs = keras.Input((None, None, 3))
    x = keras.layers.Conv2D(4, 3, padding="same", activation="tanh")(inputs)
    x = keras.layers.Conv2D(2, 3, padding="same")(x)
    net = keras.Model(inputs, x)
    tile = 8 + 2 * 3
    tiles = keras.Input((tile, tile, 3))
    fixed = keras.Model(tiles, net(tiles))
    normalization = {"scale": 1 / 255, "offset": 0.0}
    write_saved_model(inference_model(fixed, normalization), str(tmp_path / "m" / "saved_model"), "uint8")
    card = ModelCard(task="segmentation", model_name="keras-toy", core=8, margin=3, input_size=tile,
                     output_size=tile, channels=3, class_names=("background", "foreground"),
                     normalization=normalization, threshold=0.5)
    (tmp_path / "m" / "model_card.json").write_text(card.to_json())
    pixels = image(21, 30, seed=6)
    predictor = inference.load_predictor([str(tmp_path / "m")], "none", "mean")
    from pipelines.core.tiling import mirror_index

    padded = pixels[np.ix_(mirror_index(np.arange(-3, 24), 21), mirror_index(np.arange(-3, 33), 30))]
    logits = net(padded[None].astype("float32") / 255).numpy()[0, 3:24, 3:33]
    expected = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    np.testing.assert_allclose(predict_image(predictor, pixels), expected, atol=1e-4)
