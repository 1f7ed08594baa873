"""DecodeBlocks on a TestPipeline (no model): from a large image's stored decoder inputs, its
two passes over the blocks write an instance array equal to the whole-image decoding up to
renumbering, masks and object rows that agree with it, and reject the image when an object
does not fit the halo."""
from __future__ import annotations

import json

import apache_beam as beam
import numpy as np
import pyarrow.parquet as pq
import zarr
from apache_beam.testing import test_pipeline
from apache_beam.testing.util import assert_that, equal_to

from pipelines.core import images
from pipelines.predict import block_decode, blocks, label_outputs, outputs, plan
from pipelines.predict import transforms as pt
from schemas import layout as names
from schemas.decoder import BOUNDARY_CLASSES, DecoderParams, decode
from tests.test_block_instances import blobs, boundary_probabilities, same_up_to_renumbering

H, W, SIDE = 70, 90, 32


def spec_for(root, params: DecoderParams, boundary: bool) -> pt.JobSpec:
    classes = ("background", "cell") if boundary else ("background", "a", "b")
    settings = outputs.OutputSettings("segmentation", classes, ("m",), instances=params.mode,
                                      decoder=json.dumps(params.to_dict()),
                                      head_classes=BOUNDARY_CLASSES if boundary else ())
    g = plan.Geometry("segmentation", 16, 3, 1, 1, 3, 16, instances=True, decoder_mode=params.mode, boundary=boundary)
    return pt.JobSpec(g, images.ImagePolicy(), outputs.OutputLayout(str(root), settings), 2**30, decoder=params,
                      boundary=boundary, large_image_pixels=1, block_side=SIDE)


def stored(spec, data, confidence) -> dict:
    """The first pass's results for image "img": its decoder inputs, block by block."""
    layout = spec.layout
    label_outputs.block_array(layout.path(names.label_image_path("img")), (H, W), SIDE, "uint8",
                              layout.settings.fingerprint(), True)
    block_decode.prepare_arrays(spec, "img", H, W)
    for b in blocks.plan_blocks(H, W, SIDE):
        (a, e), (c, d) = b.rows, b.cols
        classes = None if spec.boundary else data[a:e, c:d]
        block_decode.write_inputs(spec, "img", b.rows, b.cols, data[a:e, c:d] if spec.boundary else None,
                                  classes, confidence[a:e, c:d])
    return {"path": "img.tif", "signature": "1:1", "level": 0, "factor": 1.0, "pixel_size_um": None,
            "height": H, "width": W, "scale": 1.0}


def run(spec, described, halo):
    with test_pipeline.TestPipeline() as p:
        done = (p | beam.Create([("img", [described])]) | block_decode.DecodeBlocks(spec, halo)
                | beam.Map(lambda kv: kv[0]))
        assert_that(done, equal_to(["img"] if halo > 8 else []))


def test_decode_blocks_writes_the_whole_image_decoding_in_chunks(tmp_path):
    rng = np.random.default_rng(3)
    objects = blobs(rng, H, W, 14, 6)
    for params, boundary in ((DecoderParams("seeded", min_size=3), True), (DecoderParams("components"), False)):
        root = tmp_path / params.mode
        spec = spec_for(root, params, boundary)
        data = boundary_probabilities(rng, objects) if boundary else (
            (objects > 0).astype(np.uint8) + (objects % 3 == 1).astype(np.uint8))
        confidence = rng.uniform(0.5, 1, (H, W)).astype(np.float16)
        run(spec, stored(spec, data, confidence), halo=30)
        whole = decode(params, **({"probabilities": data} if boundary else {"classes": data}))
        labels = zarr.open_array(str(root / names.instance_image_path("img") / "0"), mode="r")[:]
        same_up_to_renumbering(labels, whole)
        mask = zarr.open_array(str(root / names.label_image_path("img") / "0"), mode="r")[:]
        np.testing.assert_array_equal(mask, (labels > 0) if boundary else np.where(whole > 0, data, 0))
        folder = root / names.block_markers_dir(spec.layout.settings.fingerprint(), "img")
        rows = [pq.read_table(p, use_threads=False) for p in sorted(folder.glob("*.objects.parquet"))]
        ids = np.concatenate([t.column("object_id").to_numpy() for t in rows])
        assert ids.tolist() == list(range(1, int(whole.max()) + 1))            # block order, then raster order
        area = np.concatenate([t.column("area").to_numpy() for t in rows])
        assert (area == np.bincount(labels.ravel())[ids]).all()
        if not boundary:
            conf = np.concatenate([t.column("mean_confidence").to_numpy() for t in rows])
            sums = np.bincount(labels.ravel(), confidence.astype(np.float64).ravel())[ids]
            np.testing.assert_allclose(conf, sums / area)
        assert len(list(folder.glob("*.features.json"))) == len(blocks.plan_blocks(H, W, SIDE))


def test_an_object_beyond_the_halo_rejects_the_image(tmp_path):
    params = DecoderParams("components")
    spec = spec_for(tmp_path, params, False)
    classes = np.zeros((H, W), np.uint8)
    classes[5:65, 40:44] = 1                                   # 60 px tall, over three block rows
    run(spec, stored(spec, classes, np.ones((H, W), np.float16)), halo=8)
    record = json.loads((tmp_path / names.rejected_path("img.tif")).read_text())
    assert record["reason"] == "halo_too_small" and "raise --halo" in record["detail"]
    assert not (tmp_path / names.instance_image_path("img") / "0" / "0.0").exists() \
        or not zarr.open_array(str(tmp_path / names.instance_image_path("img") / "0"), mode="r")[:].any()
