"""The TensorFlow-free Example writer equals TFDS's serializer byte for byte and parses back."""
import numpy as np
import pytest

from pipelines.core import pixels
from pipelines.preprocess import example_proto, shards
from schemas.example import (
    CLASSIFICATION,
    PROVENANCE_FIELDS,
    SEGMENTATION,
    DatasetSpec,
    tfds_features,
)


def example(spec: DatasetSpec, rng) -> dict:
    t = spec.tile_size
    e = {"image": rng.integers(0, 256, (t, t, spec.channels), dtype=np.uint8)}
    if spec.task == SEGMENTATION:
        e["mask"] = rng.integers(0, 2, (t, t, 1), dtype=np.uint8)
        if spec.weight_map != "none":
            e["weight"] = rng.integers(0, 256, (t, t, 1), dtype=np.uint8)
    else:
        e["label"] = spec.class_names[1]
    for name, dtype in PROVENANCE_FIELDS.items():
        e[name] = {"str": "src/ü#y0x16#a2", "int32": -3 if name == "core_y" else 123456, "float32": 0.3}[dtype]
    return e


@pytest.mark.parametrize("task,weights", [(SEGMENTATION, "none"), (SEGMENTATION, "unet"), (CLASSIFICATION, "none")])
def test_matches_the_tfds_serializer_and_parses_back(task, weights):
    from tensorflow_datasets.core import example_parser, example_serializer

    spec = DatasetSpec(task, core=8, margin=2, channels=3, class_names=("a", "b", "c"), weight_map=weights)
    e = example(spec, np.random.default_rng(0))
    ours = shards.ExampleEncoder(spec).encode(e)

    features = tfds_features(spec)
    values = {k: e[k] for k in PROVENANCE_FIELDS}
    values["image"] = pixels.encode_png(e["image"])
    if task == SEGMENTATION:
        values["mask"] = pixels.encode_png(e["mask"])
        if weights != "none":
            values["weight"] = pixels.encode_png(e["weight"])
    else:
        values["label"] = e["label"]
    serializer = example_serializer.ExampleSerializer(features.get_serialized_info())
    theirs = serializer.get_tf_example(features.encode_example(values)).SerializeToString(deterministic=True)
    assert ours == theirs

    parsed = features.decode_example(example_parser.ExampleParser(features.get_serialized_info()).parse_example(ours))
    np.testing.assert_array_equal(parsed["image"].numpy(), e["image"])
    assert parsed["core_y"].numpy() == -3 and parsed["source_id"].numpy().decode() == "src/ü#y0x16#a2"
    if task == CLASSIFICATION:
        assert parsed["label"].numpy() == 1
    if weights != "none":
        np.testing.assert_array_equal(parsed["weight"].numpy(), e["weight"])


def test_refuses_values_it_cannot_represent():
    with pytest.raises(TypeError):
        example_proto.serialize_example({"x": [1, 2]})


def test_tfrecord_framing_equals_tensorflows_writer(tmp_path):
    import tensorflow as tf

    records = [b"", b"x", bytes(range(256)) * 40, "ü#y0".encode()]
    path = str(tmp_path / "tf.tfrecord")
    with tf.io.TFRecordWriter(path) as writer:
        for r in records:
            writer.write(r)
    ours = b"".join(example_proto.tfrecord(r) for r in records)
    with open(path, "rb") as handle:
        assert ours == handle.read()
    assert [r.numpy() for r in tf.data.TFRecordDataset(path)] == records


def test_a_damaged_tfrecord_fails_its_checksum(tmp_path):
    import tensorflow as tf

    framed = bytearray(example_proto.tfrecord(b"payload"))
    framed[14] ^= 0xFF  # a byte of the data
    path = tmp_path / "bad.tfrecord"
    path.write_bytes(bytes(framed))
    with pytest.raises(tf.errors.DataLossError):
        list(tf.data.TFRecordDataset(str(path)))
