"""A disk without room for the checkpoints is refused before Ray starts, naming the folder and the sizes; the size
it counts is the size of a checkpoint as cluster/worker.py writes it."""
import collections
import dataclasses
import io
from pathlib import Path

import pytest
import torch

from cluster import disk_space, launch
from cluster.loop import make_optimizer
from model import AlexNet

Usage = collections.namedtuple("Usage", "total used free")


@dataclasses.dataclass
class Cfg:  # the fields disk_space reads from a TrainConfig
    storage: str
    name: str | None = "run"
    epochs: int = 90
    address: str | None = None
    momentum: float = 0.9
    num_classes: int = 10
    activation: str = "relu"
    lrn: bool = True
    overlapping_pool: bool = True
    dropout: float = 0.5
    init: str = "paper"


@pytest.mark.parametrize("momentum", [0.9, 0.0])
def test_the_counted_size_is_a_real_checkpoints_size_within_1_percent(momentum):
    model = AlexNet(10)
    opt = make_optimizer(model, 0.01, momentum, 5e-4, decay_biases=False)
    torch.nn.functional.cross_entropy(model(torch.randn(2, 3, 64, 64)), torch.tensor([0, 1])).backward()
    opt.step()  # SGD's momentum buffers (if any) exist from the first step on
    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "epoch": 0}, buf)
    assert disk_space.checkpoint_bytes(Cfg(storage="/x", momentum=momentum)) == pytest.approx(buf.tell(), rel=0.01)


@pytest.fixture
def two_disks(tmp_path, monkeypatch):
    """--storage under tmp_path/a and TMPDIR under tmp_path/b, on disks with the free bytes the test sets."""
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    monkeypatch.setattr(disk_space.tempfile, "gettempdir", lambda: str(tmp_path / "b"))
    free = {}
    monkeypatch.setattr(disk_space, "disk_of", lambda folder: Path(folder).relative_to(tmp_path).parts[0])
    monkeypatch.setattr(disk_space.shutil, "disk_usage", lambda p: Usage(0, 0, free[Path(p).name]))
    return tmp_path, free


def test_each_disk_needs_room_for_what_lands_on_it(two_disks):
    tmp_path, free = two_disks
    size = disk_space.checkpoint_bytes(Cfg(storage="/x"))
    cfg = Cfg(storage=str(tmp_path / "a" / "ckpt"))  # a folder still to be made: its nearest existing one counts
    free.update(a=3 * size, b=size)  # 2 kept + 1 being written on --storage's disk, the temporary copy on TMPDIR's
    assert disk_space.shortfall(cfg, storage_is_local=True) is None
    free.update(a=3 * size - 1)
    msg = disk_space.shortfall(cfg, storage_is_local=True)
    assert msg.startswith(f"{tmp_path / 'a'} (--storage): {(3 * size - 1) / 1e9:.1f} GB free") and "TMPDIR)" not in msg
    free.update(a=3 * size, b=size - 1)
    assert disk_space.shortfall(cfg, storage_is_local=True).startswith(f"{tmp_path / 'b'} (TMPDIR)")
    # object storage is nobody's disk here; on an existing cluster (--address) the temporary copy is on its nodes
    free.update(a=0, b=size)
    assert disk_space.shortfall(Cfg(storage="s3://b/r"), storage_is_local=False) is None
    free.update(b=size - 1)
    assert "(TMPDIR)" in disk_space.shortfall(Cfg(storage="s3://b/r"), storage_is_local=False)
    assert disk_space.shortfall(Cfg(storage="s3://b/r", address="10.0.0.1:6379"), storage_is_local=False) is None


def test_one_disk_adds_up_and_a_resumed_runs_checkpoints_are_counted_as_there(tmp_path, monkeypatch):
    monkeypatch.setattr(disk_space.tempfile, "gettempdir", lambda: str(tmp_path))
    size = disk_space.checkpoint_bytes(Cfg(storage="/x"))
    free = {"bytes": 4 * size}  # 3 at --storage + the temporary copy, all on tmp_path's disk
    monkeypatch.setattr(disk_space.shutil, "disk_usage", lambda p: Usage(0, 0, free["bytes"]))
    cfg = Cfg(storage=str(tmp_path))
    assert disk_space.shortfall(cfg, storage_is_local=True) is None
    free["bytes"] -= 1
    msg = disk_space.shortfall(cfg, storage_is_local=True)
    assert f"{tmp_path} (--storage) and {tmp_path} (TMPDIR)" in msg and f"{4 * size / 1e9:.1f} GB there" in msg
    for kept in ("checkpoint_2026-11-30_10-00-00.1", "checkpoint_2026-11-30_11-00-00.2"):
        (tmp_path / "run" / kept).mkdir(parents=True)
    free["bytes"] = 2 * size  # resuming: one more at --storage + the temporary copy
    assert disk_space.shortfall(cfg, storage_is_local=True) is None
    free["bytes"] = 2 * size - 1
    assert disk_space.shortfall(cfg, storage_is_local=True) is not None
    free["bytes"] = 2 * size  # a 1-epoch run writes one checkpoint
    assert disk_space.shortfall(Cfg(storage=str(tmp_path / "new"), epochs=1), storage_is_local=True) is None
    free["bytes"] = 4 * size - 1  # a config without a name yet (made outside launch.py) counts as a new run
    assert "GB free" in disk_space.shortfall(Cfg(storage=str(tmp_path), name=None), storage_is_local=True)


def test_launch_refuses_a_full_disk_before_ray_starts(demo_shards, tmp_path, capsys, monkeypatch):
    import ray

    def refuse(*args, **kwargs):
        raise AssertionError("ray.init was called")
    monkeypatch.setattr(ray, "init", refuse)
    monkeypatch.setattr(disk_space.shutil, "disk_usage", lambda p: Usage(0, 0, 10**8))
    rc = launch.main(["--data", str(demo_shards), "--output-dir", str(tmp_path / "runs"), "--name", "x",
                      "--storage", str(tmp_path / "ckpt"), "--workers", "2", "-b", "8", "--crop", "64"])
    err = capsys.readouterr().err
    assert rc == 2 and f"error: {Path(tmp_path)} (--storage)" in err and "0.1 GB free" in err
    assert "point --storage" in err and not (tmp_path / "runs" / "x").exists()
