"""Whether a recorded run is this one: a backup to resume (its settings and the dataset
version it trained on) and an export already made from this configuration's best epoch."""
from __future__ import annotations

import json

import tensorflow as tf

from trainer import export
from trainer.config import TrainConfig

# settings that may change between a run and its resumption
RESUMABLE_CHANGES = ("epochs", "patience", "verbose", "image_summaries", "checkpoint_every", "model_dir",
                     "checkpoint_dir", "backup_dir", "log_dir", "keep_versions", "verify_digests")
# the backup's record of the dataset it was trained on (_SUCCESS "fingerprint")
FINGERPRINT_KEY = "dataset_fingerprint"


class ResumeRefused(ValueError):
    """The backup belongs to a run with other settings or on another dataset."""


def check_backup_config(cfg: TrainConfig, fingerprint: str, backup_dir: str, chief: bool) -> None:
    """A backup belongs to one configuration and one dataset version (``fingerprint``): refuse
    to resume one written by another (the chief checks; the other workers follow it). A
    backup written before fingerprints were recorded is checked on its settings only."""
    if not chief:
        return
    path = f"{backup_dir}/config.json"
    mine = {k: v for k, v in json.loads(cfg.to_json()).items() if k not in RESUMABLE_CHANGES}
    if tf.io.gfile.exists(path):
        with tf.io.gfile.GFile(path) as handle:
            theirs = json.load(handle)
        recorded = theirs.pop(FINGERPRINT_KEY, None)
        theirs = {k: v for k, v in at_defaults(theirs).items() if k not in RESUMABLE_CHANGES}
        diff = sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k))
        if diff:
            raise ResumeRefused(f"{backup_dir} holds the backup of a run with different settings ({diff}); "
                                f"use another --model-dir / --backup-dir or delete the backup")
        if recorded is not None and recorded != fingerprint:
            raise ResumeRefused(
                f"{backup_dir} holds the backup of a run on another version of the dataset {cfg.data} "
                f"(fingerprint {recorded!r}, now {fingerprint!r}): it was replaced since that run started; "
                f"delete the backup to train on the new dataset, or use another --model-dir / --backup-dir")
    else:
        tf.io.gfile.makedirs(backup_dir)
        with tf.io.gfile.GFile(path, "w") as handle:
            handle.write(json.dumps({**mine, FINGERPRINT_KEY: fingerprint}, indent=2, sort_keys=True))


def at_defaults(recorded: dict) -> dict:
    """A recorded configuration with the settings added since it was written at their
    defaults, so a backup of an older Tessera still resumes when nothing was changed."""
    return _with_defaults(recorded, json.loads(TrainConfig().to_json()))


def _with_defaults(recorded: dict, defaults: dict) -> dict:
    out = dict(recorded)
    for key, value in defaults.items():
        if key not in out:
            out[key] = value
        elif isinstance(value, dict) and isinstance(out[key], dict):
            out[key] = _with_defaults(out[key], value)
    return out


def current_export(cfg: TrainConfig, best_epoch: int):
    """The model card already exported from this configuration's best epoch, if any (the
    current version's: a version an interrupted export left unpointed is no export)."""
    path = f"{export.current_export(cfg.model_dir)}/{export.mc.MODEL_CARD_FILE}"
    if not tf.io.gfile.exists(path):
        return None
    card = export.load_card(cfg.model_dir)
    same = at_defaults(card.config) == json.loads(cfg.to_json()) and card.metrics.get("best_epoch") == best_epoch
    return card if same else None
