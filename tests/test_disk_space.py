"""A disk without room for the checkpoints is refused before Ray starts, naming the folder and the sizes; the size
it counts is the size of a checkpoint as cluster/train.py writes it."""
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
CFG = dict(num_classes=10, activation="relu", lrn=True, overlapping_pool=True, dropout=0.5, init="paper")


@dataclasses.dataclass
class Cfg:  # the fields disk_space reads from a TrainConfig
    storage: str
    address: str | None = None
    num_classes: int = 10
    activation: str = "relu"
    lrn: bool = True
    overlapping_pool: bool = True
    dropout: float = 0.5
    init: str = "paper"


def test_the_counted_size_is_a_real_checkpoints_size_within_1_percent():
    model = AlexNet(**CFG)
    opt = make_optimizer(model, 0.01, 0.9, 5e-4, decay_biases=False)
    torch.nn.functional.cross_entropy(model(torch.randn(2, 3, 64, 64)), torch.tensor([0, 1])).backward()
    opt.step()  # SGD's momentum buffers exist from the first step on
    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "epoch": 0}, buf)
    assert disk_space.checkpoint_bytes(Cfg(storage="/x")) == pytest.approx(buf.tell(), rel=0.01)


def test_storage_and_the_temporary_copy_on_one_disk_are_added_up(tmp_path, monkeypatch):
    monkeypatch.setattr(disk_space.tempfile, "gettempdir", lambda: str(tmp_path))
    size = disk_space.checkpoint_bytes(Cfg(storage="/x"))
    need = 4 * size  # 2 kept + 1 being written at --storage, 1 temporary copy, all on tmp_path's disk
    monkeypatch.setattr(disk_space.shutil, "disk_usage", lambda p: Usage(0, 0, need - 1))
    msg = disk_space.shortfall(Cfg(storage=str(tmp_path / "ckpt" / "run")), storage_is_local=True)
    assert f"{tmp_path} (--storage) and {tmp_path} (TMPDIR)" in msg and f"{need / 1e9:.1f} GB there" in msg
    monkeypatch.setattr(disk_space.shutil, "disk_usage", lambda p: Usage(0, 0, need))
    assert disk_space.shortfall(Cfg(storage=str(tmp_path)), storage_is_local=True) is None
    # on an existing cluster (--address) the temporary copy is on its nodes; object storage is nobody's disk here
    monkeypatch.setattr(disk_space.shutil, "disk_usage", lambda p: Usage(0, 0, 3 * size))
    assert disk_space.shortfall(Cfg(storage=str(tmp_path), address="10.0.0.1:6379"), storage_is_local=True) is None
    assert disk_space.shortfall(Cfg(storage="s3://b/r", address="10.0.0.1:6379"), storage_is_local=False) is None


def test_launch_refuses_a_full_disk_before_ray_starts(demo_shards, tmp_path, capsys, monkeypatch):
    import ray

    def refuse(*args, **kwargs):
        raise AssertionError("ray.init was called")
    monkeypatch.setattr(ray, "init", refuse)
    monkeypatch.setattr(disk_space.shutil, "disk_usage", lambda p: Usage(0, 0, 10**8))
    rc = launch.main(["--data", str(demo_shards), "--output-dir", str(tmp_path / "runs"), "--name", "x",
                      "--storage", str(tmp_path / "ckpt")])
    err = capsys.readouterr().err
    assert rc == 2 and f"error: {Path(tmp_path)} (--storage)" in err and "0.1 GB free" in err
    assert "point --storage" in err and not (tmp_path / "runs" / "x").exists()
