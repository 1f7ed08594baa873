"""What a mask's values mean: class ids (uint8, 255 = ignore) from on-disk values, under a policy.

Shared by whole masks (``images.read_mask``) and mask regions (large sources). Modes:
``ids`` (values are class ids), ``binary`` (0/1 or 0/255), a map ``v:c,...``, ``auto``
(decided from the values seen; see ``auto_mask_mode``) and ``instances`` (each object its
own id, 0 background: the class is foreground, and the ids are kept for per-tile work such
as border weight maps; ``label(binary)`` would fuse touching objects).
"""
from __future__ import annotations

import dataclasses

import numpy as np

from schemas.example import IGNORE_LABEL
from schemas.rejected import RejectedInput

PILLOW_DEFAULT_MAX_PIXELS = 178_956_970
MODES = ("auto", "binary", "ids", "map", "instances")


@dataclasses.dataclass(frozen=True)
class MaskPolicy:
    mode: str = "auto"             # "auto" | "binary" | "ids" | "map" | "instances"
    num_classes: int = 2
    mapping: dict[int, int] = dataclasses.field(default_factory=dict, hash=False)  # mode "map"
    ignore_values: tuple[int, ...] = ()   # on-disk values that become IGNORE_LABEL
    max_pixels: int = PILLOW_DEFAULT_MAX_PIXELS
    apply_exif: bool = True
    remedy: str = ""               # added to a rejection for values outside the classes (the job's context)

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mask mode must be one of {MODES}, got {self.mode!r}")
        if not 2 <= self.num_classes <= 255:
            raise ValueError(f"num_classes must be in 2..255 (255 is ignore), got {self.num_classes}")
        if (self.mode == "map") != bool(self.mapping):
            raise ValueError("a mapping is required with mode 'map' and only then")
        bad = {v: c for v, c in self.mapping.items()
               if not 0 <= v <= 65535 or not (0 <= c < self.num_classes or c == IGNORE_LABEL)}
        if bad:
            raise ValueError(f"mapping entries out of range (values 0..65535, classes "
                             f"0..{self.num_classes - 1} or {IGNORE_LABEL}): {bad}")
        if any(not 0 <= v <= 65535 for v in self.ignore_values):
            raise ValueError(f"ignore_values must be in 0..65535, got {self.ignore_values}")

    def describe(self) -> dict:
        return {"mode": self.mode, "num_classes": self.num_classes, "ignore_label": IGNORE_LABEL,
                "mapping": {str(v): c for v, c in sorted(self.mapping.items())},
                "ignore_values": list(self.ignore_values), "max_pixels": self.max_pixels,
                "apply_exif": self.apply_exif,
                "auto": "per mask: palette -> ids; {0,255} with 2 classes -> binary; "
                        "values < num_classes -> ids; otherwise refused" if self.mode == "auto" else ""}


def parse_mask_values(text: str, num_classes: int) -> MaskPolicy:
    """``--mask-values``: "auto", "binary", "ids", "instances" or "v:c,v:c,..." (c may be "ignore")."""
    text = text.strip()
    if text in ("auto", "binary", "ids", "instances"):
        return MaskPolicy(mode=text, num_classes=num_classes)
    mapping: dict[int, int] = {}
    for item in text.split(","):
        value, sep, cls = item.strip().partition(":")
        try:
            v, c = int(value), (IGNORE_LABEL if cls.strip() == "ignore" else int(cls))
        except ValueError:
            raise ValueError(f"--mask-values: expected auto, binary, ids, instances or v:c,v:c,... ; bad item "
                             f"{item!r}") from None
        if not sep or v in mapping:
            raise ValueError(f"--mask-values: bad or repeated item {item!r} in {text!r}")
        mapping[v] = c
    return MaskPolicy(mode="map", num_classes=num_classes, mapping=mapping)


def auto_mask_mode(values, num_classes: int, name: str = "mask", *, palette: bool = False) -> str:
    """The mode ("binary" or "ids") for on-disk ``values`` (ignore_values removed), or refuse."""
    v = sorted(int(x) for x in values)
    if palette:
        return "ids"
    if num_classes == 2 and IGNORE_LABEL in v and set(v) <= {0, IGNORE_LABEL}:
        return "binary"
    if set(v) <= set(range(num_classes)):
        return "ids"
    example = ",".join(f"{x}:{i}" for i, x in enumerate(v[:50]))
    more = f" (that one needs {len(v)} classes; map a value to 'ignore' instead)" if len(v) > num_classes else ""
    raise RejectedInput("mask_values", f"{name}: mask values {v[:50]} are ambiguous for {num_classes} classes; "
                        "pass --mask-values ids (values are class ids, 255 = ignore), --mask-values "
                        f"binary (0/255 or 0/1) or an explicit map such as --mask-values {example}{more}")


def mask_lut(mode: str, values: list[int], policy: MaskPolicy, name: str) -> np.ndarray:
    """Lookup table on-disk value -> class id (IGNORE_LABEL allowed), -1 where a value is not allowed."""
    lut = np.full(65536, -1, np.int16)
    if mode == "binary":
        if 1 in values and IGNORE_LABEL in values:
            raise RejectedInput("mask_values", f"{name}: a binary mask uses 0/255 or 0/1, this one has "
                                f"both 1 and 255 (values {values}); pass an explicit --mask-values map")
        lut[0], lut[1], lut[IGNORE_LABEL] = 0, 1, 1
    elif mode == "ids":
        lut[:policy.num_classes], lut[IGNORE_LABEL] = np.arange(policy.num_classes), IGNORE_LABEL
    else:
        for v, c in policy.mapping.items():
            lut[v] = c
    lut[np.asarray(policy.ignore_values, dtype=np.intp)] = IGNORE_LABEL
    return lut


def class_ids(raw: np.ndarray, policy: MaskPolicy, name: str, *, palette: bool = False,
              mode: str | None = None) -> np.ndarray:
    """(H, W) uint8 class ids of on-disk mask values ``raw`` (``mode``: the policy's unless a
    caller resolved ``auto`` once for a whole source), or RejectedInput."""
    mode = mode or policy.mode
    if mode == "instances":
        return np.where(raw > 0, np.uint8(1), np.uint8(0))
    if raw.dtype.kind not in "ui" or (raw.size and (int(raw.min()) < 0 or int(raw.max()) > 65535)):
        raise RejectedInput("mask_values", f"{name}: {raw.dtype} mask values beyond 0..65535 "
                            "(instance ids? pass --mask-values instances)")
    values = np.flatnonzero(np.bincount(raw.ravel().astype(np.intp), minlength=1)).tolist()
    kept = [v for v in values if v not in policy.ignore_values]
    if mode == "auto":
        try:
            mode = auto_mask_mode(kept, policy.num_classes, name, palette=palette)
        except RejectedInput as error:
            raise RejectedInput(error.reason, error.detail + policy.remedy) from None
    lut = mask_lut(mode, kept, policy, name)
    bad = [v for v in values if lut[v] < 0]
    if bad:
        allowed = np.flatnonzero(lut >= 0).tolist()
        raise RejectedInput("mask_values", f"{name}: mask values {bad[:10]}{' ...' if len(bad) > 10 else ''} "
                            f"are outside the declared classes ({mode} mode, {policy.num_classes} classes "
                            f"expects on-disk values {allowed[:20]}){policy.remedy}")
    return lut[raw].astype(np.uint8)
