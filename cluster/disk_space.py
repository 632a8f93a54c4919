"""Room for a run's checkpoints, checked before Ray starts. A full disk otherwise shows up as pyarrow's "No space
left on device" traceback when the first checkpoint is written: after an epoch of training (hours on ImageNet)."""
import dataclasses
import os
import shutil
import tempfile
from pathlib import Path

import torch

from cluster.build_model import build_model
from cluster.run_files import CHECKPOINTS_KEPT, checkpoint_dirs

GB = 1e9


@dataclasses.dataclass
class Need:
    folder: Path  # the nearest existing folder: where the bytes will land
    moved_by: str  # what the user changes to put them elsewhere
    bytes: int


def checkpoint_bytes(cfg):
    """One checkpoint's size: every weight and (momentum > 0) its SGD momentum buffer in fp32; the rest is a few KB.
    Counted on the meta device, so nothing is allocated."""
    with torch.device("meta"):
        model = build_model(cfg)
    copies = 2 if cfg.momentum else 1  # SGD keeps no buffer without momentum
    return copies * 4 * sum(p.numel() for p in model.parameters())


def existing_folder(path):
    return next(p for p in (Path(path), *Path(path).parents) if p.exists())


def disk_of(folder):
    return os.stat(folder).st_dev


def needs(cfg, storage_is_local, size):
    """Ray keeps CHECKPOINTS_KEPT checkpoints and persists a new one before it deletes the oldest; rank 0 first
    writes each one to its temporary folder (cluster/worker.py). A resumed run's checkpoints already take their
    room. `size`: one checkpoint's bytes."""
    out = []
    if storage_is_local:
        # no name yet (a config made outside launch.py): a new run, nothing of its own on disk
        existing = len(checkpoint_dirs(cfg.storage, cfg.name)) if cfg.name else 0
        new = max(0, min(CHECKPOINTS_KEPT + 1, existing + cfg.epochs) - existing)
        out.append(Need(existing_folder(cfg.storage), "--storage", new * size))
    if not cfg.address:  # on an existing cluster the temporary folder is on its nodes, not this machine
        out.append(Need(existing_folder(tempfile.gettempdir()), "TMPDIR", size))
    return out


def shortfall(cfg, storage_is_local):
    """None, or a message naming the folders on a disk without room for the checkpoints they will hold."""
    size = checkpoint_bytes(cfg)
    by_disk = {}
    for need in needs(cfg, storage_is_local, size):
        by_disk.setdefault(disk_of(need.folder), []).append(need)
    for group in by_disk.values():
        free, total = shutil.disk_usage(group[0].folder).free, sum(n.bytes for n in group)
        if free < total:
            where = " and ".join(f"{n.folder} ({n.moved_by})" for n in group)
            return (f"{where}: {free / GB:.1f} GB free, and training needs {total / GB:.1f} GB there for checkpoints "
                    f"({size / GB:.2f} GB each: {CHECKPOINTS_KEPT} kept, a new one written before "
                    "the oldest goes, and rank 0's temporary copy). Free space there, or point --storage (the "
                    "checkpoints) or TMPDIR (the temporary copy) at a disk with room.")
    return None
