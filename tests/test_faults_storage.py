"""Storage that fails under a run, injected for real into the checkpoint upload: a small tmpfs filled during a
write, and moto's S3 server paused with SIGSTOP mid-upload (for a while, then for good)."""
import os
import signal
import subprocess
import threading
import time

import pytest

from cluster import checkpoints
from cluster.run_files import SNAPSHOT_FILE
from tests.test_faults import ray_snapshot, small_state, stored_run


def local_checkpoint(tmp_path, n):
    import ray.train
    folder = tmp_path / "local"
    folder.mkdir()
    checkpoints.write(small_state(5, n), folder)
    return ray.train.Checkpoint.from_directory(str(folder))


@pytest.fixture
def small_disk(tmp_path):
    mnt = tmp_path / "small"
    mnt.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if done.returncode:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {done.stderr.strip()}")
    yield mnt
    subprocess.run(["umount", str(mnt)], check=False)


def test_a_full_disk_is_named_with_the_room_needed_and_the_previous_checkpoint_stands(tmp_path, small_disk):
    storage, dirs = stored_run(small_disk, epochs=1)  # 0.4 MB on an 8 MB filesystem
    (small_disk / "filler").write_bytes(b"\0" * (6 << 20))  # what else shares the disk
    upload = checkpoints.VerifiedUpload(str(storage), "r")
    with pytest.raises(checkpoints.CheckpointError) as e:
        upload(local_checkpoint(tmp_path, 500_000), "checkpoint_2026-12-05_10-00-09.000000")  # 4 MB
    msg = str(e.value)
    assert f"{storage}/r/checkpoint_2026-12-05_10-00-09.000000: no space left" in msg
    assert "(4.0 MB needed, " in msg and "MB free there" in msg and "--resume" in msg
    assert not (storage / "r" / "checkpoint_2026-12-05_10-00-09.000000").exists()  # the partial copy is gone
    assert checkpoints.problem_at(str(dirs[0])) is None and checkpoints.listed(storage, "r")[-1].where == str(dirs[0])


@pytest.fixture(scope="module")
def moto():
    from benchmarks.loader_s3 import moto_server
    pytest.importorskip("moto.server")
    server, url = moto_server()
    yield server, url
    os.kill(server.pid, signal.SIGCONT)
    server.terminate()
    server.wait(timeout=10)


@pytest.fixture
def s3(moto, monkeypatch):
    import boto3
    server, url = moto
    for key, value in {"AWS_ENDPOINT_URL": url, "AWS_ACCESS_KEY_ID": "AKIDTESTONLY0002",
                       "AWS_SECRET_ACCESS_KEY": "test-only", "AWS_REGION": "us-east-1",
                       "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(checkpoints, "S3_TIMEOUTS_S", {"connect_timeout": 1.0, "request_timeout": 1.0})
    client = boto3.client("s3")
    if "ckpt" not in [b["Name"] for b in client.list_buckets()["Buckets"]]:
        client.create_bucket(Bucket="ckpt")
    return server, client


def paused(server, seconds):
    """SIGSTOP the store now, SIGCONT it after `seconds` (None: not in this test)."""
    os.kill(server.pid, signal.SIGSTOP)
    if seconds is not None:
        threading.Timer(seconds, os.kill, (server.pid, signal.SIGCONT)).start()


def test_a_store_that_stops_answering_mid_upload_is_retried_and_the_copy_verified(s3, tmp_path):
    server, _ = s3
    upload = checkpoints.VerifiedUpload("s3://ckpt/runs", "r", first_wait_s=1)
    ckpt = local_checkpoint(tmp_path, 200_000)
    paused(server, 10)  # longer than a request may take here (1 s) and than one of our waits (1 s)
    t0 = time.monotonic()
    done = upload(ckpt, "checkpoint_a")
    assert time.monotonic() - t0 >= 9.5
    assert done.path == "ckpt/runs/r/checkpoint_a" and checkpoints.problem_at("s3://ckpt/runs/r/checkpoint_a") is None


def test_a_store_that_never_comes_back_is_an_error_naming_the_uri(s3, tmp_path, capsys):
    server, _ = s3
    upload = checkpoints.VerifiedUpload("s3://ckpt/runs", "gone", attempts=2, first_wait_s=0.5)
    ckpt = local_checkpoint(tmp_path, 1000)
    paused(server, None)
    try:
        with pytest.raises(checkpoints.CheckpointError, match="upload to s3://ckpt/runs/gone/checkpoint_b failed 2 "
                                                              "times .*previous checkpoint is intact"):
            upload(ckpt, "checkpoint_b")
    finally:
        os.kill(server.pid, signal.SIGCONT)
    assert "attempt 1 of 2" in capsys.readouterr().out  # our layer retried, with a wait, after pyarrow's gave up
    assert checkpoints.listed("s3://ckpt/runs", "gone") == []  # never registered: never listed, as Ray lists


def test_checkpoints_in_a_store_are_listed_and_verified(s3, tmp_path):
    _, client = s3
    upload = checkpoints.VerifiedUpload("s3://ckpt/runs", "listed")
    upload(local_checkpoint(tmp_path, 1000), "checkpoint_1")
    snapshot = tmp_path / "snap"
    snapshot.mkdir()
    ray_snapshot(snapshot, ["checkpoint_1"])
    client.put_object(Bucket="ckpt", Key=f"runs/listed/{SNAPSHOT_FILE}", Body=(snapshot / SNAPSHOT_FILE).read_bytes())
    (entry,) = checkpoints.listed("s3://ckpt/runs", "listed")
    assert entry.where == "s3://ckpt/runs/listed/checkpoint_1"
    assert checkpoints.newest_intact("s3://ckpt/runs", "listed") == (entry, [])
    client.put_object(Bucket="ckpt", Key="runs/listed/checkpoint_1/checkpoint.pt", Body=b"cut short")
    assert "truncated?" in checkpoints.problem_at(entry.where)


def test_a_shard_rewritten_or_removed_in_the_store_is_named(s3, tmp_path, monkeypatch):
    """Shards in s3://: one HEAD each, the store's sha256 of the object against the manifest's."""
    from pipeline import build_shards as bs
    from pipeline import object_store as store
    from pipeline import shard_watch
    _, client = s3
    monkeypatch.setenv("ALEXNET_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(store, "_LOCAL", {})
    client.create_bucket(Bucket="shards-w")
    m = bs.build(bs.BuildConfig(out="s3://shards-w/d", staging=tmp_path / "staging", jobs=1, demo_train_per_class=2,
                                demo_val_per_class=1, shard_size=7, size=32))
    shard_watch.check_build("s3://shards-w/d", {}, "now")  # as uploaded: nothing to say
    first, second = m["splits"]["train"]["shards"][0]["tar"], m["splits"]["train"]["shards"][1]["tar"]
    body = client.get_object(Bucket="shards-w", Key=f"d/train/{first}")["Body"].read()
    client.put_object(Bucket="shards-w", Key=f"d/train/{first}", Body=body[:-1] + b"\1")  # same size, no checksum
    client.delete_object(Bucket="shards-w", Key=f"d/train/{second}")
    with pytest.raises(shard_watch.ShardsChanged) as e:
        shard_watch.check_build("s3://shards-w/d", {}, "before epoch 4")
    msg = str(e.value)
    assert msg.startswith("2 shard(s) changed before epoch 4")
    assert f"s3://shards-w/d/train/{first}: its sha256 in the store differs" in msg
    assert f"s3://shards-w/d/train/{second}: removed from the store" in msg
