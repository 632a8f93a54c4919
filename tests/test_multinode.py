"""Past one machine: a real multi-node Ray cluster on this machine (a head and worker nodes as separate raylets, each
with its own CPUs), replicas spread over the nodes, a node killed with SIGKILL mid-run, and elastic replicas; and the
multi-node recipe's `ray start` cluster with token authentication, which refuses a client without the token.

The launcher runs as its own process, as a user would start it (`launch.py --address HEAD`), while the test kills a
node under it. Each test takes a few minutes on 2 cores."""
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from processes import descendants
from ray.cluster_utils import Cluster

from cluster.recipe import PRESETS

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


@pytest.fixture
def cluster():
    """A head without CPUs (it schedules; the driver and Ray Train's controller live there) plus worker nodes added
    by the test, each a raylet of its own with 1 CPU."""
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    yield c
    c.shutdown()


def add_nodes(cluster, n):
    nodes = [cluster.add_node(num_cpus=1) for _ in range(n)]
    cluster.wait_for_nodes()
    return nodes




def kill_node(cluster, node):
    """kill -9 a node's raylet and everything under it (its workers, agents), then forget it."""
    raylet = node.all_processes["raylet"][0].process.pid
    for pid in [*descendants(raylet), raylet]:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    cluster.remove_node(node, allow_graceful=False)


def start_launcher(cluster, data, out, *flags):
    env = {**os.environ, "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S": "30"}  # a stale view of a dead node: fail fast
    cmd = [sys.executable, "cluster/launch.py", "--address", cluster.address, "--data", str(data),
           "--output-dir", str(out), "--name", "mn", "-b", "8", "--crop", "64", "--cpus-per-worker", "1",
           "--print-freq", "100", *map(str, flags)]
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def rows(run_dir):
    path = run_dir / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def wait_for_epochs(proc, run_dir, n, timeout=300):
    deadline = time.time() + timeout
    while len(rows(run_dir)) < n:
        if proc.poll() is not None or time.time() > deadline:
            proc.kill()
            raise AssertionError(f"no epoch {n} (exit {proc.poll()}):\n{proc.stdout.read()[-5000:]}")
        time.sleep(0.5)
    return rows(run_dir)


def finish(proc, timeout=600):
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
    assert proc.returncode == 0, out[-8000:]
    return out


def node_of(nodes, node_id):
    return next(n for n in nodes if n.node_id == node_id)


def test_replicas_spread_over_nodes_and_survive_a_lost_node(cluster, demo_shards, tmp_path):
    nodes = add_nodes(cluster, 3)  # 2 replicas of 1 CPU each: one node to spare
    proc = start_launcher(cluster, demo_shards, tmp_path, "--workers", 2, "--epochs", 4, "--max-failures", 1)
    first = wait_for_epochs(proc, tmp_path / "mn", 1)[0]
    assert len(set(first["nodes"])) == 2  # one replica per node: the ranks really are on different raylets
    victim = node_of(nodes, first["nodes"][1])
    kill_node(cluster, victim)
    out = finish(proc)
    run_dir = tmp_path / "mn"
    history = rows(run_dir)
    assert [r["epoch"] for r in history] == [1, 2, 3, 4]  # every epoch once, whatever was re-run
    assert all(r["replicas"] == 2 and r["val_images"] == 50 for r in history)
    assert victim.node_id not in history[-1]["nodes"]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["failures"] >= 1 and summary["nodes_lost"] >= 1 and summary["epochs"] == 4
    assert "lost node" in out


def test_elastic_run_goes_on_with_the_replicas_that_fit(cluster, demo_shards, tmp_path):
    nodes = add_nodes(cluster, 3)
    proc = start_launcher(cluster, demo_shards, tmp_path, "--workers", 3, "--min-workers", 2, "--epochs", 5,
                          "--max-failures", 1)
    first = wait_for_epochs(proc, tmp_path / "mn", 1)[0]
    assert first["replicas"] == 3 and len(set(first["nodes"])) == 3
    kill_node(cluster, node_of(nodes, first["nodes"][2]))
    finish(proc)
    history = rows(tmp_path / "mn")
    assert [r["epoch"] for r in history] == [1, 2, 3, 4, 5]
    replicas = [r["replicas"] for r in history]
    assert replicas[0] == 3 and replicas[-1] == 2 and replicas == sorted(replicas, reverse=True)
    for r in history:  # the data re-split over the new world: still every validation image once
        assert r["val_images"] == 50 and r["global_batch_size"] == 8 * r["replicas"]
        assert r["lr"] == pytest.approx(PRESETS["demo"].base_lr * 8 * r["replicas"] / 128)  # the lr rule re-applied
    summary = json.loads((tmp_path / "mn" / "summary.json").read_text())
    assert summary["replicas_per_epoch"] == replicas and summary["nodes_lost"] >= 1


def test_elastic_run_grows_back_when_a_node_returns(cluster, demo_shards, tmp_path):
    add_nodes(cluster, 2)  # room for 2 of the 3 replicas asked for: an elastic run starts with what fits
    proc = start_launcher(cluster, demo_shards, tmp_path, "--workers", 3, "--min-workers", 2, "--epochs", 6,
                          "--resize-check-s", 5)
    assert wait_for_epochs(proc, tmp_path / "mn", 1)[0]["replicas"] == 2
    add_nodes(cluster, 1)
    finish(proc)
    history = rows(tmp_path / "mn")
    replicas = [r["replicas"] for r in history]
    assert len(replicas) == 6 and replicas[0] == 2 and replicas[-1] == 3 and replicas == sorted(replicas)
    # the larger world raised the peak (the demo preset's lr x 16/128 -> x 24/128): the replicas warm up to it, they
    # do not jump
    base = PRESETS["demo"].base_lr
    grown = history[replicas.index(3)]["lr"]
    assert base * 8 * 2 / 128 < grown < 0.99 * base * 8 * 3 / 128, grown


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


CLIENT = """if True:
    import sys, ray
    try:
        ray.init(address=sys.argv[1], logging_level="ERROR")
    except ConnectionError as e:
        print("REFUSED", e)
        raise SystemExit(3)
    print("CONNECTED", len([n for n in ray.nodes() if n["Alive"]]), ray.get(ray.remote(lambda: 6 * 7).remote()))
"""


@pytest.fixture
def ray_start_cluster(tmp_path):
    """The multi-node recipe as a user runs it: a token generated for this cluster into a file only its owner reads,
    RAY_AUTH_MODE=token and RAY_AUTH_TOKEN_PATH on every node, `ray start --head`, then a node that joins with
    `ray start --address`. HOME is a fresh folder, so no ~/.ray/auth_token of this machine's own takes part.
    Yields (address, the environment of a process that holds the token, the environment of one that does not)."""
    token = tmp_path / "ray_token"
    token.touch(mode=0o600)
    token.write_text(secrets.token_hex(32))  # what Ray's own generator makes: 256 random bits
    bare = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")}
    (tmp_path / "home").mkdir()
    bare.update(HOME=str(tmp_path / "home"), RAY_USAGE_STATS_ENABLED="0")
    env = {**bare, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token)}
    temp_dir = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # short: Ray's socket paths must fit in 107 bytes
    port = free_port()
    ray = str(Path(sys.executable).with_name("ray"))
    procs = []

    def start(*args):  # --block: the node's processes stay under this one, so the teardown finds them all
        procs.append(subprocess.Popen([ray, "start", "--block", "--num-cpus=1", *args], env=env, cwd=tmp_path,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True))

    try:
        start("--head", f"--port={port}", "--include-dashboard=false", f"--ray-client-server-port={free_port()}",
              f"--temp-dir={temp_dir}")
        address = f"127.0.0.1:{port}"
        deadline = time.time() + 120
        while subprocess.run([ray, "health-check", "--address", address], env=env, capture_output=True).returncode:
            assert procs[0].poll() is None and time.time() < deadline, "ray start --head did not come up"
            time.sleep(2)
        start(f"--address={address}")
        yield address, env, bare
    finally:
        doomed = [pid for p in procs for pid in descendants(p.pid)]
        for p in procs:
            p.terminate()  # ray start --block stops its node's processes on SIGTERM
        for p in procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
        for pid in doomed:  # whatever outlived its node's shutdown
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        shutil.rmtree(temp_dir, ignore_errors=True)


def test_ray_start_cluster_with_a_token_refuses_a_client_without_it(ray_start_cluster, demo_shards, tmp_path):
    address, with_token, without_token = ray_start_cluster

    def client(env):
        return subprocess.run([sys.executable, "-c", CLIENT, address], env=env, capture_output=True, text=True,
                              timeout=180)

    ok = client(with_token)  # the node that joined with the token counts too: 2 nodes
    deadline = time.time() + 60
    while ok.returncode == 0 and not ok.stdout.startswith("CONNECTED 2") and time.time() < deadline:
        time.sleep(2)
        ok = client(with_token)
    assert ok.returncode == 0 and ok.stdout.split() == ["CONNECTED", "2", "42"], ok.stdout + ok.stderr[-3000:]
    refused = client(without_token)
    assert refused.returncode == 3, refused.stdout + refused.stderr[-3000:]
    assert "InvalidAuthToken" in refused.stderr, refused.stderr[-3000:]
    wrong = client({**with_token, "RAY_AUTH_TOKEN": secrets.token_hex(32)})  # the variable outranks the file
    assert wrong.returncode == 3 and "InvalidAuthToken" in wrong.stderr, wrong.stdout + wrong.stderr[-3000:]
    launch = subprocess.run([sys.executable, "cluster/launch.py", "--address", address, "--data", str(demo_shards),
                             "--output-dir", str(tmp_path / "runs"), "--workers", "1", "-b", "8"], cwd=ROOT,
                            env=without_token, capture_output=True, text=True, timeout=180)
    assert launch.returncode == 2 and "run this with RAY_AUTH_MODE=token and RAY_AUTH_TOKEN_PATH" in launch.stderr, \
        launch.stdout + launch.stderr[-3000:]
