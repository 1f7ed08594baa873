"""What a prediction run works on: listing the inputs, image ids, shards, and what is already done.

``--input`` is a folder (every file below it), a glob (``*``, ``?``, ``[``), a ``.txt``
file listing one path per line (blank lines and ``#`` comments ignored), or one image file
(or zarr store); local or any Beam FileSystems scheme. An image's id is its path relative
to the folder (the glob's fixed prefix, the listed paths' common folder, the one file's
folder), without extension, '/'-separated; its outputs are named by it. Files without an
image extension and files that share an id (``a.png``, ``a.tif``) become rejected records here.

Shards: an image belongs to shard ``int(sha256(id)[:8]) % N``. This depends on the id
alone, so every image is in exactly one shard for any N, and pods that list the input at
slightly different moments still agree on who does what.
"""
from __future__ import annotations

import concurrent.futures
import hashlib
import os
import posixpath
import re
import unicodedata

from apache_beam.io.filesystems import FileSystems

from pipelines.beam.files import check_apart, read_bytes, read_json
from pipelines.core import regions
from pipelines.core.sources import has_image_extension
from pipelines.predict import outputs
from pipelines.predict.transforms import ImageInput
from schemas import layout as names
from schemas.rejected import rejected_record

_GLOB = re.compile(r"[*?\[]")


def absolute(path: str) -> str:
    """Local paths (``file://`` ones too) made absolute (FileSystems lists them so); URLs unchanged."""
    return path if FileSystems.get_scheme(path) not in (None, "file") else os.path.abspath(path.removeprefix("file://"))


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


def normalise(path: str) -> str:
    """``path`` with ``.`` and ``..`` resolved (below a URL's bucket, for URLs)."""
    scheme = FileSystems.get_scheme(path)
    if scheme in (None, "file"):
        return posixpath.normpath(path)
    head, _, rest = path.partition("://")
    bucket, _, key = rest.partition("/")
    key = posixpath.normpath("/" + key).lstrip("/")
    return f"{head}://{bucket}/{key}"


def _listed(list_file: str) -> list[tuple[str, int, float]]:
    """Paths named in a list file (relative ones resolved against its folder, all normalised);
    sizes and times unknown (0).

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
            found.append((normalise(posixpath.join(base, line) if relative else line), 0, 0.0))
    return found


def _one_input(spec: str) -> list[tuple[str, int, float]] | None:
    """``spec`` as an input of one: an existing file, or a zarr store (a folder); else None."""
    if spec.endswith("/") and not spec.rstrip("/").lower().endswith(".zarr"):
        return None
    if spec.rstrip("/").lower().endswith(".zarr"):
        return _listing(_match(f"{spec.rstrip('/')}/**")) or None
    if FileSystems.get_scheme(spec) in (None, "file") and not os.path.isfile(spec.removeprefix("file://")):
        return None
    found = [m for m in _match(spec) if m.path == spec]
    return _listing(found) or None


def comparable(path: str) -> str:
    """``path`` as the overlap check compares it: URLs with ``.``, ``..`` and repeated or trailing
    slashes resolved (local paths are resolved there, symlinks included)."""
    return path if FileSystems.get_scheme(path) in (None, "file") else normalise(path.rstrip("/"))


def list_files(spec: str) -> tuple[list[tuple[str, int, float]], str, bool]:
    """(sorted [(path, bytes, modified)], root folder, whether the inputs were named one by one:
    by a list file, or ``--input`` itself is one image file or zarr store) for ``--input``."""
    spec = absolute(spec)
    one = None if _GLOB.search(spec) or spec.endswith(".txt") else _one_input(spec)
    if _GLOB.search(spec):
        root = spec[:_GLOB.search(spec).start()].rsplit("/", 1)[0]
        files = _listing(_match(spec))
    elif spec.endswith(".txt") and not spec.endswith("/"):
        files = _listed(spec)
        root = _common_folder([p for p, _, _ in files]) if files else posixpath.dirname(spec)
    elif one:
        files, root = one, posixpath.dirname(spec.rstrip("/"))
    else:
        root = spec.rstrip("/")
        files = _listing(_match(f"{root}/**"))
    if not files:
        raise FileNotFoundError(f"--input {spec}: no files found (a folder, a glob, a .txt list of paths, "
                                "or one image file)")
    named = bool(one) or (spec.endswith(".txt") and not _GLOB.search(spec))
    return sorted(set(files)), root, named


def _listing(found: list) -> list[tuple[str, int, float]]:
    return [(m.path, m.size_in_bytes, m.last_updated_in_seconds or 0.0) for m in found]


_UNSAFE = re.compile(r"[\x00-\x1f\x7f\\]")


def image_id(path: str, root: str) -> str:
    """The id (and output name) of the input at ``path``: its path below ``root`` without
    extension, and without ``.ome`` (``slide.ome.tif`` is ``slide``, as preprocessing names it).
    ValueError when it could name a file outside the prediction directory."""
    prefix = root.rstrip("/") + "/"
    if root and not path.startswith(prefix):
        raise ValueError(f"{path} is not below the input folder {root}")
    relative = posixpath.splitext(path[len(prefix):] if root else path)[0]
    relative = relative[:-len(".ome")] if relative.lower().endswith(".ome") else relative
    parts = relative.split("/")
    if not relative or any(part in ("", ".", "..") for part in parts) or _UNSAFE.search(relative):
        raise ValueError(f"{path}: {relative!r} cannot name an output safely (empty, '.', '..' or control parts)")
    return relative


def _zarr_stores(files: list[tuple[str, int, float]]) -> list[tuple[str, int, float]]:
    """A zarr store is one input (its chunk files are not): (store, bytes, newest change)."""
    stores: dict[str, tuple[int, float]] = {}
    others = []
    for path, size, modified in files:
        at = path.lower().find(".zarr/")
        if at < 0:
            others.append((path, size, modified))
            continue
        store = path[:at + len(".zarr")]
        total, newest = stores.get(store, (0, 0.0))
        stores[store] = (total + size, max(newest, modified))
    return sorted(others + [(s, n, m) for s, (n, m) in stores.items()])


def output_key(image_id: str) -> str:
    """Ids equal under this key name one output file on some file system (case, Unicode form)."""
    return unicodedata.normalize("NFC", image_id).casefold()


def list_inputs(spec: str, output: str | None = None) -> tuple[list[ImageInput], list[dict], str]:
    """Images to predict (sorted by id) and rejected records: not images, unsafe names, and
    inputs sharing an id or an output name (``a.png`` and ``a.tif``, ``A.png`` and ``a.png``).
    An ``output`` inside the input folder (or the reverse) is refused (ValueError). The third
    value is the input root (what ids are relative to, and symlinks must stay inside)."""
    files, root, from_list = list_files(spec)
    files = _zarr_stores(files)
    if output:  # inputs named one by one are checked so: their (common) folder may hold the output
        for reads in [p for p, _, _ in files] if from_list else [root]:
            check_apart(comparable(reads), comparable(output))
    bad: list[dict] = []
    by_key: dict[str, list[tuple[str, str]]] = {}
    listed = {path: (size, modified) for path, size, modified in files}
    for path, _, _ in files:
        try:
            key = image_id(path, root)
        except ValueError as e:
            bad.append(rejected_record(path, "unsafe_name", str(e), image_id=path))
            continue
        if has_image_extension(path) or regions.is_region_readable(path):
            by_key.setdefault(output_key(key), []).append((key, path))
        else:
            bad.append(rejected_record(path, "not_an_image", "not an image file extension", image_id=key))
    good = []
    for _, claims in sorted(by_key.items()):
        if len(claims) == 1:
            key, path = claims[0]
            good.append(ImageInput(key, path, *listed[path]))
            continue
        paths = sorted(p for _, p in claims)
        for key, path in claims:
            reason = "duplicate_id" if len({k for k, _ in claims}) == 1 else "output_name_collision"
            bad.append(rejected_record(path, reason, f"{len(paths)} inputs would write the same outputs "
                                                     f"({key!r}): {paths}", image_id=key))
    return sorted(good, key=lambda i: i.image_id), bad, root


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
    """Ids whose row (for these settings) and every output file exist, for the input as it is
    now: an input whose size or modification time changed since its row was written is not
    done (its outputs are predicted again and replaced)."""
    files = existing(layout.root, layout.rows_dir())
    for folder in names.IMAGE_OUTPUT_DIRS:
        files |= existing(layout.root, folder)
    candidates = [i for i in inputs if layout.row(i.image_id) in files]
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        rows = list(pool.map(lambda i: read_json(layout.path(layout.row(i.image_id))), candidates))
        now = list(pool.map(lambda i: i if i.size_bytes else _stat(i), candidates))
    return {i.image_id for i, row, current in zip(candidates, rows, now)
            if all(p in files for p in row_outputs(row, layout))
            and current is not None and row.get("source_signature", current.signature) == current.signature}


def row_outputs(row: dict, layout: outputs.OutputLayout) -> list[str]:
    """The files an image's row vouches for (a large image's pyramids by their metadata; with
    instances, its instance pyramid and its GeoJSON too)."""
    if (row.get("mask_path") or "").endswith(".ome.zarr"):
        return [names.label_image_marker(row["image_id"]), row["overlay_path"],
                *([row["seam_map_path"]] if row.get("seam_map_path") else []),
                *([f"{row['probabilities_path']}/.zattrs"] if row.get("probabilities_path") else []),
                *([f"{row['instances_path']}/.zattrs", names.geojson_path(row["image_id"])]
                  if row.get("instances_path") else [])]
    return layout.outputs(row["image_id"])


def _stat(item: ImageInput) -> ImageInput | None:
    found = _match(item.path)
    if not found:
        return None
    return ImageInput(item.image_id, item.path, found[0].size_in_bytes, found[0].last_updated_in_seconds or 0.0)
