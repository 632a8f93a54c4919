"""Faults injected into one real run (slow): 8 replicas on 2 cores train until SIGTERM arrives in their third
epoch; the checkpoint listing is checked against the files Ray wrote; the newest checkpoint is then damaged and the
run resumed from the intact one before it. Each step reuses the run before it, to keep the suite's time down."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cluster import checkpoints, launch
from cluster.run_files import DIGEST_FILE, SNAPSHOT_FILE, checkpoint_dirs, read_jsonl

ROOT = Path(__file__).resolve().parents[1]
SLOW = pytest.mark.slow
RUN_BOUND_S = 480  # for the first two epochs of 8 replicas, Ray's start included; past it the test fails
GRACE_S = 30  # Kubernetes' default terminationGracePeriodSeconds


def wait_for_epochs(run_dir, proc, n, deadline):
    while time.monotonic() < deadline:
        if len(read_jsonl(run_dir / "metrics.jsonl")) >= n or proc.poll() is not None:
            return
        time.sleep(0.2)


@pytest.fixture(scope="module")
def stopped(demo_shards, tmp_path_factory):
    """The launcher, 8 replicas, SIGTERM once two epochs are done: (tmp, run_dir, rc, seconds to exit, output)."""
    tmp = tmp_path_factory.mktemp("faults")
    run_dir, log = tmp / "runs" / "f", tmp / "launch.log"
    cmd = [sys.executable, str(ROOT / "cluster" / "launch.py"), "--data", str(demo_shards), "--output-dir",
           str(tmp / "runs"), "--name", "f", "--replicas", "8", "-b", "4", "--crop", "64", "--cpus-per-worker",
           "0.25", "--epochs", "6", "--print-freq", "5"]
    env = {**os.environ, "RAY_ADDRESS": "local", "PYTHONPATH": str(ROOT)}
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=tmp)
        try:
            wait_for_epochs(run_dir, proc, 2, time.monotonic() + RUN_BOUND_S)
            assert proc.poll() is None, f"the run ended before its stop: {log.read_text()[-3000:]}"
            assert len(read_jsonl(run_dir / "metrics.jsonl")) >= 2, f"8 replicas did not finish 2 epochs in " \
                                                                    f"{RUN_BOUND_S} s: {log.read_text()[-3000:]}"
            t0 = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            rc = proc.wait(timeout=GRACE_S)
            took = time.monotonic() - t0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    yield tmp, run_dir, rc, took, log.read_text()
    import shutil
    shutil.rmtree(tmp, ignore_errors=True)  # two ~450 MB checkpoints


@SLOW
def test_sigterm_stops_eight_replicas_within_the_grace_period_and_says_how_to_resume(stopped):
    tmp, run_dir, rc, took, out = stopped
    rows = read_jsonl(run_dir / "metrics.jsonl")
    done = rows[-1]["epoch"]
    assert rc == 143 and took < GRACE_S, (rc, took, out[-3000:])
    assert [r["epoch"] for r in rows] == list(range(1, done + 1)) and all(r["replicas"] == 8 for r in rows)
    assert f"stopped by SIGTERM after {done} of 6 epoch(s); its latest checkpoint is {run_dir}/checkpoint_" in out
    assert f"cluster/launch.py --output-dir {tmp / 'runs'} --name f --resume" in out
    stop = [e for e in read_jsonl(run_dir / "events.jsonl") if e["event"] == "stopped"]
    assert len(stop) == 1 and stop[0]["signal"] == "SIGTERM" and stop[0]["epochs_done"] == done
    print(f"SIGTERM after {done} epochs: exited {rc} in {took:.1f} s")


@SLOW
def test_the_listing_matches_the_files_ray_wrote_and_test_only_uses_it(stopped, capsys):
    tmp, run_dir, _, _, _ = stopped
    snapshot = json.loads((run_dir / SNAPSHOT_FILE).read_text())
    names = [r["checkpoint_dir_name"] for r in snapshot["checkpoint_results"]]
    listed = checkpoints.listed(str(tmp / "runs"), "f")
    assert [e.dir_name for e in listed] == names and len(names) == 2  # CHECKPOINTS_KEPT
    assert [e.epoch for e in listed] == [r["metrics"]["epoch"] for r in snapshot["checkpoint_results"]]
    assert all(p.is_dir() and (p / DIGEST_FILE).is_file() for p in checkpoint_dirs(tmp / "runs", "f"))
    assert all(checkpoints.problem_at(e.where) is None for e in listed)
    capsys.readouterr()
    assert launch.main(["--output-dir", str(tmp / "runs"), "--name", "f", "--test-only", "-j", "1"]) == 0
    assert f"checkpoint {listed[-1].where}" in capsys.readouterr().out  # not checkpoint_manager_snapshot.json


@SLOW
def test_a_damaged_newest_checkpoint_resumes_from_the_one_before_and_loses_no_intact_one(stopped, capsys,
                                                                                        monkeypatch):
    tmp, run_dir, _, _, _ = stopped
    monkeypatch.setenv("RAY_ADDRESS", "local")
    before = checkpoints.listed(str(tmp / "runs"), "f")
    newest, intact = Path(before[-1].where), Path(before[-2].where)
    with open(newest / "checkpoint.pt", "r+b") as f:  # one flipped byte in the middle of the weights
        f.seek(os.path.getsize(newest / "checkpoint.pt") // 2)
        b = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([b[0] ^ 0x10]))
    done = read_jsonl(run_dir / "metrics.jsonl")[-1]["epoch"]
    capsys.readouterr()
    # 2 replicas now (a changeable flag): the resumed epoch starts at its beginning, the order of that count
    assert launch.main(["--output-dir", str(tmp / "runs"), "--name", "f", "--resume", "--epochs", str(done),
                        "--replicas", "2", "--cpus-per-worker", "0.5"]) == 0
    out = capsys.readouterr().out
    assert f"checkpoint {newest}: checkpoint.pt's sha256 differs from its digest" in out
    assert f"continuing from {intact} (after epoch {done - 1})" in out
    rows = read_jsonl(run_dir / "metrics.jsonl")
    assert [r["epoch"] for r in rows] == list(range(1, done + 1))  # epoch `done` redone, none counted twice
    assert rows[-1]["replicas"] == 2
    after = checkpoints.listed(str(tmp / "runs"), "f")
    assert after[0].where == str(intact) and checkpoints.problem_at(str(intact)) is None  # intact ones lost: 0
    assert checkpoints.problem_at(after[-1].where) is None and after[-1].epoch == done


@SLOW
def test_ctrl_c_during_training_says_where_the_run_stopped_and_exits_130(demo_shards, tmp_path):
    """SIGINT as Ctrl-C sends it, once training has started (Ray's own handler, which exits 1 without a word, is
    the one that would run there)."""
    log = tmp_path / "launch.log"
    cmd = [sys.executable, str(ROOT / "cluster" / "launch.py"), "--data", str(demo_shards), "--output-dir",
           str(tmp_path / "runs"), "--name", "c", "--replicas", "1", "-b", "4", "--crop", "64", "--epochs", "1"]
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "RAY_ADDRESS": "local",
                                                                                "PYTHONPATH": str(ROOT)})
        try:
            deadline = time.monotonic() + RUN_BOUND_S
            while "replica(s), global batch" not in log.read_text() and time.monotonic() < deadline:
                assert proc.poll() is None, log.read_text()[-3000:]
                time.sleep(0.2)
            proc.send_signal(signal.SIGINT)
            rc = proc.wait(timeout=GRACE_S)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    text = log.read_text()
    assert rc == 130, text[-3000:]
    assert "stopped by SIGINT after 0 of 1 epoch(s); it had written no checkpoint yet" in text
    assert f"cluster/launch.py --output-dir {tmp_path / 'runs'} --name c --resume" in text
    assert "Traceback" not in text.split("stopped by SIGINT")[-1]
