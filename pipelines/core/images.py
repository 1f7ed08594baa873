"""Reading and validating images and masks from bytes, under explicit policies (no Beam, no TF).

Every refusal is a ``RejectedInput`` with a short stable ``reason`` code and a sentence.
Size limits are checked by us from the header *before* any pixel is decoded: files are
opened through Pillow's format plugins directly, so Pillow's process-wide
``MAX_IMAGE_PIXELS`` (and its DecompressionBomb warning/error) is neither relied on nor
changed. ``ImageFile.LOAD_TRUNCATED_IMAGES`` is left False: truncated files are refused.

Images: alpha is dropped (not composited); 16-bit RGB(A) TIFFs are read with tifffile and
16-bit RGB(A) PNGs exactly (Pillow alone would keep only the high byte); multi-frame files
(GIF, multi-page TIFF) give their first frame.

Masks are decoded here to their on-disk values; what the values mean (class ids, 255 =
ignore, binary, maps, instance ids) is ``pipelines.core.masks``.
"""
from __future__ import annotations

import dataclasses
import io
import struct
import zlib

import numpy as np
import tifffile
from PIL import (  # noqa: F401 (registers plugins)
    BmpImagePlugin,
    GifImagePlugin,
    Image,
    JpegImagePlugin,
    PngImagePlugin,
    TiffImagePlugin,
)

from pipelines.core import masks, pixels
from pipelines.core.masks import PILLOW_DEFAULT_MAX_PIXELS, MaskPolicy
from schemas.rejected import RejectedInput

FORMATS = ("PNG", "JPEG", "TIFF", "BMP", "GIF")
_MAGIC = (b"\x89PNG", b"\xff\xd8\xff", b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+", b"BM", b"GIF8")  # TIFF, BigTIFF
_PNG_IEND = b"\x00\x00\x00\x00IEND\xaeB`\x82"
_ORIENTATION_TAG = 0x0112
# Pillow modes reduced to "L" or "RGB" by Pillow itself (alpha dropped, colour spaces converted).
_PILLOW_REDUCE = {"1": "L", "LA": "L", "La": "L", "P": "RGB", "PA": "RGB", "RGBA": "RGB",
                  "RGBa": "RGB", "RGBX": "RGB", "CMYK": "RGB", "YCbCr": "RGB"}
_UINT16_MODES = ("I;16", "I;16L", "I;16B", "I;16N")
_TRANSPOSE = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
              4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE,
              6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE, 8: Image.Transpose.ROTATE_90}


@dataclasses.dataclass(frozen=True)
class ImagePolicy:
    color_mode: str = "rgb"        # "rgb" (gray replicated) | "grayscale" (ITU-R 601-2 luma)
    bit_depth: str = "scale8"      # "scale8" (16-bit -> round(v*255/65535)) | "keep16" (8-bit -> v*257)
    max_pixels: int = PILLOW_DEFAULT_MAX_PIXELS
    apply_exif: bool = True        # apply the EXIF orientation (as ImageOps.exif_transpose)
    intensity: str = "fixed"       # "fixed" (bit_depth only) | "percentile" | "zscore" per image (pixels.py)

    def __post_init__(self) -> None:
        if self.intensity not in pixels.INTENSITY_MODES:
            raise ValueError(f"intensity must be one of {pixels.INTENSITY_MODES}, got {self.intensity!r}")
        if self.color_mode not in ("rgb", "grayscale"):
            raise ValueError(f"color_mode must be 'rgb' or 'grayscale', got {self.color_mode!r}")
        if self.bit_depth not in ("scale8", "keep16"):
            raise ValueError(f"bit_depth must be 'scale8' or 'keep16', got {self.bit_depth!r}")
        if self.max_pixels < 1:
            raise ValueError(f"max_pixels must be positive, got {self.max_pixels}")

    @property
    def channels(self) -> int:
        return 3 if self.color_mode == "rgb" else 1

    @property
    def dtype(self) -> str:
        return "uint8" if self.bit_depth == "scale8" else "uint16"

    def describe(self) -> dict:
        return {**dataclasses.asdict(self), "channels": self.channels, "dtype": self.dtype,
                "alpha": "dropped (not composited)",
                "sixteen_bit": "round(v*255/65535)" if self.bit_depth == "scale8" else "kept",
                "eight_bit": "kept" if self.bit_depth == "scale8" else "v*257",
                "grayscale_from_rgb": "ITU-R 601-2 luma, as Pillow 'L'"}


HEADER_BYTES = 16


def looks_like_image(prefix: bytes) -> bool:
    """Whether the first HEADER_BYTES of a file start like one of FORMATS."""
    return prefix.startswith(_MAGIC)


def _open(data: bytes, name: str) -> Image.Image:
    """Open lazily (header only) with the plugins of FORMATS; no Pillow bomb check."""
    return _open_handle(io.BytesIO(data), data[:HEADER_BYTES], name)


def _open_handle(handle, prefix: bytes, name: str) -> Image.Image:
    if not prefix:
        raise RejectedInput("empty_file", f"{name}: the file is empty (0 bytes)")
    for fmt in FORMATS:
        factory, accept = Image.OPEN[fmt]
        accepted = accept is None or accept(prefix)
        if not accepted or isinstance(accepted, str):  # a str is Pillow's "looks like, but ..."
            continue
        try:
            handle.seek(0)
            return factory(handle, name)
        except (OSError, EOFError, SyntaxError, ValueError, IndexError, TypeError, struct.error,
                Image.DecompressionBombError) as e:
            raise _decode_error(name, fmt, e) from e
    if prefix.startswith(_MAGIC):
        raise RejectedInput("unreadable", f"{name}: looks like an image but no reader accepts its header")
    raise RejectedInput("not_an_image", f"{name}: not a {'/'.join(FORMATS)} image (no known header)")


def _decode_error(name: str, fmt: str, e: BaseException) -> RejectedInput:
    if isinstance(e, Image.DecompressionBombError):
        return RejectedInput("too_large", f"{name}: {e}")
    if isinstance(e, EOFError) or "truncated" in str(e).lower():
        return RejectedInput("truncated", f"{name}: {fmt} file is truncated ({e})")
    return RejectedInput("unreadable", f"{name}: {fmt} file is damaged ({type(e).__name__}: {e})")


def _load(im: Image.Image, data: bytes, name: str) -> None:
    """Decode every pixel now, so damage surfaces here and not later."""
    try:
        im.load()
    except (OSError, EOFError, SyntaxError, ValueError, struct.error, zlib.error,
            Image.DecompressionBombError) as e:
        raise _decode_error(name, im.format, e) from e
    if im.format == "PNG" and data.rfind(_PNG_IEND) < 0:
        raise RejectedInput("truncated", f"{name}: PNG file is truncated (no IEND chunk)")


def _orientation(im: Image.Image) -> int:
    """The EXIF orientation known from the header. Pillow's PNG ``getexif()`` decodes every
    pixel to look for an eXIf chunk after IDAT, so for PNG only a chunk before IDAT counts."""
    if im.format == "PNG" and "exif" not in im.info:
        return 1
    return int(im.getexif().get(_ORIENTATION_TAG, 1) or 1)


def _orient(im: Image.Image, orientation: int) -> Image.Image:
    """Apply an EXIF orientation: ``ImageOps.exif_transpose``'s table, our header's value."""
    method = _TRANSPOSE.get(orientation)
    return im if method is None else im.transpose(method)


def _check_pixels(im: Image.Image, max_pixels: int, name: str) -> None:
    w, h = im.size
    if h * w > max_pixels:
        raise RejectedInput("too_large", f"{name}: {w}x{h} = {h * w} pixels exceeds the limit "
                            f"of {max_pixels} (max_pixels); refused before decoding")


def image_size(data: bytes, name: str, policy: ImagePolicy | None = None) -> tuple[int, int]:
    """(height, width) from the header only, as ``read_image`` would return it (EXIF applied)."""
    im = _open(data, name)
    w, h = im.size
    if (policy or ImagePolicy()).apply_exif and _orientation(im) in (5, 6, 7, 8):
        h, w = w, h
    return h, w


_GRAY_MODES = ("1", "L", "LA", "La", "I", "F") + _UINT16_MODES


def header_channels(handle, name: str) -> tuple[int, str]:
    """(1 or 3: whether the image is gray or in colour, its header's mode) from the header of the
    open binary file ``handle`` alone (no pixel is decoded). A palette counts as colour unless
    every entry of it is gray; RGB that happens to hold gray values counts as colour."""
    im = _open_handle(handle, handle.read(HEADER_BYTES), name)
    if im.mode in _GRAY_MODES:
        return 1, im.mode
    if im.mode in ("P", "PA"):
        gray = _gray_palette(im)
        return (1, f"{im.mode} (gray palette)") if gray else (3, f"{im.mode} (colour palette)")
    return 3, im.mode


def _gray_palette(im: Image.Image) -> bool:
    """Whether every palette entry has R = G = B, read from the header's palette through a 1x1
    probe image (Pillow unpacks the file's raw palette layout); an unreadable palette is colour."""
    palette = im.palette
    if palette is None:
        return False
    probe = Image.new("P", (1, 1))
    try:
        probe.putpalette(palette.palette, palette.rawmode or palette.mode)
        rgb = probe.getpalette("RGB") or []
    except (ValueError, TypeError, OSError):
        return False
    return all(rgb[i] == rgb[i + 1] == rgb[i + 2] for i in range(0, len(rgb) - 2, 3))


def _wide_rawmode(im: Image.Image) -> str | None:
    """The 16-bit-per-sample layout of a colour image Pillow would narrow to 8 bits, if any."""
    if im.format == "TIFF" and im.mode in ("RGB", "RGBA"):
        bits = im.tag_v2.get(258, 8)
        return "tiff16" if max(bits if isinstance(bits, tuple) else (bits,)) > 8 else None
    if im.format == "PNG" and im.tile and im.tile[0][3] in ("RGB;16B", "RGBA;16B", "LA;16B"):
        return im.tile[0][3]
    return None


def _read_wide(im: Image.Image, data: bytes, name: str, wide: str, apply_exif: bool) -> np.ndarray:
    """Exact uint16 (H, W, 3) for 16-bit colour TIFF (tifffile) and PNG (two Pillow passes)."""
    if wide == "tiff16":
        if apply_exif and _orientation(im) != 1:
            raise RejectedInput("unsupported_mode", f"{name}: 16-bit colour TIFF with an orientation tag")
        try:
            with tifffile.TiffFile(io.BytesIO(data)) as tif:
                page = tif.pages.first
                arr = page.asarray()
        except (tifffile.TiffFileError, OSError, EOFError, ValueError, struct.error) as e:
            raise _decode_error(name, "TIFF", e) from e
        if page.planarconfig == tifffile.PLANARCONFIG.SEPARATE:
            arr = np.moveaxis(arr, 0, -1)
        if arr.dtype != np.uint16 or arr.ndim != 3:
            raise RejectedInput("unsupported_mode", f"{name}: TIFF of {arr.dtype} {arr.shape}")
        return arr[..., :3]
    if wide == "LA;16B":
        raise RejectedInput("unsupported_mode", f"{name}: 16-bit grayscale+alpha PNG cannot be read "
                            "exactly; save it without alpha")
    # Same unfiltered rows unpacked twice: ";16B" keeps each sample's high byte, ";16L" its low one.
    halves, orientation = [], _orientation(im) if apply_exif else 1
    for raw in (wide, wide[:-1] + "L"):
        part = _open(data, name) if halves else im
        part.tile = [(t[0], t[1], t[2], raw) for t in part.tile]
        _load(part, data, name)
        halves.append(np.asarray(_orient(part, orientation))[..., :3].astype(np.uint16))
    return halves[0] << 8 | halves[1]


def _read_native(im: Image.Image, data: bytes, name: str, apply_exif: bool) -> np.ndarray:
    """(H, W, C) uint8 or uint16 with C in (1, 3), alpha dropped, orientation applied."""
    wide = _wide_rawmode(im)
    if wide:
        return _read_wide(im, data, name, wide, apply_exif)
    orientation = _orientation(im) if apply_exif else 1
    _load(im, data, name)
    im = _orient(im, orientation)
    if im.mode in _PILLOW_REDUCE:
        im = im.convert(_PILLOW_REDUCE[im.mode])
    if im.mode in ("L", "RGB"):
        arr = np.asarray(im)
    elif im.mode in _UINT16_MODES:
        arr = np.asarray(im).astype(np.uint16)
    elif im.mode == "I":
        arr = np.asarray(im)
        if arr.size and (arr.min() < 0 or arr.max() > 65535):
            raise RejectedInput("unsupported_mode", f"{name}: 32-bit integer image with values in "
                                f"[{arr.min()}, {arr.max()}], outside 16-bit range")
        arr = arr.astype(np.uint16)
    else:
        raise RejectedInput("unsupported_mode", f"{name}: pixel mode {im.mode!r} is not supported "
                            "(floating point or unusual colour space)")
    return arr[..., None] if arr.ndim == 2 else arr


def _luma(rgb: np.ndarray) -> np.ndarray:
    """ITU-R 601-2 luma with Pillow's fixed-point rounding (equal to convert('L') for uint8)."""
    r, g, b = (rgb[..., i].astype(np.int64) for i in range(3))
    return ((r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16).astype(rgb.dtype)[..., None]


def read_image(data: bytes, name: str, policy: ImagePolicy | None = None, ranges: list | None = None) -> np.ndarray:
    """Decode ``data`` to (H, W, policy.channels) of policy.dtype, or raise RejectedInput;
    with an intensity normalisation, its (low, high) from this image go into ``ranges``."""
    policy = policy or ImagePolicy()
    im = _open(data, name)
    _check_pixels(im, policy.max_pixels, name)
    native = _read_native(im, data, name, policy.apply_exif)
    if policy.intensity != "fixed":
        low, high = pixels.intensity_range(native, policy.intensity)
        if ranges is not None:
            ranges.append((low, high))
        return normalised(native, policy, (low, high), name)
    return conform(native, policy, name)


def normalised(native: np.ndarray, policy: ImagePolicy, intensity_range: tuple[float, float],
               name: str = "image") -> np.ndarray:
    """Native pixels with the policy's intensity normalisation over ``intensity_range`` (of the
    whole image: a region of a large one uses its image's range), then its channels."""
    if policy.intensity == "fixed":
        return conform(native, policy, name)
    if native.dtype not in (np.uint8, np.uint16):
        raise RejectedInput("unsupported_mode", f"{name}: {native.dtype} pixels (8- or 16-bit integers only)")
    return conform(pixels.stretch(native, *intensity_range, np.dtype(policy.dtype)), policy, name)


def conform(arr: np.ndarray, policy: ImagePolicy, name: str = "image") -> np.ndarray:
    """(H, W, 1|3[+]) uint8/uint16 pixels -> the policy's channels and dtype (as read_image)."""
    if arr.dtype not in (np.uint8, np.uint16):
        raise RejectedInput("unsupported_mode", f"{name}: {arr.dtype} pixels (8- or 16-bit integers only)")
    if arr.shape[2] not in (1, 3):
        arr = arr[..., :3] if arr.shape[2] > 3 else arr[..., :1]
    if policy.color_mode == "rgb" and arr.shape[2] == 1:
        arr = np.repeat(arr, 3, axis=2)
    elif policy.color_mode == "grayscale" and arr.shape[2] == 3:
        arr = _luma(arr)
    if policy.bit_depth == "scale8" and arr.dtype == np.uint16:
        arr = pixels.to_uint8(arr)
    elif policy.bit_depth == "keep16" and arr.dtype == np.uint8:
        arr = arr.astype(np.uint16) * 257
    return np.ascontiguousarray(arr)


def _mask_native(im: Image.Image, data: bytes, name: str, apply_exif: bool) -> np.ndarray:
    if _wide_rawmode(im):
        raise RejectedInput("unsupported_mode", f"{name}: 16-bit colour mask; save class ids as a "
                            "grayscale or palette PNG")
    orientation = _orientation(im) if apply_exif else 1
    _load(im, data, name)
    im = _orient(im, orientation)
    if im.mode in ("1", "La"):
        im = im.convert("L")
    if im.mode not in ("L", "P", "LA", "PA", "RGB", "RGBA", "I") + _UINT16_MODES:
        raise RejectedInput("unsupported_mode", f"{name}: mask pixel mode {im.mode!r} is not supported")
    arr = np.asarray(im)
    if im.mode in ("RGB", "RGBA"):
        if not (np.array_equal(arr[..., 0], arr[..., 1]) and np.array_equal(arr[..., 0], arr[..., 2])):
            raise RejectedInput("mask_values", f"{name}: colour mask (RGB channels differ); convert it to "
                                "a palette PNG or a grayscale PNG of class ids")
    if arr.ndim == 3:
        arr = arr[..., 0]
    if arr.dtype.itemsize > 1:
        if arr.size and (arr.min() < 0 or arr.max() > 65535):
            raise RejectedInput("mask_values", f"{name}: mask values in [{arr.min()}, {arr.max()}] "
                                "exceed 16 bits")
        arr = arr.astype(np.uint16)
    return arr


def read_mask(data: bytes, name: str, policy: MaskPolicy | None = None) -> np.ndarray:
    """Decode a mask to (H, W) uint8 class ids (255 = ignore), or raise RejectedInput."""
    policy = policy or MaskPolicy()
    im = _open(data, name)
    _check_pixels(im, policy.max_pixels, name)
    palette = im.mode in ("P", "PA")
    return masks.class_ids(_mask_native(im, data, name, policy.apply_exif), policy, name, palette=palette)


def read_mask_values(data: bytes, name: str, policy: MaskPolicy | None = None) -> np.ndarray:
    """A mask's on-disk values as stored (H, W) (for instance ids), or raise RejectedInput."""
    policy = policy or MaskPolicy()
    im = _open(data, name)
    _check_pixels(im, policy.max_pixels, name)
    return _mask_native(im, data, name, policy.apply_exif)


def check_pair(image, mask, name: str) -> None:
    """Refuse a pair whose (H, W) differ; takes arrays or (H, W) tuples."""
    hw = [tuple(x[:2]) if isinstance(x, tuple) else tuple(x.shape[:2]) for x in (image, mask)]
    if hw[0] != hw[1]:
        raise RejectedInput("size_mismatch", f"{name}: image is {hw[0][0]}x{hw[0][1]} (HxW) but its "
                            f"mask is {hw[1][0]}x{hw[1][1]}")


def decode_png(data: bytes, name: str = "png", max_pixels: int = PILLOW_DEFAULT_MAX_PIXELS) -> np.ndarray:
    """(H, W, C) uint8/uint16 exactly as stored (alpha dropped, no EXIF, no conversion)."""
    im = _open(data, name)
    if im.format != "PNG":
        raise RejectedInput("not_an_image", f"{name}: expected PNG, got {im.format}")
    _check_pixels(im, max_pixels, name)
    return _read_native(im, data, name, apply_exif=False)
