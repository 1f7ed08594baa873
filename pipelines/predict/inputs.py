"""What a prediction run works on: listing the inputs, image ids, shards, and what is already done.

``--input`` is a folder (every file below it), a glob (``*``, ``?``, ``[``), or a ``.txt``
file listing one path per line (blank lines and ``#`` comments ignored); local or any
Beam FileSystems scheme. An image's id is its path relative to the folder (the glob's
fixed prefix, or the listed paths' common folder), without extension, '/'-separated; its
outputs are named by it. Files without an image extension and files that share an id (``a.png``, ``a.tif``)
become rejected records here.

Shards: an image belongs to shard ``int(sha256(id)[:8]) % N``. This depends on the id
alone, so every image is in exactly one shard for any N, and pods that list the input at
slightly different moments still agree on who does what.
"""
from __future__ import annotations

import hashlib
import os
import posixpath
import re

from apache_beam.io.filesystems import FileSystems

from pipelines.beam.files import read_bytes
from pipelines.core.sources import has_image_extension
from pipelines.predict import outputs
from pipelines.predict.transforms import ImageInput
from schemas import layout as names
from schemas.rejected import rejected_record

_GLOB = re.compile(r"[*?\[]")


def absolute(path: str) -> str:
    """Local paths made absolute (FileSystems lists them so); URLs unchanged."""
    return path if FileSystems.get_scheme(path) not in (None, "file") else os.path.abspath(path)


def _match(pattern: str) -> list:
    return FileSystems.match([pattern])[0].metadata_list


def _common_folder(paths: list[str]) -> str:
    parts = [p.split("/")[:-1] for p in paths]
    common = parts[0]
    for other in parts[1:]:
        n = 0
        while n < min(len(common), len(other)) and common[n] == other[n]:
            n += 1
        common = common[:n]
    return "/".join(common)


def _listed(list_file: str) -> list[tuple[str, int]]:
    """Paths named in a list file (relative ones resolved against its folder); sizes unknown (0).

    They are not checked here (one request per file would dominate large lists on object
    stores); a missing one is rejected by the worker that reads it.
    """
    text = read_bytes(list_file).decode("utf-8")
    base = posixpath.dirname(list_file)
    found = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            relative = not (FileSystems.get_scheme(line) or line.startswith("/"))
            found.append((posixpath.normpath(posixpath.join(base, line)) if relative else line, 0))
    return found


def list_files(spec: str) -> tuple[list[tuple[str, int]], str, list[dict]]:
    """(sorted [(path, bytes)], root folder, rejected records) for ``--input``."""
    spec = absolute(spec)
    if _GLOB.search(spec):
        root = spec[:_GLOB.search(spec).start()].rsplit("/", 1)[0]
        files, bad = [(m.path, m.size_in_bytes) for m in _match(spec)], []
    elif spec.endswith(".txt") and not spec.endswith("/"):
        files, bad = _listed(spec), []
        root = _common_folder([p for p, _ in files]) if files else posixpath.dirname(spec)
    else:
        root = spec.rstrip("/")
        files, bad = [(m.path, m.size_in_bytes) for m in _match(f"{root}/**")], []
    if not files and not bad:
        raise FileNotFoundError(f"--input {spec}: no files found")
    return sorted(set(files)), root, bad


def image_id(path: str, root: str) -> str:
    relative = path[len(root.rstrip("/")) + 1:] if root and path.startswith(root.rstrip("/") + "/") else path
    return posixpath.splitext(relative.lstrip("/"))[0]


def list_inputs(spec: str, exclude: str | None = None) -> tuple[list[ImageInput], list[dict]]:
    """Images to predict (sorted by id) and rejected records (not images, shared ids).

    Files under ``exclude`` (the output directory, when it lies inside the input) are not inputs.
    """
    files, root, bad = list_files(spec)
    if exclude:
        inside = absolute(exclude).rstrip("/") + "/"
        files = [(p, n) for p, n in files if not p.startswith(inside)]
    by_id: dict[str, list[str]] = {}
    sizes = dict(files)
    for path, _ in files:
        if has_image_extension(path):
            by_id.setdefault(image_id(path, root), []).append(path)
        else:
            bad.append({**rejected_record(path, "not_an_image", "not an image file extension"), "image_id": image_id(path, root)})
    good = []
    for key, paths in sorted(by_id.items()):
        if len(paths) == 1:
            good.append(ImageInput(key, paths[0], sizes[paths[0]]))
        else:
            bad += [{**rejected_record(p, "duplicate_id", f"{len(paths)} files share the id {key!r}: {paths}"), "image_id": key}
                    for p in paths]
    return good, bad


def shard_of(key: str, num_shards: int) -> int:
    return int(hashlib.sha256(key.encode("utf-8")).hexdigest()[:8], 16) % num_shards


def in_shard(key: str, num_shards: int, shard_index: int) -> bool:
    if not 0 <= shard_index < num_shards:
        raise ValueError(f"--shard-index must be in [0, {num_shards}), got {shard_index}")
    return shard_of(key, num_shards) == shard_index


def existing(root: str, folder: str) -> set[str]:
    """Relative paths of the files under ``root/folder`` (one listing)."""
    prefix = f"{root.rstrip('/')}/"
    return {m.path[len(prefix):] for m in _match(f"{prefix}{folder}/**")}


def completed(layout: outputs.OutputLayout, inputs: list[ImageInput]) -> set[str]:
    """Ids whose row (for these settings) and every output file exist."""
    files = existing(layout.root, layout.rows_dir())
    for folder in names.IMAGE_OUTPUT_DIRS:
        files |= existing(layout.root, folder)
    return {i.image_id for i in inputs
            if layout.row(i.image_id) in files and all(p in files for p in layout.outputs(i.image_id))}
