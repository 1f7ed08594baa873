"""pipelines.images: every bad input refused with its reason, every good one decoded exactly."""
from __future__ import annotations

import io
import json
import pickle
import struct
import zlib

import numpy as np
import pytest
import tifffile
from PIL import Image, ImageFile, ImageOps

from pipelines.core import images, masks, pixels
from pipelines.core.images import ImagePolicy
from pipelines.core.masks import MaskPolicy
from schemas.rejected import RejectedInput
from tests import corpus

KEEP16 = ImagePolicy(bit_depth="keep16")
GRAY = ImagePolicy(color_mode="grayscale")


def save(array_or_image, fmt="PNG", **kw) -> bytes:
    im = array_or_image if isinstance(array_or_image, Image.Image) else Image.fromarray(array_or_image)
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def tiff(array, **kw) -> bytes:
    buf = io.BytesIO()
    tifffile.imwrite(buf, array, **kw)
    return buf.getvalue()


def raw_png(array: np.ndarray, color_type: int) -> bytes:
    """A 16-bit PNG written by hand (Pillow cannot write 16-bit colour)."""
    h, w = array.shape[:2]
    rows = b"".join(b"\0" + array[y].astype(">u2").tobytes() for y in range(h))
    chunk = lambda k, p: struct.pack(">I", len(p)) + k + p + struct.pack(">I", zlib.crc32(k + p))  # noqa: E731
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, color_type, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


def flip_byte(data: bytes, at: int) -> bytes:
    return data[:at] + bytes([data[at] ^ 0xFF]) + data[at + 1:]


def reason(fn, *args, **kw) -> str:
    with pytest.raises(RejectedInput) as info:
        fn(*args, **kw)
    return info.value.reason


@pytest.fixture(scope="module")
def seg(tmp_path_factory):
    root = tmp_path_factory.mktemp("seg")
    return root, corpus.write_segmentation_corpus(root)


def _read_pair(root, sid):
    """What the preprocess job does per pair once pairing succeeded."""
    image_file = next((root / "images").glob(f"{sid}.*"))
    image = images.read_image(image_file.read_bytes(), image_file.name)
    mask = images.read_mask((root / "masks" / f"{sid}.png").read_bytes(), f"{sid}.png")
    images.check_pair(image, mask, sid)
    return image, mask


def test_segmentation_corpus_good_pairs_decode_exactly(seg):
    root, info = seg
    assert {"rgba", "palette", "tiff16"} <= set(info["good"])
    for sid in info["good"]:
        image, mask = _read_pair(root, sid)
        assert image.dtype == np.uint8 and image.shape == (40, 52, 3), sid
        np.testing.assert_array_equal(mask, info["masks"][sid], err_msg=sid)
        if info["expected"][sid] is not None:
            np.testing.assert_array_equal(image, info["expected"][sid], err_msg=sid)
    assert info["expected"]["tiff16"][0, 0].tolist() == [255, 255, 255]


def test_segmentation_corpus_bad_cases_give_their_reasons(seg):
    root, info = seg
    pairing = {"missing_mask", "missing_image", "duplicate_id"}
    for sid, expected in info["bad"].items():
        if expected in pairing:
            continue
        assert reason(_read_pair, root, sid) == expected, sid
    stems = lambda d: sorted(p.stem for p in (root / d).iterdir())  # noqa: E731
    assert "no_mask" in stems("images") and "no_mask" not in stems("masks")
    assert "no_image" in stems("masks") and "no_image" not in stems("images")
    assert stems("images").count("dup") == 2
    assert {info["bad"][k] for k in ("no_mask", "no_image", "dup")} == pairing
    for sid, files in info["sources"].items():
        assert all((root / f).exists() for f in files), sid


def test_bomb_is_refused_from_its_header_only(seg):
    root, _ = seg
    data = (root / "images" / "bomb.png").read_bytes()
    assert len(data) < 200_000
    limit_before = Image.MAX_IMAGE_PIXELS
    assert images.image_size(data, "bomb.png") == (corpus.BOMB_SIZE, corpus.BOMB_SIZE)
    assert reason(images.read_image, data, "bomb.png") == "too_large"
    assert reason(images.read_mask, data, "bomb.png") == "too_large"
    # Proof that no pixel is decoded (rather than a timing): with its pixel data cut off, the
    # bomb would be "truncated" if decoding were attempted; it is still "too_large".
    header_only = data[:200]
    assert images.image_size(header_only, "bomb.png") == (corpus.BOMB_SIZE, corpus.BOMB_SIZE)
    assert reason(images.read_image, header_only, "bomb.png") == "too_large"
    small_header = save(np.zeros((100, 100), np.uint8))[:60]
    assert reason(images.read_image, small_header, "s.png") == "truncated"
    assert reason(images.read_image, small_header, "s.png", ImagePolicy(max_pixels=9999)) == "too_large"
    assert Image.MAX_IMAGE_PIXELS == limit_before and ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_max_pixels_is_the_policy_limit():
    data = save(np.zeros((40, 52, 3), np.uint8))
    assert reason(images.read_image, data, "x", ImagePolicy(max_pixels=40 * 52 - 1)) == "too_large"
    assert images.read_image(data, "x", ImagePolicy(max_pixels=40 * 52)).shape == (40, 52, 3)
    assert reason(images.read_mask, save(np.zeros((8, 8), np.uint8)), "m", MaskPolicy(max_pixels=63)) == "too_large"


@pytest.mark.parametrize("data, expected", [
    (b"", "empty_file"),
    (b"hello, world\n", "not_an_image"),
    (b"\x89PNG\r\n\x1a\n" + b"\0" * 40, "unreadable"),
    (save(np.zeros((9, 9), np.uint8))[:-12], "truncated"),            # no IEND
    (save(np.zeros((30, 30, 3), np.uint8), "JPEG")[:200], "truncated"),
    (save(np.zeros((4, 4), np.float32), "TIFF"), "unsupported_mode"),    # mode 'F'
    (save(Image.fromarray(np.full((4, 4), 70000, np.int32)), "TIFF"), "unsupported_mode"),
    (raw_png(np.zeros((3, 4, 2), np.uint16), 4), "unsupported_mode"),    # 16-bit gray + alpha
    (flip_byte(save(np.arange(400, dtype=np.uint8).reshape(20, 20)), 60), "unreadable"),  # damaged IDAT
])
def test_bad_bytes_reasons(data, expected):
    assert reason(images.read_image, data, "f") == expected


def test_rejected_input_message_and_pickle():
    err = RejectedInput("truncated", "a.png: PNG file is truncated")
    assert str(err) == "truncated: a.png: PNG file is truncated"
    back = pickle.loads(pickle.dumps(err))
    assert (back.reason, back.detail) == (err.reason, err.detail)


def test_sixteen_bit_tiff_scale8_and_keep16():
    rgb = np.array([[[65535, 1000, 0], [257, 128, 32768]]], np.uint16)
    data = tiff(rgb, photometric="rgb")
    expected8 = np.rint(rgb / 65535 * 255).astype(np.uint8)
    np.testing.assert_array_equal(images.read_image(data, "t"), expected8)
    np.testing.assert_array_equal(images.read_image(data, "t", KEEP16), rgb)
    planar = tiff(np.moveaxis(rgb, -1, 0), photometric="rgb", planarconfig="separate")
    np.testing.assert_array_equal(images.read_image(planar, "t", KEEP16), rgb)
    rgba = tiff(np.dstack([rgb, np.full((1, 2), 9, np.uint16)]), photometric="rgb", extrasamples=["unassalpha"])
    np.testing.assert_array_equal(images.read_image(rgba, "t", KEEP16), rgb)


@pytest.mark.parametrize("make", [
    lambda g: tiff(g), lambda g: tiff(g.astype(">u2")), lambda g: save(g),
    lambda g: save(Image.fromarray(g.astype(np.int32)), "TIFF"),            # mode 'I' within 16 bits
])
def test_sixteen_bit_grayscale_variants(make):
    gray = np.array([[0, 1, 65535], [1000, 32768, 300]], np.uint16)
    data = make(gray)
    np.testing.assert_array_equal(images.read_image(data, "g", KEEP16), np.repeat(gray[..., None], 3, 2))
    out = images.read_image(data, "g", ImagePolicy(color_mode="grayscale"))
    np.testing.assert_array_equal(out[..., 0], np.rint(gray / 65535 * 255).astype(np.uint8))


def test_sixteen_bit_colour_png_is_read_exactly():
    rgb = np.random.default_rng(1).integers(0, 65536, (5, 7, 3)).astype(np.uint16)
    np.testing.assert_array_equal(images.read_image(raw_png(rgb, 2), "p", KEEP16), rgb)
    rgba = np.dstack([rgb, np.zeros((5, 7), np.uint16)])
    np.testing.assert_array_equal(images.read_image(raw_png(rgba, 6), "p", KEEP16), rgb)
    np.testing.assert_array_equal(images.read_image(raw_png(rgb, 2), "p"),
                                  ((rgb.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8))


def test_color_modes_alpha_and_luma():
    rgb = np.random.default_rng(2).integers(0, 256, (60, 50, 3)).astype(np.uint8)
    gray = images.read_image(save(rgb), "c", GRAY)
    assert gray.shape == (60, 50, 1)
    np.testing.assert_array_equal(gray[..., 0], np.asarray(Image.fromarray(rgb).convert("L")))
    rgba = np.dstack([rgb, np.arange(3000).astype(np.uint8).reshape(60, 50)])
    np.testing.assert_array_equal(images.read_image(save(rgba), "c"), rgb)   # alpha dropped, not composited
    np.testing.assert_array_equal(images.read_image(save(rgb[..., 0]), "c"), np.repeat(rgb[..., :1], 3, 2))
    np.testing.assert_array_equal(images.read_image(save(rgb), "c", KEEP16), rgb.astype(np.uint16) * 257)
    bits = images.read_image(save(Image.fromarray(rgb[..., 0] > 128)), "c", GRAY)  # mode '1'
    np.testing.assert_array_equal(bits[..., 0], np.where(rgb[..., 0] > 128, 255, 0))


def test_palette_cmyk_la_images_convert_through_pillow():
    rgb = np.random.default_rng(3).integers(0, 256, (8, 9, 3)).astype(np.uint8)
    pal = Image.fromarray(rgb).quantize(colors=8)
    np.testing.assert_array_equal(images.read_image(save(pal), "p"), np.asarray(pal.convert("RGB")))
    np.testing.assert_array_equal(images.read_image(save(pal, "GIF"), "p"), np.asarray(pal.convert("RGB")))
    la = Image.fromarray(np.dstack([rgb[..., 0], rgb[..., 1]]), "LA")
    np.testing.assert_array_equal(images.read_image(save(la), "l", GRAY)[..., 0], rgb[..., 0])
    cmyk = Image.fromarray(rgb).convert("CMYK")
    out = images.read_image(save(cmyk, "TIFF"), "k")
    np.testing.assert_array_equal(out, np.asarray(cmyk.convert("RGB")))
    np.testing.assert_array_equal(images.read_image(save(rgb, "BMP"), "b"), rgb)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_matches_pillow(orientation):
    rgb = np.random.default_rng(orientation).integers(0, 256, (6, 10, 3)).astype(np.uint8)
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = save(rgb, "PNG", exif=exif.tobytes())
    expected = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(data))))
    out = images.read_image(data, "e")
    np.testing.assert_array_equal(out, expected)
    assert images.image_size(data, "e") == out.shape[:2]
    assert images.read_image(data, "e", ImagePolicy(apply_exif=False)).shape == (6, 10, 3)
    assert images.image_size(data, "e", ImagePolicy(apply_exif=False)) == (6, 10)


def test_classification_corpus(tmp_path):
    info = corpus.write_classification_corpus(tmp_path)
    for sid in info["good"]:
        path = next(tmp_path.glob(f"{sid}.*"))
        image = images.read_image(path.read_bytes(), path.name)
        assert image.shape == info["sizes"][sid] + (3,) and image.dtype == np.uint8, sid
        assert images.image_size(path.read_bytes(), path.name) == info["sizes"][sid]
    rotated = info["exif_rotated"]
    stored = Image.open(next(tmp_path.glob(f"{rotated}.*"))).size  # (W, H) as stored
    assert info["sizes"][rotated] == stored  # shown transposed: (H, W) == stored (W, H)
    assert info["bad"] == {"cup/notes": "not_an_image"}
    note = tmp_path / info["sources"]["cup/notes"][0]
    assert reason(images.read_image, note.read_bytes(), note.name) == "not_an_image"
    assert list((tmp_path / "empty").iterdir()) == []
    assert sorted({info["labels"][s] for s in info["good"]}) == sorted(info["classes"])


def mask_png(values) -> bytes:
    return save(np.asarray(values, np.uint8))


@pytest.mark.parametrize("disk, policy, expected", [
    ([[0, 255]], MaskPolicy(mode="binary"), [[0, 1]]),
    ([[0, 1]], MaskPolicy(mode="binary"), [[0, 1]]),
    ([[0, 2, 255]], MaskPolicy(mode="ids", num_classes=3), [[0, 2, 255]]),
    ([[0, 128, 255]], masks.parse_mask_values("0:0,128:1,255:2", 3), [[0, 1, 2]]),
    ([[0, 128, 255]], masks.parse_mask_values("0:0, 128:ignore, 255:1", 2), [[0, 255, 1]]),
    ([[0, 128, 255]], MaskPolicy(mode="binary", ignore_values=(128,)), [[0, 255, 1]]),
    ([[0, 255, 255]], MaskPolicy(), [[0, 1, 1]]),                  # auto: binary
    ([[255, 255]], MaskPolicy(), [[1, 1]]),                          # auto: all foreground
    ([[0, 1, 2]], MaskPolicy(num_classes=3), [[0, 1, 2]]),          # auto: ids
    ([[0, 1, 9]], MaskPolicy(ignore_values=(9,)), [[0, 1, 255]]),
])
def test_mask_modes(disk, policy, expected):
    np.testing.assert_array_equal(images.read_mask(mask_png(disk), "m", policy), np.asarray(expected, np.uint8))


@pytest.mark.parametrize("disk, policy, hint", [
    ([[0, 1, 255]], MaskPolicy(), "--mask-values ids"),
    ([[0, 128, 255]], MaskPolicy(), "--mask-values 0:0,128:1,255:2"),
    ([[0, 255]], MaskPolicy(num_classes=3), "--mask-values"),
    ([[0, 7, 255]], MaskPolicy(mode="binary"), "[7]"),
    ([[0, 1, 255]], MaskPolicy(mode="binary"), "both 1 and 255"),
    ([[0, 2]], MaskPolicy(mode="ids"), "[2]"),
    ([[0, 64]], masks.parse_mask_values("0:0,255:1", 2), "[64]"),
])
def test_mask_values_refused_with_a_hint(disk, policy, hint):
    with pytest.raises(RejectedInput) as info:
        images.read_mask(mask_png(disk), "m.png", policy)
    assert info.value.reason == "mask_values" and hint in info.value.detail and "m.png" in info.value.detail


def test_palette_mask_indices_are_class_ids():
    indices = np.array([[0, 1, 2], [2, 1, 0]], np.uint8)
    im = Image.fromarray(indices, "P")
    im.putpalette([0, 0, 0, 255, 255, 255, 128, 128, 128] + [0] * 759)  # colours that look like 0/255/128
    data = save(im)
    np.testing.assert_array_equal(images.read_mask(data, "p", MaskPolicy(num_classes=3)), indices)
    assert reason(images.read_mask, data, "p", MaskPolicy(num_classes=2)) == "mask_values"


def test_colour_and_wide_masks():
    gray = np.array([[0, 255], [255, 0]], np.uint8)
    np.testing.assert_array_equal(images.read_mask(save(np.dstack([gray] * 3)), "m"), gray // 255)
    np.testing.assert_array_equal(images.read_mask(save(np.dstack([gray] * 4)), "m"), gray // 255)
    coloured = np.dstack([gray, gray[::-1], gray])
    with pytest.raises(RejectedInput) as info:
        images.read_mask(save(coloured), "m")
    assert info.value.reason == "mask_values" and "palette" in info.value.detail
    wide = save(gray.astype(np.uint16) * 257)  # 16-bit 0/65535
    np.testing.assert_array_equal(images.read_mask(wide, "m", masks.parse_mask_values("0:0,65535:1", 2)), gray // 255)
    assert reason(images.read_mask, wide, "m") == "mask_values"
    assert reason(images.read_mask, raw_png(np.zeros((2, 2, 3), np.uint16), 2), "m") == "unsupported_mode"


def test_parse_mask_values_and_policy_validation():
    assert masks.parse_mask_values(" ids ", 4) == MaskPolicy(mode="ids", num_classes=4)
    assert masks.parse_mask_values("0:0,255:1", 2).mapping == {0: 0, 255: 1}
    for text in ("0:0,0:1", "0-1", "a:b", "0:0,255:2"):
        with pytest.raises(ValueError):
            masks.parse_mask_values(text, 2)
    with pytest.raises(ValueError):
        MaskPolicy(mode="map")
    with pytest.raises(ValueError):
        MaskPolicy(num_classes=1)
    with pytest.raises(ValueError):
        ImagePolicy(bit_depth="float")
    hash(masks.parse_mask_values("0:0,255:1", 2))


def test_describe_is_json():
    d = json.loads(json.dumps(KEEP16.describe()))
    assert d["dtype"] == "uint16" and d["channels"] == 3 and d["max_pixels"] == 178_956_970
    m = json.loads(json.dumps(masks.parse_mask_values("0:0,128:1", 2).describe()))
    assert m["mode"] == "map" and m["mapping"] == {"0": 0, "128": 1} and m["ignore_label"] == 255


def test_check_pair():
    images.check_pair(np.zeros((4, 5, 3)), np.zeros((4, 5)), "ok")
    images.check_pair((4, 5), np.zeros((4, 5)), "ok")
    with pytest.raises(RejectedInput) as info:
        images.check_pair(np.zeros((4, 5, 3)), (5, 4), "p")
    assert info.value.reason == "size_mismatch" and "4x5" in info.value.detail


def test_fit_to_size_modes():
    img = np.full((20, 40, 3), 200, np.uint8)
    letterbox = pixels.fit_to_size(img, 16)
    assert letterbox.shape == (16, 16, 3) and letterbox.dtype == np.uint8
    assert (letterbox[4:12] == 200).all() and (letterbox[:4] == 0).all() and (letterbox[12:] == 0).all()
    padded = pixels.fit_to_size(np.full((10, 30, 1), 7, np.uint16), 16, "pad")
    assert padded.dtype == np.uint16 and (padded[3:13] == 7).all() and (padded[:3] == 0).all()
    ramp = np.tile(np.arange(30, dtype=np.uint8), (10, 1))[..., None]
    np.testing.assert_array_equal(pixels.fit_to_size(ramp, 16, "pad")[3:13, :, 0], ramp[:, 7:23, 0])
    cropped = pixels.fit_to_size(img, 16, "crop")
    assert cropped.shape == (16, 16, 3) and (cropped == 200).all()
    wide = pixels.fit_to_size(np.full((20, 40, 3), 60000, np.uint16), 8)
    assert wide.dtype == np.uint16 and (wide[2:6] == 60000).all() and (wide[:2] == 0).all()
    assert pixels.fit_to_size(np.ones((3, 3), np.uint8), 4, "pad").shape == (4, 4)
    checker = (np.indices((32, 32)).sum(axis=0) % 2 * 255).astype(np.uint8)[..., None]
    smooth = pixels.fit_to_size(checker, 16)  # an antialiasing filter, not nearest-neighbour
    assert 100 < smooth[4:12, 4:12].min() and smooth[4:12, 4:12].max() < 155
    with pytest.raises(ValueError):
        pixels.fit_to_size(img, 16, "stretch")


@pytest.mark.parametrize("shape, dtype", [((5, 7), np.uint8), ((5, 7, 1), np.uint8), ((5, 7, 3), np.uint8),
                                          ((5, 7, 1), np.uint16), ((5, 7, 3), np.uint16)])
def test_png_round_trip(shape, dtype):
    a = np.random.default_rng(4).integers(0, np.iinfo(dtype).max + 1, shape).astype(dtype)
    data = pixels.encode_png(a, compress_level=1)
    back = images.decode_png(data)
    assert back.dtype == dtype and back.shape == shape[:2] + (shape[2] if len(shape) == 3 else 1,)
    np.testing.assert_array_equal(back.reshape(shape), a)
    assert Image.open(io.BytesIO(data)).size == (7, 5)  # a PNG other readers accept


def test_png_encode_refuses_other_arrays():
    for bad in (np.zeros((4, 4, 2), np.uint8), np.zeros((4, 4), np.float32)):
        with pytest.raises(ValueError):
            pixels.encode_png(bad)
    assert reason(images.decode_png, save(np.zeros((4, 4), np.uint8), "BMP")) == "not_an_image"
