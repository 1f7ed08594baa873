"""tf.data input over a dataset in the exact `tessera preprocess` format."""
import json
import os
import shutil

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

from tessera import synthetic_dataset  # noqa: E402
from trainer import data  # noqa: E402
from trainer.config import AugmentConfig  # noqa: E402


@pytest.fixture(scope="module")
def seg(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("seg"))
    synthetic_dataset.segmentation_dataset(path, n_train=40, n_val=12, n_test=4, num_shards=2)
    return data.open_dataset(path)


def ids_of(ds):
    """Examples identified by their image bytes (the fixture's images are all distinct)."""
    return [x.numpy().tobytes() for x, _ in ds.unbatch()]


def test_open_dataset_reads_spec_stats_and_fingerprint(seg):
    assert seg.spec.task == "segmentation" and seg.spec.tile_size == 32
    assert seg.split_sizes == {"train": 40, "val": 12, "test": 4}
    assert len(seg.split_files["train"]) == 2
    assert set(seg.stats["class_pixels"]) == {"background", "disc"}
    with open(os.path.join(seg.path, "_SUCCESS")) as handle:
        assert seg.fingerprint == json.load(handle)["fingerprint"] != ""
    assert seg.normalization == {"scale": 1 / 255, "offset": 0.0}
    assert seg.fit == "resize"   # no preprocess config.json: the preprocess default


def test_unfinished_dataset_is_refused(seg, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(seg.path, copy)
    os.remove(copy / "_SUCCESS")
    with pytest.raises(FileNotFoundError, match="_SUCCESS"):
        data.open_dataset(str(copy))


def test_train_batches_are_normalised_augmented_and_deterministic(seg):
    ds = data.train_dataset(seg, batch_size=4, epoch=0, seed=1, augment_cfg=AugmentConfig())
    x, y = next(iter(ds))
    assert x.shape == (4, 32, 32, 1) and x.dtype == tf.float32 and y.shape == (4, 32, 32, 1) and y.dtype == tf.uint8
    assert 0.0 <= float(tf.reduce_min(x)) and float(tf.reduce_max(x)) <= 1.0
    assert set(np.unique(y.numpy())) <= {0, 1, 255}
    again = next(iter(data.train_dataset(seg, batch_size=4, epoch=0, seed=1, augment_cfg=AugmentConfig())))
    np.testing.assert_array_equal(x.numpy(), again[0].numpy())
    other_epoch = next(iter(data.train_dataset(seg, batch_size=4, epoch=1, seed=1, augment_cfg=AugmentConfig())))
    assert not np.array_equal(x.numpy(), other_epoch[0].numpy())


def test_skipping_steps_resumes_the_same_stream(seg):
    full = list(data.train_dataset(seg, 4, epoch=2, seed=0, augment_cfg=AugmentConfig()).take(5))
    resumed = list(data.train_dataset(seg, 4, epoch=2, seed=0, augment_cfg=AugmentConfig(), skip_steps=3).take(2))
    for (xa, ya), (xb, yb) in zip(full[3:], resumed):
        np.testing.assert_array_equal(xa.numpy(), xb.numpy())
        np.testing.assert_array_equal(ya.numpy(), yb.numpy())


def test_one_epoch_covers_every_example_once(seg):
    ds = data.train_dataset(seg, 4, epoch=0, seed=0, augment_cfg=AugmentConfig(enabled=False), shuffle_buffer=64)
    seen = ids_of(ds.take(10))
    assert len(set(seen)) == 40 == len(seen)
    assert set(seen) == set(ids_of(data.eval_dataset(seg, 8, "train")))


@pytest.mark.parametrize("pipelines", [2, 3])  # 2 shard files: by file for 2 workers, by record for 3
def test_workers_read_disjoint_parts_that_cover_the_split(seg, pipelines):
    parts = []
    for worker in range(pipelines):
        context = tf.distribute.InputContext(num_input_pipelines=pipelines, input_pipeline_id=worker,
                                             num_replicas_in_sync=pipelines)
        parts.append(ids_of(data.eval_dataset(seg, 4, "val", input_context=context)))
    flat = [i for part in parts for i in part]
    assert len(flat) == len(set(flat)) == 12
    assert all(parts)


def test_classification_labels(tmp_path):
    synthetic_dataset.classification_dataset(str(tmp_path), n_train=9, n_val=6, num_shards=1)
    info = data.open_dataset(str(tmp_path))
    x, y = next(iter(data.eval_dataset(info, 6)))
    assert x.shape == (6, 32, 32, 1) and y.dtype == tf.int32
    assert sorted(y.numpy().tolist()) == [0, 0, 1, 1, 2, 2]
    images, labels = data.sample(info, 2)
    assert images.shape == (2, 32, 32, 1) and labels.shape == (2,)
    assert data.crop_to(tf.zeros([1, 32, 32, 1]), 16).shape == (1, 16, 16, 1)


def test_augmenting_in_the_step_sees_what_the_pipeline_would(seg):
    from trainer.augment import augment_example_batch

    cfg = AugmentConfig()
    augmented = next(iter(data.train_dataset(seg, 4, epoch=0, seed=5, augment_cfg=cfg)))
    x, y, seed = next(iter(data.train_dataset(seg, 4, epoch=0, seed=5, augment_cfg=cfg, augment_here=False)))
    assert seed.shape == (2,)
    later_x, later_y = augment_example_batch(x, y, seed, cfg, segmentation=True)
    np.testing.assert_allclose(later_x.numpy(), augmented[0].numpy(), atol=1e-6)
    np.testing.assert_array_equal(later_y.numpy(), augmented[1].numpy())
