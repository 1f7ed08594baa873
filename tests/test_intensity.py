"""Per-image intensity normalisation: a dim 16-bit image (values 0-235 of 65535) uses the
whole stored range with --intensity percentile, the range is recorded per source and in the
dataset and card, and predict applies the same normalisation (whole images and blocks alike)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile
import zarr
from PIL import Image

from pipelines.core import images, pixels
from pipelines.predict import job as predict
from pipelines.preprocess import job as preprocess
from schemas import layout as names
from tessera.toy_models import export_model

IN_PROCESS = ["--direct_running_mode=in_memory"]


def dim_image(h: int = 96, w: int = 128) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    return ((xx * 235) // (w - 1) + 0 * yy).astype(np.uint16)          # a left-to-right ramp 0..235


def test_percentile_and_zscore_ranges_by_hand():
    values = np.arange(1001, dtype=np.uint16)
    low, high = pixels.intensity_range(values, "percentile")
    assert (low, high) == pytest.approx((10.0, 998.0))
    mean, std = values.mean(), values.std()
    assert pixels.intensity_range(values, "zscore") == pytest.approx((mean - 3 * std, mean + 3 * std))
    stretched = pixels.stretch(values, low, high, np.uint8)
    assert stretched[10] == 0 and stretched[998] == 255 and stretched[504] == 128 and stretched[-1] == 255


def test_preprocess_spreads_a_dim_16_bit_image_over_the_stored_range(tmp_path):
    raw = tmp_path / "raw"
    (raw / "images").mkdir(parents=True)
    (raw / "masks").mkdir()
    Image.fromarray(dim_image()).save(raw / "images" / "dim.png")
    Image.fromarray((dim_image() > 117).astype(np.uint8)).save(raw / "masks" / "dim.png")
    common = ["--input", str(raw), "--tile-size", "32", "--margin", "0", "--split-fractions", "1,0,0",
              "--color-mode", "grayscale", *IN_PROCESS]
    assert preprocess.run([*common, "--output", str(tmp_path / "fixed")]) == 0
    assert preprocess.run([*common, "--output", str(tmp_path / "pct"), "--intensity", "percentile"]) == 0
    import tensorflow_datasets as tfds

    def brightest(path) -> int:
        ds = tfds.builder_from_directory(str(path / "current")).as_dataset(split="train")
        return max(int(e["image"].numpy().max()) for e in ds)

    assert brightest(tmp_path / "fixed") <= 1 and brightest(tmp_path / "pct") == 255   # crushed vs spread
    version = tmp_path / "pct" / "current"
    assert json.loads((version / "tessera_dataset.json").read_text())["intensity"] == "percentile"
    recorded = json.loads((version / "stats.json").read_text())["per_source"]["dim"]["intensity_range"]
    assert recorded == pytest.approx(list(pixels.intensity_range(dim_image(), "percentile")))


def test_predict_applies_the_cards_normalisation_to_whole_images_and_blocks(tmp_path):
    image = dim_image(200, 260)
    (tmp_path / "png").mkdir()
    Image.fromarray(image).save(tmp_path / "png" / "dim.png")
    (tmp_path / "tiff").mkdir()
    tifffile.imwrite(tmp_path / "tiff" / "dim.tif", image, tile=(64, 64), compression="zlib")
    for intensity in ("fixed", "percentile"):
        export_model(str(tmp_path / intensity), kind="bright", core=16, margin=4, channels=1, intensity=intensity)
    masks = {}
    for model, folder, extra in (("fixed", "png", []), ("percentile", "png", []),
                                 ("percentile", "tiff", ["--large-image-pixels", "10000", "--memory-limit-mb", "1"])):
        out = tmp_path / f"out-{model}-{folder}"
        assert predict.run(["--model-dir", str(tmp_path / model), "--input", str(tmp_path / folder),
                            "--output", str(out), *extra]) == 0
        masks[model, folder] = (np.asarray(Image.open(out / names.mask_path("dim"))) if folder == "png" else
                                zarr.open_group(str(out / names.label_image_path("dim")), mode="r")["0"][:])
    assert masks["fixed", "png"].max() == 0                       # 235/65535: dark everywhere to the model
    normalised = images.normalised(image[..., None], images.ImagePolicy(color_mode="grayscale", intensity="percentile"),
                                   pixels.intensity_range(image, "percentile"))[..., 0]
    np.testing.assert_array_equal(masks["percentile", "png"], (normalised > 127.5).astype(np.uint8))
    np.testing.assert_array_equal(masks["percentile", "tiff"], masks["percentile", "png"])   # blocks share the range
