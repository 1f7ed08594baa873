"""How sources get their split: the hash fractions, ``--split-file`` or ``--folds/--fold``;
what the dataset records about it, and the warning when a split the user asked for ends empty."""
from __future__ import annotations

import hashlib

from pipelines.beam.files import read_bytes
from pipelines.core import sources
from pipelines.preprocess import transforms as pt
from schemas.layout import SPLITS

SMALL_DATA_REMEDY = "for a small dataset pass --split-file FILE (id,split rows) or --folds K --fold I"


def read_split_file(path: str) -> tuple[dict[str, str], str]:
    """({source id: split}, the file's sha256) or SystemExit naming the problem."""
    try:
        data = read_bytes(path)
    except OSError as e:
        raise SystemExit(f"tessera preprocess: --split-file {path}: cannot read it ({type(e).__name__}: {e})") from None
    try:
        return sources.split_table(data, path), hashlib.sha256(data).hexdigest()
    except (ValueError, UnicodeDecodeError) as e:
        raise SystemExit(f"tessera preprocess: --split-file {e}") from None


def plan(config) -> tuple[dict[str, str] | None, dict]:
    """(the split table or None, the record of the split for config.json)."""
    if config.split_file:
        table, digest = read_split_file(config.split_file)
        counts = {s: sum(v == s for v in table.values()) for s in SPLITS}
        return table, {"mode": "file", "file": config.split_file, "sha256": digest, "ids": counts}
    if config.folds:
        return None, {"mode": "folds", "folds": config.folds, "fold": config.fold, "salt": config.split_salt,
                      "rule": "sources in stable hash order dealt into folds in turn (per class for "
                              "classification); fold --fold is val, the others train"}
    return None, {"mode": "hash", "fractions": list(config.split_fractions), "salt": config.split_salt}


def unmatched_warning(table: dict[str, str] | None, inputs: list[str], config) -> str | None:
    """A warning naming the ``--split-file`` ids that match no listed image (typos, other folders)."""
    if table is None:
        return None
    root, ids = config.input.rstrip("/"), set()
    for path in inputs:
        try:
            ids.add(sources.segmentation_key(path, root)[0] if config.layout == "segmentation"
                    else sources.classification_source(path, root).id)
        except ValueError:
            continue
    unmatched = sorted(set(table) - ids)
    if not unmatched:
        return None
    shown = ", ".join(unmatched[:5]) + (f" and {len(unmatched) - 5} more" if len(unmatched) > 5 else "")
    return (f"tessera preprocess: warning: {len(unmatched)} of the {len(table)} ids in --split-file "
            f"{config.split_file} match no image under --input: {shown}")


def assign(listed, config, table: dict[str, str] | None, stratify: bool):
    """(sources with their split, rejected records or None)."""
    if table is not None:
        out = listed | "AssignSplits" >> pt.AssignSplitsFromTable(table, config.split_file)
        return out.sources, out.rejected
    return listed | "AssignSplits" >> pt.AssignSplits(config.split_fractions, stratify=stratify,
                                                     salt=config.split_salt, folds=config.folds,
                                                     fold=config.fold), None


def expected(config, table: dict[str, str] | None) -> list[str]:
    """The splits the settings ask to fill."""
    if table is not None:
        return [s for s in SPLITS if s in table.values()]
    if config.folds:
        return ["train", "val"]
    return [s for s, f in zip(SPLITS, config.split_fractions) if f > 0]


def empty_warnings(stats: dict, config, table: dict[str, str] | None) -> list[str]:
    """One line per split that was asked for but holds no example."""
    written = sum(stats.get("sources", {}).values())
    lines = []
    for split in expected(config, table):
        if stats["examples"].get(split, 0):
            continue
        if table is None and not config.folds:
            why = (f"none of the {written} sources written is in it (hash split, --split-fractions "
                   f"{','.join(f'{f:g}' for f in config.split_fractions)}); {SMALL_DATA_REMEDY}")
        else:
            why = f"none of the {written} sources written is in it (see rejected.jsonl)"
        lines.append(f"tessera preprocess: warning: the {split} split is empty: {why}")
    return lines
