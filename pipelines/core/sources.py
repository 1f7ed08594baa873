"""Which inputs make a source: pairing images with masks, class folders, split assignment.

Pure functions on paths; the Beam job only groups paths by key and calls these.

Segmentation layout::

    root/images/<rel>/<stem>.<ext>    root/masks/<rel>/<stem>.<ext2>

paired by ``<rel>/<stem>`` (extensions may differ). Classification layout::

    root/<class>/<rel>/<stem>.<ext>

In both, a first folder named ``train``, ``val`` or ``test`` (segmentation: right under
``images/`` and ``masks/``; classification: above the class folders) fixes the split.
"""
from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import json
import posixpath
from typing import Iterable, Sequence

from schemas.layout import SPLITS
from schemas.rejected import rejected_record

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".gif",
                    ".svs", ".ndpi", ".btf", ".tf8", ".zarr")   # the last five: region-readable (large) sources


@dataclasses.dataclass(frozen=True)
class Source:
    id: str                      # relative path without extension, '/'-separated
    image_path: str
    mask_path: str | None = None
    label: str | None = None     # classification: class folder name
    split: str | None = None     # set by a split folder, else assigned by hash
    num_bytes: int = 0           # size of its file(s) on disk: the basis of shard planning
    pixel_size_um: float | None = None   # µm/px, from its header or --pixel-size, when known


def relative_parts(path: str, root: str) -> list[str]:
    """Path components of ``path`` below ``root`` (works for local paths and gs:// URLs)."""
    root = root.rstrip("/") + "/"
    if not path.startswith(root):
        raise ValueError(f"{path} is not under {root}")
    return [p for p in path[len(root):].split("/") if p]


def split_folder(parts: list[str]) -> tuple[str | None, list[str]]:
    if len(parts) > 1 and parts[0] in SPLITS:
        return parts[0], parts[1:]
    return None, parts


def stem_key(parts: list[str]) -> str:
    """``['a', 'b.PNG']`` -> ``'a/b'``: the id shared by an image and its mask (an OME
    ``.ome.tif`` / ``.ome.zarr`` loses ``.ome`` too, so ``A.svs`` pairs with ``A.ome.tiff``)."""
    stem = posixpath.splitext("/".join(parts))[0]
    return stem[:-4] if stem.lower().endswith(".ome") else stem


def segmentation_key(path: str, root: str) -> tuple[str, str]:
    """(pair key, kind) of a file under ``root/images`` or ``root/masks``."""
    kind, *rest = relative_parts(path, root)
    split, rest = split_folder(rest)
    key = stem_key(rest)
    return (f"{split}/{key}" if split else key), kind


def pair(key: str, images: Sequence[str], masks: Sequence[str]) -> tuple[Source | None, list[dict]]:
    """One source from the files sharing ``key``, or rejected records saying why not."""
    bad = [rejected_record(p, "not_an_image", f"not an image file extension (expected one of {IMAGE_EXTENSIONS})")
           for p in sorted(images) + sorted(masks) if not has_image_extension(p)]
    images = sorted(p for p in images if has_image_extension(p))
    masks = sorted(p for p in masks if has_image_extension(p))
    if bad:
        source, more = pair(key, images, masks) if images or masks else (None, [])
        return source, bad + more
    if len(images) > 1:
        return None, [rejected_record(p, "duplicate_id", f"{len(images)} images share the id {key!r}: {images}")
                      for p in images] + [
            rejected_record(m, "duplicate_id", f"mask of the ambiguous id {key!r}") for m in masks]
    if not images:
        return None, [rejected_record(m, "missing_image", f"no image for mask id {key!r}") for m in masks]
    if not masks:
        return None, [rejected_record(images[0], "missing_mask", f"no mask for image id {key!r}")]
    extra = [rejected_record(m, "duplicate_id", f"{len(masks)} masks share the id {key!r}") for m in masks[1:]]
    split = key.split("/", 1)[0] if key.split("/", 1)[0] in SPLITS and "/" in key else None
    return Source(id=key, image_path=images[0], mask_path=masks[0], split=split), extra


def classification_source(path: str, root: str) -> Source:
    parts = relative_parts(path, root)
    split, parts = split_folder(parts)
    if len(parts) < 2:
        raise ValueError(f"{path}: files must be inside a class folder")
    key = stem_key(parts)
    return Source(id=f"{split}/{key}" if split else key, image_path=path, label=parts[0], split=split)


def hash_fraction(text: str) -> float:
    """A stable number in [0, 1) from ``text`` (same on every machine and Python run)."""
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "big") / 2.0**64


def assign_split(source_id: str, fractions: Sequence[float], salt: str = "") -> str:
    """Split of a source by a stable hash of its id: adding sources never moves others."""
    u, edge = hash_fraction(salt + source_id), 0.0
    for name, fraction in zip(SPLITS, fractions):
        edge += fraction
        if u < edge:
            return name
    return SPLITS[len(fractions) - 1]


def stratified_splits(ids: Iterable[str], fractions: Sequence[float], salt: str = "") -> dict[str, str]:
    """Splits for the sources of one class: hash order, counts by largest remainder.

    Every split with a non-zero fraction gets at least one source when the class has at
    least that many, so every class appears in every split it can. Within a class the
    assignment depends on the other ids of that class (the price of stratification).
    """
    ids = sorted(ids, key=lambda i: hash_fraction(salt + i))
    active = [i for i, f in enumerate(fractions) if f > 0]
    counts = [0] * len(fractions)
    if len(ids) >= len(active):
        for i in active:
            counts[i] = 1
    remaining = len(ids) - sum(counts)
    total = sum(fractions)
    ideal = [remaining * f / total for f in fractions]
    extra = [int(x) for x in ideal]
    order = sorted(range(len(fractions)), key=lambda i: ideal[i] - extra[i], reverse=True)
    for i in order[: remaining - sum(extra)]:
        extra[i] += 1
    counts = [c + e for c, e in zip(counts, extra)]
    out, start = {}, 0
    for name, count in zip(SPLITS, counts):
        out.update({i: name for i in ids[start:start + count]})
        start += count
    return out


def fold_splits(ids: Iterable[str], folds: int, fold: int, salt: str = "") -> dict[str, str]:
    """k-fold: the ids in stable hash order are dealt into ``folds`` folds in turn (so even 10
    sources fill every fold); fold ``fold`` is val, the others train. A source's fold depends
    on the other ids (the price of folds that are never empty)."""
    ordered = sorted(ids, key=lambda i: (hash_fraction(salt + i), i))
    return {i: "val" if n % folds == fold else "train" for n, i in enumerate(ordered)}


def split_table(data: bytes, name: str) -> dict[str, str]:
    """``--split-file``: {source id: split} from JSON (``{"a": "train", ...}``) or CSV rows
    ``id,split`` (a header row ``id,split`` is allowed). Ids are source ids (paths without
    extension; an image extension given is dropped). ValueError naming the file and the row."""
    text = data.decode("utf-8-sig")
    if name.lower().endswith(".json") or text.lstrip().startswith("{"):
        try:
            rows = list(json.loads(text).items())
        except (ValueError, AttributeError) as e:
            raise ValueError(f"{name}: not a JSON object of id -> split ({e})") from None
    else:
        rows = [tuple(cell.strip() for cell in row) for row in csv.reader(io.StringIO(text)) if any(row)]
        if rows and [c.lower() for c in rows[0]] == ["id", "split"]:
            rows = rows[1:]
    table: dict[str, str] = {}
    for n, row in enumerate(rows, 1):
        if len(row) != 2 or not isinstance(row[1], str) or row[1].strip().lower() not in SPLITS:
            raise ValueError(f"{name}: entry {n} {row!r} is not an id and one of {', '.join(SPLITS)}")
        key = str(row[0]).strip().removeprefix("./")
        key = stem_key([key]) if has_image_extension(key) else key
        split = row[1].strip().lower()
        if table.setdefault(key, split) != split:
            raise ValueError(f"{name}: {key!r} is given two splits ({table[key]} and {split})")
    if not table:
        raise ValueError(f"{name}: names no source")
    return table


def has_image_extension(path: str) -> bool:
    return posixpath.splitext(path)[1].lower() in IMAGE_EXTENSIONS
