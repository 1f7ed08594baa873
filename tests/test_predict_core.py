"""Pure-numpy parts of prediction: TTA transforms, strip planning, stitching, components, shards, writers."""
import io

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from scipy import ndimage

from pipelines.beam import files
from pipelines.core.images import RejectedInput
from pipelines.predict import inputs, outputs, plan, stitch
from pipelines.predict import tta as predict_tta

PROPERTY = settings(max_examples=40, deadline=None)


def geometry(core=8, margin=3, overlap=0.0, classes=2, channels=3, batch=4, task="segmentation"):
    return plan.Geometry(task, core, margin, channels, 1, classes, plan.stride_for(core, overlap), batch)


# --- test-time augmentation ---------------------------------------------------------------

@pytest.mark.parametrize("k", range(8))
def test_every_inverse_is_exact(k):
    rng = np.random.default_rng(k)
    tiles = rng.integers(0, 255, (3, 7, 7, 2), dtype=np.uint8)
    scores = rng.normal(size=(3, 7, 7, 5)).astype(np.float32)
    assert np.array_equal(predict_tta.invert(predict_tta.apply(tiles, k), k), tiles)
    assert np.array_equal(predict_tta.invert(predict_tta.apply(scores, k), k), scores)
    assert np.array_equal(predict_tta.apply(predict_tta.invert(scores, k), k), scores)


def test_the_eight_transforms_are_the_dihedral_group():
    tile = np.arange(16).reshape(1, 4, 4, 1)
    seen = {predict_tta.apply(tile, k).tobytes() for k in range(8)}
    assert len(seen) == 8
    assert np.array_equal(predict_tta.apply(tile, 1)[0, ..., 0], np.rot90(tile[0, ..., 0]))
    assert np.array_equal(predict_tta.apply(tile, 4)[0, ..., 0], tile[0, :, ::-1, 0])
    assert predict_tta.transforms("none") == (0,)
    assert len(predict_tta.transforms("flips")) == 2 and len(predict_tta.transforms("dihedral")) == 8
    with pytest.raises(ValueError):
        predict_tta.transforms("rotations")


def test_group_averaged_prediction_is_equivariant():
    """Averaging over the whole group with correct inverses makes any model equivariant."""
    rng = np.random.default_rng(0)
    weights = rng.normal(size=(3, 3))

    def lopsided(batch):  # depends on position, so not equivariant by itself
        x = batch[..., 0].astype(np.float32)
        return np.stack([x * np.arange(x.shape[2]), ndimage.convolve(x, weights[None], mode="nearest")], -1)

    tiles = rng.integers(0, 255, (2, 6, 6, 1)).astype(np.float32)
    base = predict_tta.augmented_mean(tiles, range(8), lopsided, spatial=True)
    for k in range(8):
        moved = predict_tta.augmented_mean(predict_tta.apply(tiles, k), range(8), lopsided, spatial=True)
        np.testing.assert_allclose(moved, predict_tta.apply(base, k), rtol=1e-5, atol=1e-3)


# --- planning under the memory bound ----------------------------------------------------

def test_plan_fits_in_one_strip_when_memory_allows():
    g = geometry()
    assert plan.plan_strips(37, 61, 1000, g, 2**30) == [(0, 37)]


@pytest.mark.parametrize("overlap", [0.0, 0.25, 0.5])
def test_plan_splits_into_strips_within_the_bound(overlap):
    g = geometry(core=16, margin=4, overlap=overlap)
    whole = plan.peak_bytes(300, 200, 0, g, [(0, 300)])
    fixed = plan.image_bytes(300, 200, g)
    limit = fixed + (whole - fixed) // 3
    strips = plan.plan_strips(300, 200, 0, g, limit)
    assert len(strips) > 1
    assert strips[0][0] == 0 and strips[-1][1] == 300
    assert all(a < b for a, b in strips) and all(b == c for (_, b), (c, _) in zip(strips, strips[1:]))
    assert plan.peak_bytes(300, 200, 0, g, strips) <= limit


def test_plan_rejects_an_image_too_large_for_memory():
    g = geometry()
    with pytest.raises(RejectedInput) as e:
        plan.plan_strips(10_000, 10_000, 0, g, 100 * 2**20, "huge.png")
    assert e.value.reason == "too_large_for_memory" and "huge.png" in e.value.detail


def test_strip_tasks_cut_the_same_tiles_as_the_whole_image():
    from pipelines.core import tiling

    g = geometry(core=5, margin=4, overlap=0.4)
    image = np.random.default_rng(1).integers(0, 255, (23, 17, 3), dtype=np.uint8)
    tasks = list(plan.strip_tasks("i", "i.png", image, g, plan.strip_rows(23, g, 2)))
    covered = set()
    for task in tasks:
        for i, (y, x, h, w) in enumerate(task.boxes):
            assert np.array_equal(task.tile(i), tiling.cut_tile(image, y, x, 5, 4))
            covered.add((y, x))
        assert np.array_equal(task.image_rows(), image[task.rows[0]:task.rows[1]])
    assert covered == {(y, x) for y, x, _, _ in tiling.core_grid(23, 17, 5, g.stride)}


# --- stitching ----------------------------------------------------------------------------

def fake_scores(task, classes=3):
    """Per-tile scores that differ between overlapping tiles (they depend on the tile's box)."""
    out = []
    for i, (y, x, _, _) in enumerate(task.boxes):
        core = task.tile(i)[task.margin:task.margin + task.core, task.margin:task.margin + task.core, :1]
        out.append(np.concatenate([core / 255.0 + (y + 2 * x + c) % 7 / 10 for c in range(classes)], -1))
    return np.asarray(out, np.float32)


@pytest.mark.parametrize("overlap,blend", [(0.0, "gaussian"), (0.25, "gaussian"), (0.5, "linear")])
def test_stitching_in_strips_equals_stitching_whole(overlap, blend):
    g = geometry(core=6, margin=2, overlap=overlap)
    image = np.random.default_rng(2).integers(0, 255, (31, 20, 3), dtype=np.uint8)
    whole = [stitch.stitch_strip(t, fake_scores(t), blend)
             for t in plan.strip_tasks("i", "i", image, g, [(0, 31)])][0]
    strips = [stitch.stitch_strip(t, fake_scores(t), blend)
              for t in plan.strip_tasks("i", "i", image, g, plan.strip_rows(31, g, 1))]
    assert whole.shape == (31, 20, 3)
    np.testing.assert_array_equal(np.concatenate(strips), whole)


def test_identical_overlapping_predictions_stitch_to_themselves():
    g = geometry(core=6, margin=2, overlap=0.5)
    image = np.random.default_rng(3).integers(0, 255, (19, 14, 3), dtype=np.uint8)
    task = next(plan.strip_tasks("i", "i", image, g, [(0, 19)]))
    per_pixel = [task.tile(i)[2:8, 2:8].astype(np.float32) for i in range(task.num_tiles)]
    np.testing.assert_allclose(stitch.stitch_strip(task, np.asarray(per_pixel), "gaussian"), image, atol=1e-3)


@PROPERTY
@given(st.integers(1, 30), st.integers(1, 30), st.integers(1, 6), st.integers(0, 2**32 - 1))
def test_components_counted_across_strips_equal_whole_image(h, w, rows, seed):
    mask = np.random.default_rng(seed).integers(0, 3, (h, w)).astype(np.uint8)
    strips = [mask[a:a + rows] for a in range(0, h, rows)]
    expected = [ndimage.label(mask == c)[1] for c in range(3)]
    counter = stitch.ComponentCounter(3)
    for strip in strips:
        counter.add(strip)
    assert counter.result() == expected


def test_strip_result_round_trips_through_a_part_file():
    g = geometry(core=4, margin=1)
    image = np.random.default_rng(4).integers(0, 255, (9, 7, 3), dtype=np.uint8)
    task = next(plan.strip_tasks("a/b", "a/b.png", image, g, [(0, 9)]))
    result = stitch.strip_result(task, fake_scores(task, 2), lambda s: s.argmax(-1).astype(np.uint8),
                                         "gaussian", keep_probabilities=True)
    back = stitch.StripResult.from_parts(result.summary(), result.to_bytes())
    for name in ("mask", "probabilities", "preview_image", "preview_mask"):
        assert np.array_equal(getattr(back, name), getattr(result, name))
    assert back.summary() == result.summary() and sum(result.class_counts) == 9 * 7


# --- shards and writers ------------------------------------------------------------------

@pytest.mark.parametrize("num_shards", [1, 2, 3, 5, 8, 13])
def test_every_input_is_in_exactly_one_shard(num_shards):
    ids = sorted({f"dir{i % 4}/img{i}" for i in range(200)} | {"a", "b", "ü/ß"})
    owners = [[s for s in range(num_shards) if inputs.in_shard(i, num_shards, s)] for i in ids]
    assert all(len(o) == 1 for o in owners)
    if num_shards > 1:
        assert len({o[0] for o in owners}) == num_shards  # every shard gets work on 203 ids
    with pytest.raises(ValueError):
        inputs.in_shard("a", num_shards, num_shards)


def test_streamed_png_and_npy_read_back_exactly(tmp_path):
    rng = np.random.default_rng(5)
    mask = rng.integers(0, 4, (23, 9)).astype(np.uint8)
    path = str(tmp_path / "m.png")
    with files.atomic_create(path) as handle:
        outputs.write_png_rows(handle, 9, 23, [mask[:10], mask[10:11], mask[11:]])
    assert np.array_equal(np.asarray(Image.open(path)), mask)
    rgb = rng.integers(0, 256, (7, 9, 3)).astype(np.uint8)
    with files.atomic_create(str(tmp_path / "rgb.png")) as handle:
        outputs.write_png_rows(handle, 9, 7, [rgb[:3], rgb[3:]], level=1)
    assert np.array_equal(np.asarray(Image.open(tmp_path / "rgb.png")), rgb)
    overlay = outputs.overlay(rgb, np.array([[0, 1, 2] * 3] * 7, np.uint8))
    assert np.array_equal(overlay[:, 0], rgb[:, 0]) and not np.array_equal(overlay[:, 1], rgb[:, 1])
    probs = rng.random((5, 4, 3)).astype(np.float16)
    data = outputs.npy_header(probs.shape, np.float16) + probs[:2].tobytes() + probs[2:].tobytes()
    assert np.array_equal(np.load(io.BytesIO(data)), probs)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.png", "rgb.png"]  # no temporary left


def test_settings_fingerprint_changes_with_what_changes_outputs():
    base = outputs.OutputSettings("segmentation", ("a", "b"), ("m1",))
    assert base.fingerprint() == outputs.OutputSettings("segmentation", ("a", "b"), ("m1",)).fingerprint()
    for change in ({"tta": "flips"}, {"model_ids": ("m2",)}, {"overlap": 0.25}, {"binary_255": True}):
        other = outputs.OutputSettings(**{**base.__dict__, **change})
        assert other.fingerprint() != base.fingerprint()


@pytest.mark.parametrize("classes", [2, 3, 7])
def test_decisions_equal_argmax_and_pick_the_decided_score(classes):
    from pipelines.predict.decide import chosen, decide

    scores = np.random.default_rng(classes).integers(0, 4, (40, 30, classes)).astype(np.float32)  # many ties
    ids = decide(scores, None)
    assert np.array_equal(ids, scores.argmax(-1))
    assert np.array_equal(chosen(scores, ids), np.take_along_axis(scores, ids[..., None].astype(int), -1)[..., 0])


def test_seam_qa_measures_how_overlapping_tiles_disagree():
    from pipelines.core import tiling

    agree = tiling.Stitcher(4, 6, 2, seams=(0, 4, 0, 6))
    same = np.tile(np.array([0.8, 0.2], np.float32), (4, 4, 1))
    agree.add(0, 0, same)
    agree.add(0, 2, same)                       # columns 2-3 overlap, in agreement
    assert (agree.seam_pixels, agree.seam_disagreement, agree.seam_flips) == (8, 0.0, 0)
    clash = tiling.Stitcher(4, 6, 2, seams=(0, 2, 0, 6))   # only rows 0-1 are this strip's own
    clash.add(0, 0, same)
    clash.add(0, 2, same[..., ::-1].copy())    # the other class where they overlap
    assert clash.seam_pixels == 4 and clash.seam_flips == 4
    assert clash.seam_disagreement == pytest.approx(4 * 0.6)
    assert stitch.seam_columns(0, 0.0, 0) == {"seam_disagreement": None, "seam_flip_fraction": None}


def test_seam_heat_of_pieces_combines_to_that_of_the_whole_map():
    from pipelines.predict.stitch import seam_heat

    rng = np.random.default_rng(3)
    seam_map = (rng.random((103, 77)) ** 8).astype(np.float32)
    step = 4
    whole = seam_heat(seam_map, 0, 0, step)
    assert whole.shape == (26, 20)
    assert whole[3, 5] == round(np.sqrt(seam_map[12:16, 20:24].max()) * 255)   # the cell's largest value
    cuts = [(0, 13, 0, 30), (0, 13, 30, 77), (13, 58, 0, 77), (58, 103, 0, 41), (58, 103, 41, 77)]
    combined = np.zeros_like(whole)
    for a, b, c, d in cuts:                  # blocks or strips that do not start on the cell grid
        piece = seam_heat(seam_map[a:b, c:d], a, c, step)
        y, x = a // step, c // step
        np.maximum(combined[y:y + piece.shape[0], x:x + piece.shape[1]], piece,
                   out=combined[y:y + piece.shape[0], x:x + piece.shape[1]])
    np.testing.assert_array_equal(combined, whole)
    assert seam_heat(None, 0, 0, step) is None
