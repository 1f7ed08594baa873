"""Model builders: geometry, variants, and custom layers round-tripping through save/load."""
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from schemas.example import DatasetSpec  # noqa: E402
from trainer import models  # noqa: E402
from trainer.config import ModelConfig  # noqa: E402
from trainer.models import layers as custom  # noqa: E402
from trainer.models.unet import build_unet, valid_input_size, valid_output_size  # noqa: E402
from trainer.optim import TesseraSchedule  # noqa: E402


def test_valid_unet_has_the_overlap_tile_geometry():
    assert valid_output_size(572, 4) == 388 and valid_input_size(388, 4) == 572
    model = build_unet((572, 572, 1), 2, depth=4, filters=2, padding="valid")
    assert model.output_shape == (None, 388, 388, 2)
    assert build_unet((44, 44, 3), 1, depth=2, filters=2, padding="valid").output_shape == (None, 4, 4, 1)
    with pytest.raises(ValueError, match="nearest input sizes that work: \\[44, 48\\]"):
        valid_output_size(30, 2)
    with pytest.raises(ValueError, match="divisible by 4"):
        build_unet((30, 30, 1), 1, depth=2, filters=2)


def test_same_unet_variants():
    for upsampling in ("transpose", "bilinear"):
        model = build_unet((32, 32, 3), 3, depth=3, filters=4, batchnorm=False, dropout=0.2, upsampling=upsampling)
        assert model.output_shape == (None, 32, 32, 3)
    assert not [la for la in model.layers if isinstance(la, keras.layers.BatchNormalization)]
    with pytest.raises(ValueError):
        build_unet((32, 32, 3), 3, depth=2, filters=4, upsampling="nearest")


def test_output_channels_and_builders_from_the_dict():
    binary = DatasetSpec(task="segmentation", core=24, margin=4, channels=1)
    three = DatasetSpec(task="segmentation", core=24, margin=4, channels=3, class_names=("a", "b", "c"))
    assert models.output_channels(binary) == 1 and models.output_channels(three) == 3
    assert set(models.MODELS) == {"unet", "res-attention-unet", "small-cnn", "transfer"}
    model = models.build_model(ModelConfig(name="unet", depth=1, filters=4, padding="valid"),
                               DatasetSpec(task="segmentation", core=16, margin=8, channels=1))
    assert models.output_size(model) == 16
    with pytest.raises(ValueError, match="unknown model"):
        models.build_model(ModelConfig(name="vgg"), binary)


@pytest.mark.parametrize("attention", ["se", "eca", "cbam"])
def test_res_attention_unet_round_trips(tmp_path, attention):
    model = models.MODELS["res-attention-unet"]((16, 16, 3), 3, ModelConfig(
        depth=2, filters=4, attention=attention, deep_supervision=(attention == "cbam")))
    x = np.random.default_rng(0).random((2, 16, 16, 3)).astype(np.float32)
    if attention == "cbam":
        assert len(model.outputs) == 3 and all(o.shape[1:] == (16, 16, 3) for o in model.outputs)
    assert any(type(la).__name__ == type(custom.ATTENTION[attention]()).__name__ for la in model.layers)
    model.save(tmp_path / "m.keras")
    restored = keras.models.load_model(tmp_path / "m.keras")
    expected, got = model(x, training=False), restored(x, training=False)
    for a, b in zip(expected if isinstance(expected, list) else [expected], got if isinstance(got, list) else [got]):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5)


def test_layer_configs_round_trip():
    for layer in (custom.SqueezeExcite(ratio=4), custom.EfficientChannelAttention(kernel_size=5),
                  custom.CBAM(ratio=2, spatial_kernel=3), custom.WeightedFusion(), custom.ToProbabilities(),
                  custom.BackbonePreprocess("caffe")):
        clone = type(layer).from_config(layer.get_config())
        assert clone.get_config() == layer.get_config()
    assert custom.eca_kernel_size(64) == 3 and custom.eca_kernel_size(512) == 5


def test_fusion_and_probabilities_by_hand():
    fusion = custom.WeightedFusion()
    a, b = np.ones((1, 2, 2, 1), np.float32), 3 * np.ones((1, 2, 2, 1), np.float32)
    np.testing.assert_allclose(fusion([a, b]), 2 * np.ones((1, 2, 2, 1)))   # initial weights 1/2
    probs = np.asarray(custom.ToProbabilities()(np.zeros((1, 1, 1, 1), np.float32)))
    np.testing.assert_allclose(probs, [[[[0.5, 0.5]]]])
    probs = np.asarray(custom.ToProbabilities()(np.log(np.array([[1.0, 3.0]], np.float32))))
    np.testing.assert_allclose(probs, [[0.25, 0.75]], rtol=1e-6)
    x = np.array([[[[0.0, 0.5, 1.0]]]], np.float32)
    np.testing.assert_allclose(custom.BackbonePreprocess("tf")(x), [[[[-1.0, 0.0, 1.0]]]], atol=1e-6)


def test_classifiers(tmp_path):
    cnn = models.MODELS["small-cnn"]((32, 32, 1), 3, ModelConfig(depth=2, filters=4, dropout=0.1))
    assert cnn.output_shape == (None, 3)
    transfer = models.MODELS["transfer"]((32, 32, 1), 4, ModelConfig(backbone="mobilenetv2"))
    assert transfer.output_shape == (None, 4)
    assert transfer.get_layer(models.BACKBONE_NAME).count_params() > 1_000_000
    with pytest.raises(FileNotFoundError, match="nothing is downloaded"):
        models.MODELS["transfer"]((32, 32, 3), 2, ModelConfig(backbone_weights=str(tmp_path / "missing.h5")))


def test_transfer_backbone_weights_come_from_a_local_file(tmp_path):
    source = keras.applications.MobileNetV2(include_top=False, weights=None, input_shape=(32, 32, 3), pooling="avg")
    path = str(tmp_path / "backbone.weights.h5")
    source.save_weights(path)
    model = models.MODELS["transfer"]((32, 32, 3), 2, ModelConfig(backbone="mobilenetv2", backbone_weights=path))
    for a, b in zip(source.get_weights(), model.get_layer(models.BACKBONE_NAME).get_weights()):
        np.testing.assert_array_equal(a, b)


def test_schedule_values_and_config():
    cosine = TesseraSchedule("cosine", 1.0, total_steps=110, warmup_steps=10)
    assert float(cosine(0)) == pytest.approx(0.1) and float(cosine(9)) == pytest.approx(1.0)
    assert float(cosine(60)) == pytest.approx(0.5) and float(cosine(110)) == pytest.approx(0.0, abs=1e-7)
    step = TesseraSchedule("step", 1.0, total_steps=100, step_size=10, step_factor=0.5)
    assert [float(step(s)) for s in (0, 9, 10, 25)] == pytest.approx([1.0, 1.0, 0.5, 0.25])
    phased = TesseraSchedule("constant", 0.01, total_steps=100, fine_tune_step=30, fine_tune_factor=0.1)
    assert float(phased(29)) == pytest.approx(0.01) and float(phased(30)) == pytest.approx(0.001)
    clone = TesseraSchedule.from_config(phased.get_config())
    assert clone.get_config() == phased.get_config()


def test_valid_geometry_must_match_the_dataset_core():
    spec = DatasetSpec(task="segmentation", core=20, margin=6, channels=1)   # 32-pixel tiles
    cfg = ModelConfig(name="unet", depth=1, filters=2, padding="valid")      # 32 -> 16, not 20
    with pytest.raises(ValueError, match="--tile-size 20 --margin 8"):
        models.check_geometry(models.build_model(cfg, spec), spec, cfg)
