"""``tessera train`` / ``python -m trainer.task``: train a model on a Tessera dataset and
export it with its model card.

    tessera train --data ./dataset --model-dir ./model --model res-attention-unet \\
        --attention cbam --loss focal+dice --epochs 50 --batch-size 16
    tensorboard --logdir ./model/logs

Run the same command again after an interruption and it resumes where the last backup
left it. With TF_CONFIG naming several workers, run it once per worker.
"""
from __future__ import annotations

import sys

from trainer import cluster
from trainer.config import build_parser, parse_config

__all__ = ["build_parser", "run"]


def run(argv: list[str] | None = None) -> int:
    try:
        cfg = parse_config(argv)
        cluster.export_tf_config()  # a Kubernetes Indexed Job's variables -> TF_CONFIG (if unset)
    except ValueError as error:
        print(f"tessera train: {error}", file=sys.stderr)
        return 2
    from trainer import distribute
    from trainer.data import DatasetDamaged, DistanceHeadRefused, NotADataset
    from trainer.loop import (
        NothingToExport,
        Preempted,
        XlaRefused,
        train,
    )
    from trainer.resume import ResumeRefused

    try:
        train(cfg)
    except (ResumeRefused, DatasetDamaged, NotADataset, XlaRefused, DistanceHeadRefused) as error:
        print(f"tessera train: {error}", file=sys.stderr)
        return 2
    except Preempted as error:
        print(f"tessera train: {error}; exiting with {cluster.PREEMPTED_EXIT_CODE} (retriable)", file=sys.stderr)
        return cluster.PREEMPTED_EXIT_CODE
    except NothingToExport as error:
        print(f"tessera train: {error}", file=sys.stderr)
        return 1
    except Exception as error:  # a lost peer becomes an exit code; anything else propagates
        if distribute.cluster_size() > 1 and cluster.is_peer_lost(error):
            print(f"tessera train: lost a peer worker ({type(error).__name__}: {error}); exiting with "
                  f"{cluster.PEER_LOST_EXIT_CODE} so the Job restarts the workers, which resume from the backup",
                  file=sys.stderr)
            return cluster.PEER_LOST_EXIT_CODE
        raise
    return 0


if __name__ == "__main__":
    sys.exit(run())
