"""Faults a long run meets, each injected for real without a Ray cluster: a damaged checkpoint (flipped byte,
truncation), shards rewritten or removed under a run, a stop signal, and a loader over 1,000 shards. Storage that
fails mid-write: tests/test_faults_storage.py; the Ray runs: tests/test_faults_run.py."""
import json
import os
import shutil
import signal
import threading
import time

import pytest
import torch

from cluster import checkpoints, stopping
from cluster.run_files import DIGEST_FILE, SNAPSHOT_FILE, checkpoint_dirs
from pipeline import manifest as mf
from pipeline import shard_watch
from pipeline.loader import make_loader


def small_state(epoch, n=50_000):
    return {"model": {"w": torch.randn(n, dtype=torch.float64)}, "epoch": epoch}


def ray_snapshot(run, dir_names):
    """A checkpoint_manager_snapshot.json written by Ray 2.60's own model of it, as its checkpoint manager does."""
    from ray.train.v2._internal.execution.checkpoint.checkpoint_manager import (
        _CheckpointManagerState,
        _TrainingResultState,
    )
    results = [_TrainingResultState(checkpoint_dir_name=d, metrics={"epoch": i + 1}) for i, d in enumerate(dir_names)]
    state = _CheckpointManagerState(checkpoint_results=results, checkpoint_report_indices=list(range(len(results))),
                                    latest_checkpoint_result=results[-1], pending_training_results=[],
                                    pending_validation_specs=[], current_report_index=len(results),
                                    validated_checkpoint_dir_names=[], timed_out_validation_checkpoint_dir_names=[],
                                    failed_validation_checkpoint_dir_names=[])
    (run / SNAPSHOT_FILE).write_text(state.json())


def stored_run(tmp_path, epochs=2):
    """--storage tmp_path/ckpt with run "r": `epochs` checkpoints with digests and Ray's snapshot listing them."""
    run = tmp_path / "ckpt" / "r"
    names = [f"checkpoint_2026-12-05_10-00-0{e}.000000" for e in range(epochs)]
    for e, name in enumerate(names):
        (run / name).mkdir(parents=True)
        checkpoints.write(small_state(e), run / name)
    ray_snapshot(run, names)
    return tmp_path / "ckpt", [run / n for n in names]


def flip_byte(path, at=0.5):
    with open(path, "r+b") as f:
        f.seek(int(os.path.getsize(path) * at))
        b = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([b[0] ^ 0x01]))


def test_the_listing_is_rays_snapshot_not_its_file(tmp_path):
    storage, dirs = stored_run(tmp_path)
    (dirs[0].parent / "checkpoint_2026-12-05_11-00-00.000000").mkdir()  # an upload cut short: never registered
    listed = checkpoints.listed(storage, "r")
    assert [e.where for e in listed] == [str(d) for d in dirs] and [e.epoch for e in listed] == [1, 2]
    assert all(p.is_dir() for p in checkpoint_dirs(storage, "r"))  # the snapshot file is not a checkpoint
    assert len(checkpoint_dirs(storage, "r")) == 3  # the disk-space count: every folder that takes room


@pytest.mark.parametrize("damage, said", [
    (lambda p: flip_byte(p), "sha256 differs from its digest"),
    (lambda p: os.truncate(p, os.path.getsize(p) // 2), "truncated?"),
])
def test_a_damaged_newest_checkpoint_is_passed_over_and_taken_out_of_rays_list(tmp_path, damage, said):
    from ray.train.v2._internal.execution.checkpoint.checkpoint_manager import _CheckpointManagerState
    storage, dirs = stored_run(tmp_path)
    damage(dirs[1] / "checkpoint.pt")
    assert said in checkpoints.problem_at(str(dirs[1]))
    line = checkpoints.resume_point(storage, "r")
    assert f"{dirs[1]}: " in line and said in line and f"continuing from {dirs[0]} (after epoch 1)" in line
    state = _CheckpointManagerState.parse_raw((dirs[0].parent / SNAPSHOT_FILE).read_text())  # Ray still reads it
    assert [r.checkpoint_dir_name for r in state.checkpoint_results] == [dirs[0].name]
    assert state.latest_checkpoint_result.checkpoint_dir_name == dirs[0].name
    assert checkpoints.load_state(str(dirs[0]))["epoch"] == 0  # the intact one loads; the damaged one stays put
    assert dirs[1].is_dir()
    with pytest.raises(checkpoints.CheckpointError, match="sha256 differs|truncated"):
        checkpoints.load_state(str(dirs[1]))


def test_a_checkpoint_from_before_digests_is_used_and_said_to_be_unchecked(tmp_path, capsys):
    storage, dirs = stored_run(tmp_path)
    os.remove(dirs[1] / DIGEST_FILE)  # as an older version wrote it
    assert checkpoints.resume_point(storage, "r").endswith(f"continuing from {dirs[1]} (after epoch 2), "
                                                           f"{checkpoints.NO_DIGEST}")
    assert checkpoints.load_state(str(dirs[1]))["epoch"] == 1
    assert f"{dirs[1]}: {DIGEST_FILE} is missing" in capsys.readouterr().out
    os.truncate(dirs[1] / "checkpoint.pt", 1000)  # unchecked, but a file that does not load is still refused
    with pytest.raises(checkpoints.CheckpointError, match="does not load"):
        checkpoints.load_state(str(dirs[1]))


def test_no_intact_checkpoint_is_refused_by_name(tmp_path):
    storage, dirs = stored_run(tmp_path)
    for d in dirs:
        flip_byte(d / "checkpoint.pt", at=0.9)
    with pytest.raises(checkpoints.CheckpointError) as e:
        checkpoints.resume_point(storage, "r")
    assert all(str(d) in str(e.value) for d in dirs) and "Nothing was loaded" in str(e.value)
    assert checkpoints.listed(storage, "r")[-1].where == str(dirs[1])  # Ray's list is left as it was


@pytest.fixture
def shards(demo_shards, tmp_path):
    dst = tmp_path / "shards"
    shutil.copytree(demo_shards, dst)
    return dst


def test_a_shard_rewritten_or_removed_under_a_run_is_named(shards):
    m = mf.load(shards)
    tars, entries = shard_watch._build_files(shards)
    before = shard_watch.stamps(tars)
    shard_watch.check(tars, entries, before, "now")
    first = shards / "train" / m["splits"]["train"]["shards"][0]["tar"]
    os.utime(first, ns=(1, 1))  # restored from a copy: another mtime, the same bytes
    shard_watch.check(tars, entries, before, "now")
    flip_byte(first, at=0.6)  # the same size, other bytes
    with pytest.raises(shard_watch.ShardsChanged, match=f"1 shard\\(s\\) changed before epoch 2: {first}: "
                                                        "rewritten with other content of the same size"):
        shard_watch.check(tars, entries, before, "before epoch 2")
    second = shards / "val" / m["splits"]["val"]["shards"][0]["tar"]
    second.unlink()
    with pytest.raises(shard_watch.ShardsChanged, match=f"2 shard.*{second}: removed"):
        shard_watch.check_build(shards, before, "since the run started")


def test_the_loader_names_a_shard_rewritten_between_epochs(shards):
    loader = make_loader(str(shards), "val", 10, train=False, crop=32)
    assert sum(len(i) for _, _, i in loader) == 50
    tar = loader.tars[0]
    with open(tar, "r+b") as f:  # as a copy over it would: same size, other bytes
        f.seek(2000)
        f.write(b"\xff" * 16)
    with pytest.raises(shard_watch.ShardsChanged, match=f"{tar}: rewritten"):
        next(iter(loader))
    loader.close()


def test_a_stop_signal_says_where_and_how_to_resume(demo_shards, tmp_path, capsys):
    import dataclasses

    from tests.test_cluster import tiny_config
    storage, dirs = stored_run(tmp_path / "store", epochs=1)
    cfg = dataclasses.replace(tiny_config(demo_shards, tmp_path), storage=str(storage), name="r")
    cfg.run_dir.mkdir(parents=True)
    (cfg.run_dir / "metrics.jsonl").write_text(json.dumps({"epoch": 1}) + "\n")
    before = stopping.install()
    try:
        with pytest.raises(KeyboardInterrupt):  # what the launcher catches, as Ray's ray.get raises it too
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)  # the handler raises here
        got = stopping.last_signal()
    finally:
        stopping.restore(before)
    assert got == signal.SIGTERM and stopping.last_signal() == signal.SIGINT  # forgotten once the launcher ends
    assert stopping.report(cfg, got) == 143
    err = capsys.readouterr().err
    assert f"stopped by SIGTERM after 1 of 10 epoch(s); its latest checkpoint is {dirs[0]}" in err
    assert f"--output-dir {tmp_path} --name r --resume" in err
    (event,) = [json.loads(x) for x in (tmp_path / "r" / "events.jsonl").read_text().splitlines()]
    assert event["event"] == "stopped" and event["signal"] == "SIGTERM" and event["checkpoint"] == str(dirs[0])
    assert stopping.report(cfg, signal.SIGINT) == 130


def test_a_loader_over_1000_shards_of_10_samples_finishes_an_epoch_in_time(tmp_path):
    """1,000 shards (one 10-sample shard, hard-linked), one epoch at batch 50, in a thread: the test fails (does not
    skip, does not hang) when the epoch is not done within its bound."""
    from pipeline import build_shards
    src = tmp_path / "one"
    build_shards.build(build_shards.BuildConfig(out=src, jobs=1, demo_train_per_class=1, demo_val_per_class=1,
                                                shard_size=10, size=32))
    m = json.loads((src / "manifest.json").read_text())
    (entry,) = m["splits"]["train"]["shards"]
    shards = [entry]
    for i in range(1, 1000):
        tar, idx = f"train-{i:06d}.tar", f"train-{i:06d}.idx"
        os.link(src / "train" / entry["tar"], src / "train" / tar)
        os.link(src / "train" / entry["idx"], src / "train" / idx)
        shards.append({**entry, "tar": tar, "idx": idx})
    m["splits"]["train"] = {**m["splits"]["train"], "shards": shards, "num_samples": 10_000}
    (src / "manifest.json").write_text(json.dumps(m))
    got = {}

    def one_epoch():
        loader = make_loader(str(src), "train", 50, train=True, crop=24, num_threads=2)
        loader.set_epoch(0)
        got["steps"] = sum(1 for _ in loader)
        loader.close()
    t0 = time.monotonic()
    worker = threading.Thread(target=one_epoch, daemon=True)
    worker.start()
    worker.join(timeout=240)
    took = time.monotonic() - t0
    assert not worker.is_alive(), "one epoch over 1,000 shards did not finish within 240 s on this machine"
    assert got.get("steps") == 200, got
    print(f"one epoch over 1,000 shards of 10 samples: {took:.1f} s")


def test_rays_sigint_handler_gives_way_to_the_launchers(demo_shards, tmp_path):
    """Ray's fit() installs a SIGINT handler of its own (abort, exit 1, no word): the trainer the driver makes keeps
    the launcher's. The source check fails if a Ray upgrade registers it another way."""
    import inspect

    from ray.train.v2.api.data_parallel_trainer import DataParallelTrainer

    from cluster.driver import make_trainer
    from cluster.outputs import RunOutputs
    from tests.test_cluster import tiny_config
    assert "self._register_sigint_handler(controller)" in inspect.getsource(
        DataParallelTrainer._initialize_and_run_controller)
    trainer = make_trainer(tiny_config(demo_shards, tmp_path), RunOutputs(tmp_path))
    before = stopping.install()
    try:
        trainer._register_sigint_handler(None)
        assert signal.getsignal(signal.SIGINT) is stopping._raise
    finally:
        stopping.restore(before)


def test_a_worker_passes_over_a_damaged_latest_checkpoint_that_ray_hands_it(tmp_path, monkeypatch, capsys):
    """A restart after a failure gets Ray's latest checkpoint without the launcher's check: the worker checks it."""
    import types

    import ray.train

    from cluster import worker
    storage, dirs = stored_run(tmp_path)
    flip_byte(dirs[1] / "checkpoint.pt")
    monkeypatch.setattr(ray.train, "get_checkpoint", lambda: ray.train.Checkpoint(str(dirs[1])))
    cfg = types.SimpleNamespace(storage=str(storage), name="r")
    logged = []
    assert worker._verified_state(cfg, logged.append)["epoch"] == 0
    assert f"checkpoint {dirs[1]}: checkpoint.pt's sha256 differs" in logged[0]
    assert f"resuming from {dirs[0]} (after epoch 1), the newest intact checkpoint" in logged[1]
    flip_byte(dirs[0] / "checkpoint.pt")
    with pytest.raises(checkpoints.CheckpointError, match=f"no intact checkpoint: {dirs[1]}: .*; {dirs[0]}: "):
        worker._verified_state(cfg, None)
