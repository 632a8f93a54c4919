"""`docker compose up`, run for real: compose.yaml builds the CPU image, starts a Ray head, a worker and the trainer,
which builds the demo shards and trains 2 epochs on two replicas; summary.json must then be in the runs volume. And
the compose cluster's token: a client without it is refused.

Needs a Docker engine and the Compose v2 plugin (skipped where none answers, as in CI) and takes minutes of every
core (an image build the first time, then ~4 minutes on 2 cores):
    python -m pytest -q -m docker tests/test_compose_up.py
Without access to download.pytorch.org, point TORCH_INDEX_URL (and BASE_IMAGE) at local mirrors: the test passes the
environment on to compose.
"""
import json
import os
import shutil
import subprocess
import urllib.request
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RUN_NAME = "compose-test"
UP_TIMEOUT_S = 3600  # a hang guard for a first build on a slow machine, not a speed target
# Ray gives a starting node a fixed 30 s to register (ray/_private/node.py); on a heavily shared machine a head or
# worker container can miss it, which ends the whole `up`. Only that failure earns one clean retry.
NODE_START_TIMEOUT = "The current node timed out during startup"
DEFAULT_TORCH_INDEX = "https://download.pytorch.org/whl/cpu/"  # compose.yaml's default TORCH_INDEX_URL


def docker_missing():
    """Why the engine cannot be used here, or None."""
    if shutil.which("docker") is None:
        return "docker is not installed"
    for cmd, what in ((["docker", "info"], "no Docker engine answers (docker info failed)"),
                      (["docker", "compose", "version"], "no Compose v2 plugin (docker compose version failed)")):
        try:
            if subprocess.run(cmd, capture_output=True, timeout=60).returncode != 0:
                return what
        except subprocess.TimeoutExpired:
            return what
    if not os.environ.get("TORCH_INDEX_URL"):  # the image build installs torch from it
        try:
            urllib.request.urlopen(DEFAULT_TORCH_INDEX, timeout=10).close()
        except OSError as e:
            return (f"TORCH_INDEX_URL is not set and {DEFAULT_TORCH_INDEX} cannot be reached ({e}): set it to a "
                    "reachable torch index (a local mirror of it will do)")
    return None


@pytest.fixture
def compose_project():
    """`docker compose` for a project of its own (containers, network, volumes), always taken down afterwards."""
    reason = docker_missing()
    if reason:
        pytest.skip(reason)
    env = {k: v for k, v in os.environ.items()
           if k not in ("SHARDS", "WORKERS", "HEAD_CPUS", "WORKER_CPUS")}  # the file's defaults, a fresh shards volume
    # any free host ports: a dashboard already on 127.0.0.1:8265 (a local Ray, another project) must not collide
    env.update(TRAIN_ARGS=f"--epochs 2 --name {RUN_NAME}", DASHBOARD_PORT="0", CLIENT_PORT="0")
    base = ["docker", "compose", "-f", str(ROOT / "compose.yaml"), "-p", f"alexnet-test-{uuid.uuid4().hex[:10]}"]

    def compose(*args, timeout=600):
        return subprocess.run([*base, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)

    try:
        yield compose
    finally:
        compose("down", "-v", "--remove-orphans", "--timeout", "10")


@pytest.mark.docker
@pytest.mark.slow
def test_compose_up_trains_and_leaves_a_summary(compose_project):
    for attempt in (1, 2):
        # --build: the image is rebuilt from this tree (cached layers when nothing changed), never a stale one
        up = compose_project("up", "--build", "--exit-code-from", "trainer", timeout=UP_TIMEOUT_S)
        out = up.stdout + up.stderr
        if up.returncode == 0 or NODE_START_TIMEOUT not in out or attempt == 2:
            break
        print(f"attempt {attempt}: a Ray node missed its 30 s start window; retrying from a clean project")
        compose_project("down", "-v", "--remove-orphans", "--timeout", "10")
    assert up.returncode == 0, f"docker compose up exited {up.returncode}:\n{out[-6000:]}"
    assert "epoch 2/2" in out, f"no rank-0 progress line for the last epoch:\n{out[-6000:]}"
    assert "Reporting training result" not in out, "Ray Train's per-report INFO lines reach the trainer's output"

    cat = compose_project("run", "--rm", "--no-deps", "-T", "trainer", "cat", f"/runs/{RUN_NAME}/summary.json")
    assert cat.returncode == 0, cat.stdout + cat.stderr
    summary = json.loads(cat.stdout)
    token = compose_project("run", "--rm", "--no-deps", "-T", "trainer", "cat", "/auth/token").stdout
    config = compose_project("run", "--rm", "--no-deps", "-T", "trainer", "cat", f"/runs/{RUN_NAME}/config.json")
    assert len(token) == 64 and config.returncode == 0, config.stderr  # the cluster's token, made by ray-head
    assert token not in out and token not in config.stdout, "the cluster's token reached the logs or config.json"
    print(f"summary.json: {json.dumps(summary)}")  # shown with -rP: the run's numbers, for the record
    assert summary["epochs"] == 2 and summary["workers"] == 2 and summary["devices"] == "CPU", summary
    for key in ("val_top1_error", "val_top5_error", "val_top1_error_10crop"):
        assert 0 <= summary[key] <= 1, (key, summary)
    assert summary["images_per_second"] > 0, summary


PROBE = 'import ray; ray.init(address="ray-head:6379", logging_level="ERROR"); print("CONNECTED", ray.get(ray.remote(lambda: 6 * 7).remote()))'  # noqa: E501


@pytest.mark.docker
@pytest.mark.slow
def test_compose_cluster_refuses_a_client_without_the_token(compose_project):
    up = compose_project("up", "--build", "--detach", "--wait", "ray-head", timeout=UP_TIMEOUT_S)
    assert up.returncode == 0, f"docker compose up ray-head exited {up.returncode}:\n{(up.stdout + up.stderr)[-6000:]}"
    # inside the compose network, where every Ray port of the head is reachable: only the token keeps a client out
    without = compose_project("exec", "-T", "-e", "HOME=/tmp", "ray-head", "env", "-u", "RAY_AUTH_MODE", "-u",
                              "RAY_AUTH_TOKEN_PATH", "python", "-c", PROBE)
    out = without.stdout + without.stderr
    assert without.returncode != 0 and "CONNECTED" not in out and "InvalidAuthToken" in out, out[-6000:]
    with_token = compose_project("exec", "-T", "ray-head", "python", "-c", PROBE)  # the same client with the token
    assert with_token.stdout.split() == ["CONNECTED", "42"], (with_token.stdout + with_token.stderr)[-6000:]
