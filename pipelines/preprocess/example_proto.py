"""``tf.train.Example`` and TFRecord wire formats without TensorFlow, for preprocessing workers.

Importing TensorFlow costs each Beam worker seconds and hundreds of MB; the Example
message is four tiny protobuf messages, so the workers write it directly::

    Example  { Features features = 1; }
    Features { map<string, Feature> feature = 1; }          # entries sorted by key
    Feature  { oneof { BytesList bytes_list = 1; FloatList float_list = 2; Int64List int64_list = 3; } }
    BytesList { repeated bytes value = 1; }   FloatList { repeated float value = 1 [packed]; }
    Int64List { repeated int64 value = 1 [packed]; }

The output equals TFDS's own serializer with ``SerializeToString(deterministic=True)``
byte for byte (checked in tests), and TFDS parses it as usual.

A TFRecord file is a sequence of records, each framed as::

    uint64 length (little-endian) | uint32 masked_crc32c(length bytes) | data | uint32 masked_crc32c(data)

with ``masked_crc32c(x) = ((c >> 15) | (c << 17)) + 0xa282ead8`` (mod 2^32), ``c = crc32c(x)``;
:func:`tfrecord` writes exactly what ``tf.io.TFRecordWriter`` writes (checked in tests).
"""
from __future__ import annotations

import struct
from typing import Mapping, Union

import google_crc32c
import numpy as np

Value = Union[bytes, str, int, float, np.integer, np.floating]

_LENGTH_DELIMITED, _VARINT = 2, 0


def _varint(n: int) -> bytes:
    n &= (1 << 64) - 1  # negative int64 values are encoded as their two's complement
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | _LENGTH_DELIMITED) + _varint(len(payload)) + payload


def _feature(value: Value) -> bytes:
    if isinstance(value, str):
        value = value.encode("utf-8")
    if isinstance(value, bytes):
        return _field(1, _field(1, value))                                   # bytes_list
    if isinstance(value, (float, np.floating)):
        return _field(2, _field(1, struct.pack("<f", float(value))))         # float_list, packed
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return _field(3, _field(1, _varint(int(value))))                     # int64_list, packed
    raise TypeError(f"cannot encode {type(value).__name__} in a tf.train.Example")


def serialize_example(features: Mapping[str, Value]) -> bytes:
    """One scalar or bytes value per feature -> serialized ``tf.train.Example``."""
    entries = b"".join(
        _field(1, _field(1, key.encode("utf-8")) + _field(2, _feature(features[key])))
        for key in sorted(features))
    return _field(1, entries)


def _masked_crc32c(data: bytes) -> int:
    crc = google_crc32c.value(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def tfrecord(data: bytes) -> bytes:
    """``data`` framed as one TFRecord (length, its checksum, the data, its checksum)."""
    length = struct.pack("<Q", len(data))
    return length + struct.pack("<I", _masked_crc32c(length)) + data + struct.pack("<I", _masked_crc32c(data))
