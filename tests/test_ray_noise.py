"""Ray's lines that read as failures are gone from a run's output, and a real error still reaches the user.
Run with a second Ray instance on the machine, where Train's placement-group cleaner used to print a traceback."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from processes import descendants

from cluster.worker import FAILURE_ENV

ROOT = Path(__file__).resolve().parents[1]
NOISE = ["Token authentication is enabled", "PreemptionWatcher", "PlacementGroupCleaner",
         "Found multiple active Ray instances"]
OTHER_RAY = """if True:
    import time, ray
    ray.init(address="local", include_dashboard=False, num_cpus=1, _node_ip_address="127.0.0.1")
    print("up", flush=True)
    time.sleep(900)
"""




@pytest.fixture
def another_ray_instance():
    """A second local Ray cluster on this machine, as another user's or another run's would be."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    proc = subprocess.Popen([sys.executable, "-c", OTHER_RAY], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True, start_new_session=True)
    try:
        assert proc.stdout.readline().strip() == "up", "the second Ray instance did not start"
        yield
    finally:
        doomed = descendants(proc.pid)
        proc.terminate()  # ray.init's atexit stops its cluster
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
        time.sleep(1)
        for pid in doomed:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


@pytest.mark.slow
def test_a_run_shows_rays_real_error_without_the_noise(demo_shards, tmp_path, another_ray_instance):
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_MODE")}
    env[FAILURE_ENV] = "0:1"  # rank 0 raises at its second step: a real error inside a Ray worker
    done = subprocess.run([sys.executable, "cluster/launch.py", "--data", str(demo_shards), "--output-dir",
                           str(tmp_path), "--name", "r", "--replicas", "1", "-b", "8", "--crop", "64", "--epochs", "1",
                           "--cpus-per-worker", "1"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=400)
    out = done.stdout + done.stderr
    assert done.returncode == 1, out[-6000:]
    assert "error: training failed" in done.stderr and "injected failure at epoch 0, step 1" in out
    assert "Traceback" in out  # the worker's own traceback is kept: it is what a user debugs with
    for line in NOISE:
        assert line not in out, f"Ray's {line!r} is back:\n{out[-3000:]}"


class FakeRay:
    class Context:
        gcs_address = "127.0.0.1:6379"

    def get_runtime_context(self):
        return self.Context()


def test_the_settings_are_undone_and_only_the_token_line_is_filtered(monkeypatch, caplog):
    import logging

    from cluster import ray_noise
    monkeypatch.delenv(ray_noise.ADDRESS, raising=False)
    monkeypatch.delenv(ray_noise.PREEMPTION_WATCHER, raising=False)
    ray_noise.before_init(local_cluster=True)
    ray_noise.after_init(FakeRay(), None)
    try:
        assert os.environ[ray_noise.ADDRESS] == "127.0.0.1:6379"
        assert os.environ[ray_noise.PREEMPTION_WATCHER] == "0"
        log = logging.getLogger(ray_noise.TOKEN_LOGGER)
        with caplog.at_level(logging.WARNING, logger=ray_noise.TOKEN_LOGGER):
            log.warning("Token authentication is enabled for this Ray cluster. Set RAY_AUTH_MODE=disabled ...")
            log.warning("Token authentication is disabled for this Ray cluster. Anyone with network access ...")
        assert [r.getMessage()[:40] for r in caplog.records] == ["Token authentication is disabled for thi"]
    finally:
        ray_noise.restore()
    assert ray_noise.ADDRESS not in os.environ and ray_noise.PREEMPTION_WATCHER not in os.environ
    ray_noise.after_init(FakeRay(), "ray://head:10001")  # a Ray Client driver: left alone
    assert ray_noise.ADDRESS not in os.environ
