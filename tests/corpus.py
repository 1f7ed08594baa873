"""Deterministic corpora of good and bad inputs, shared by the tests of every job.

Each writer returns ``{"good": [ids], "bad": {id: reason}, "sources": {id: [relative paths]}}``
plus a few task-specific keys. An id is the path relative to the images folder (segmentation)
or to the root (classification, ``<class>/<stem>``), without extension, "/"-separated.
Reasons are ``pipelines.images.RejectedInput`` codes, plus the pairing codes decided by the
preprocess job: "missing_mask", "missing_image", "duplicate_id".
"""
from __future__ import annotations

import functools
import io
import pathlib
import struct
import zlib

import numpy as np
import tifffile
from PIL import Image

BOMB_SIZE = 30_000  # a BOMB_SIZE x BOMB_SIZE image header on ~100 KB of disk


def synthetic_pair(rng: np.random.Generator, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """(image uint8 (h, w, 3), mask uint8 (h, w) in {0, 1}): textured shapes on a noisy gradient."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    mask = np.zeros((h, w), bool)
    for _ in range(int(rng.integers(1, 4))):
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        ry, rx = rng.uniform(0.1, 0.3) * h + 1, rng.uniform(0.1, 0.3) * w + 1
        if rng.random() < 0.5:
            mask |= ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
        else:
            mask |= (abs(yy - cy) <= ry) & (abs(xx - cx) <= rx)
    base = rng.uniform(30, 90, 3) + 40 * (xx / max(w, 1))[..., None]
    stripes = 40 * (np.sin((xx + yy) * rng.uniform(0.5, 1.2)) > 0)[..., None]
    fg = rng.uniform(150, 210, 3) + stripes
    image = np.where(mask[..., None], fg, base) + rng.normal(0, 8, (h, w, 3))
    return np.clip(image, 0, 255).astype(np.uint8), mask.astype(np.uint8)


def _png(array: np.ndarray, **save) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, "PNG", **save)
    return buf.getvalue()


def _jpeg(array: np.ndarray, **save) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, "JPEG", quality=90, **save)
    return buf.getvalue()


def _tiff16(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    tifffile.imwrite(buf, array, photometric="rgb" if array.ndim == 3 else "minisblack")
    return buf.getvalue()


def _palette_png(indices: np.ndarray) -> bytes:
    im = Image.fromarray(indices.astype(np.uint8), "P")
    im.putpalette([0, 0, 0, 220, 30, 30] + [0, 0, 0] * 254)
    buf = io.BytesIO()
    im.save(buf, "PNG")
    return buf.getvalue()


@functools.lru_cache(maxsize=1)
def bomb_png() -> bytes:
    """A valid all-black 1-bit PNG of BOMB_SIZE x BOMB_SIZE pixels, streamed row by row."""
    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))
    compressor, row = zlib.compressobj(9), bytes(1 + (BOMB_SIZE + 7) // 8)
    idat = b"".join(compressor.compress(row) for _ in range(BOMB_SIZE)) + compressor.flush()
    ihdr = struct.pack(">IIBBBBB", BOMB_SIZE, BOMB_SIZE, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def _write(root: pathlib.Path, rel: str, data: bytes) -> str:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return rel


def write_segmentation_corpus(root: pathlib.Path, *, good: int = 4, size=(40, 52)) -> dict:
    """``root/images`` and ``root/masks`` (0/255 PNG masks): good pairs plus one of each bad case.

    Extra keys: "expected" {good id: (H, W, 3) uint8 image under the default ImagePolicy, exactly
    for lossless files, None for JPEG} and "masks" {good id: (H, W) class ids}.
    """
    root = pathlib.Path(root)
    rng = np.random.default_rng(20240611)
    h, w = size
    out: dict = {"good": [], "bad": {}, "sources": {}, "expected": {}, "masks": {}}

    def pair(sid, image_bytes, mask_bytes, image_ext="png", expected=None, mask=None, reason=None):
        files = []
        if image_bytes is not None:
            files.append(_write(root, f"images/{sid}.{image_ext}", image_bytes))
        if mask_bytes is not None:
            files.append(_write(root, f"masks/{sid}.png", mask_bytes))
        if reason:
            out["bad"][sid], out["sources"][sid] = reason, files
        else:
            out["good"].append(sid)
            out["expected"][sid], out["masks"][sid] = expected, mask

    def fresh(hh=h, ww=w):
        image, mask = synthetic_pair(rng, hh, ww)
        return image, mask, _png(mask * np.uint8(255))

    for i in range(good):
        image, mask, mask_png = fresh()
        if i % 2:
            pair(f"good_{i}", _jpeg(image), mask_png, "jpg", None, mask)
        else:
            pair(f"good_{i}", _png(image), mask_png, "png", image, mask)

    image, mask, mask_png = fresh()
    rgba = np.dstack([image, rng.integers(0, 256, (h, w), dtype=np.uint8)])
    pair("rgba", _png(rgba), mask_png, "png", image, mask)
    image, mask, _ = fresh()
    indexed = Image.fromarray(image).quantize(colors=16, dither=Image.Dither.NONE)
    buf = io.BytesIO()
    indexed.save(buf, "PNG")
    pair("palette", buf.getvalue(), _palette_png(mask), "png", np.asarray(indexed.convert("RGB")), mask)
    image, mask, mask_png = fresh()
    wide = image.astype(np.uint16) * 257
    wide[0, 0] = 65535
    expected = image.copy()
    expected[0, 0] = 255
    pair("tiff16", _tiff16(wide), mask_png, "tif", expected, mask)

    image, mask, mask_png = fresh()
    good_png, good_jpeg = _png(image), _jpeg(image)
    pair("empty", b"", mask_png, reason="empty_file")
    pair("text", b"this is not an image\n", mask_png, reason="not_an_image")
    pair("truncated_png", good_png[: len(good_png) // 2], mask_png, reason="truncated")
    pair("truncated_jpeg", good_jpeg[: len(good_jpeg) // 2], mask_png, "jpg", reason="truncated")
    pair("no_mask", good_png, None, reason="missing_mask")
    pair("no_image", None, mask_png, reason="missing_image")
    pair("mismatch", good_png, fresh(h + 3, w)[2], reason="size_mismatch")
    sevens = mask * np.uint8(255)
    sevens[: h // 4, : w // 4] = 7  # a binary mask with a value no class has
    pair("bad_values", good_png, _png(sevens), reason="mask_values")
    pair("bomb", bomb_png(), bomb_png(), reason="too_large")
    out["bad"]["dup"] = "duplicate_id"
    out["sources"]["dup"] = [_write(root, "images/dup.png", good_png), _write(root, "images/dup.jpg", good_jpeg),
                             _write(root, "masks/dup.png", mask_png)]
    return out


def _class_image(rng: np.random.Generator, cls_index: int, h: int, w: int) -> np.ndarray:
    """RGB uint8 with a class-specific pattern: 0 discs, 1 bars, 2 a grid of keys, others noise."""
    yy, xx = np.mgrid[0:h, 0:w]
    if cls_index % 3 == 0:
        shape = (yy - h / 2) ** 2 + (xx - w / 2) ** 2 <= (min(h, w) / 3) ** 2
    elif cls_index % 3 == 1:
        shape = (xx // max(1, w // 6)) % 2 == 0
    else:
        shape = ((yy // 4) % 2 == 0) & ((xx // 4) % 2 == 0)
    color = rng.uniform(120, 240, 3)
    image = np.where(shape[..., None], color, 40.0) + rng.normal(0, 10, (h, w, 3))
    return np.clip(image, 0, 255).astype(np.uint8)


def _exif_jpeg(image: np.ndarray, orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return _jpeg(image, exif=exif.tobytes())


def write_classification_corpus(root: pathlib.Path, *, per_class: int = 3,
                                classes=("cup", "book", "keyboard")) -> dict:
    """``root/<class>/...`` with mixed sizes and formats, plus an empty class and a text file.

    The first image of the first class is a JPEG with EXIF orientation 6 (stored W x H, shown
    H x W). Extra keys: "classes" (non-empty class folders), "empty_classes", "labels"
    {good id: class}, "sizes" {good id: (H, W) after orientation}, "exif_rotated" (that id).
    """
    root = pathlib.Path(root)
    rng = np.random.default_rng(7)
    sizes = [(32, 48), (40, 40), (56, 36), (24, 64), (48, 30)]
    variants = ["rgb_png", "gray_png", "rgba_png", "tiff16", "rgb_jpeg"]
    out: dict = {"good": [], "bad": {}, "sources": {}, "classes": list(classes), "empty_classes": ["empty"],
                 "labels": {}, "sizes": {}, "exif_rotated": None}
    k = 0
    for ci, cls in enumerate(classes):
        for j in range(per_class):
            h, w = sizes[k % len(sizes)]
            image = _class_image(rng, ci, h, w)
            sid = f"{cls}/{cls}_{j}"
            if k == 0:
                data, ext = _exif_jpeg(image, 6), "jpg"  # stored (h, w), shown rotated: (w, h)
                out["exif_rotated"], (h, w) = sid, (w, h)
            else:
                variant = variants[(k - 1) % len(variants)]
                if variant == "gray_png":
                    data, ext = _png(image.mean(axis=2).astype(np.uint8)), "png"
                elif variant == "rgba_png":
                    data, ext = _png(np.dstack([image, np.full((h, w), 128, np.uint8)])), "png"
                elif variant == "tiff16":
                    data, ext = _tiff16(image.mean(axis=2).astype(np.uint16) * 257), "tif"
                elif variant == "rgb_jpeg":
                    data, ext = _jpeg(image), "jpg"
                else:
                    data, ext = _png(image), "png"
            _write(root, f"{sid}.{ext}", data)
            out["good"].append(sid)
            out["labels"][sid], out["sizes"][sid] = cls, (h, w)
            k += 1
    (root / "empty").mkdir(parents=True, exist_ok=True)
    notes = f"{classes[0]}/notes"
    out["bad"][notes] = "not_an_image"
    out["sources"][notes] = [_write(root, f"{notes}.txt", b"labelled by hand, 2024\n")]
    return out
