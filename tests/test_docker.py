"""compose.yaml, the GPU override, the KubeRay manifest and the Dockerfile, checked without a Docker engine:
the compose files against the Compose Specification's schema (check-jsonschema's vendored copy), and what they run
against this repository."""
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from cluster import launch

ROOT = Path(__file__).resolve().parents[1]


def load(name):
    return yaml.safe_load((ROOT / name).read_text())


def expand(text, env=None):
    """${VAR:-default} -> the default (or env[VAR]), as compose does without an .env file."""
    return re.sub(r"\$\{(\w+):-([^}]*)\}", lambda m: (env or {}).get(m.group(1), m.group(2)), text)


def launch_args(command):
    """The launch.py argument list inside a (possibly multi-step shell) command."""
    words = shlex.split(expand(command))
    i = words.index("cluster/launch.py")
    end = next((j for j in range(i + 1, len(words)) if words[j] in ("&&", ";", "||")), len(words))
    return words[i + 1:end]


@pytest.mark.parametrize("name", ["compose.yaml", "compose.gpu.yaml"])
def test_compose_files_follow_the_compose_spec(name):
    proc = subprocess.run([sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.compose-spec",
                           str(ROOT / name)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_services_commands_and_health():
    services = load("compose.yaml")["services"]
    assert set(services) == {"ray-head", "ray-worker", "trainer"}
    head = services["ray-head"]
    assert "exec ray start --head --block" in " ".join(head["command"])
    assert head["healthcheck"]["test"][1:3] == ["ray", "health-check"]
    for name in ("ray-worker", "trainer"):
        assert services[name]["depends_on"]["ray-head"]["condition"] == "service_healthy"
    worker, trainer = (" ".join(services[name]["command"]) for name in ("ray-worker", "trainer"))
    assert "exec ray start --address=ray-head:6379 --block" in worker
    assert "pipeline/build_shards.py --out /data/shards --resume" in trainer
    # the trainer builds unless finished shards are there; the worker joins once they are (see compose.yaml)
    finished = "manifest.load('/data/shards')"
    assert f"if ! python -c \"from pipeline import manifest; {finished}\"" in trainer
    assert f"until python -c \"from pipeline import manifest; {finished}\"" in worker
    gpu_worker = " ".join(load("compose.gpu.yaml")["services"]["ray-worker"]["command"])
    assert f"until python -c \"from pipeline import manifest; {finished}\"" in gpu_worker


def test_trainer_flags_are_accepted_by_launch():
    trainer = " ".join(load("compose.yaml")["services"]["trainer"]["command"])
    args = launch.get_args_parser().parse_args(launch_args(trainer))
    assert args.address == "auto" and args.workers == 2 and args.wait_for_resources
    assert str(args.data) == "/data/shards" and str(args.output_dir) == "/runs"
    rayjob = load("docker/rayjob.yaml")
    args = launch.get_args_parser().parse_args(launch_args(rayjob["spec"]["entrypoint"]))
    assert args.gpus_per_worker == 2 and args.workers == 4


def test_every_node_shares_shards_and_runs_and_has_shm():
    for name, svc in load("compose.yaml")["services"].items():
        mounts = {expand(v).split(":")[1] for v in svc["volumes"]}
        assert {"/data/shards", "/runs"} <= mounts, name
        size = svc["shm_size"]
        assert size.endswith("gb") and int(size[:-2]) >= 2, name


def test_published_ports_bind_localhost_only():
    for doc in ("compose.yaml", "compose.gpu.yaml"):
        for name, svc in load(doc)["services"].items():
            for port in svc.get("ports", []):
                assert str(port).startswith("127.0.0.1:"), f"{doc} {name} publishes {port}"
    ports = [expand(p) for p in load("compose.yaml")["services"]["ray-head"]["ports"]]
    assert ports == ["127.0.0.1:8265:8265", "127.0.0.1:10001:10001"]
    assert expand(load("compose.yaml")["services"]["ray-head"]["ports"][0], {"DASHBOARD_PORT": "0"}) \
        == "127.0.0.1:0:8265"  # any free host port (the docker test's), still on 127.0.0.1


def merged_services(*docs):
    """The services of `docker compose -f a -f b`, as far as image and build go (later files override keys)."""
    merged = {}
    for doc in docs:
        for name, svc in load(doc)["services"].items():
            merged.setdefault(name, {}).update({k: v for k, v in svc.items() if k in ("image", "build")})
    return merged


@pytest.mark.parametrize("docs", [("compose.yaml",), ("compose.yaml", "compose.gpu.yaml")])
def test_image_is_built_once_and_never_pulled(docs):
    services = merged_services(*docs)
    builders = [name for name, svc in services.items() if "build" in svc]
    assert builders == ["ray-head"], f"{docs}: services that build the image: {builders}"
    assert len({expand(svc["image"]) for svc in services.values()}) == 1, services  # one image for all
    base = load("compose.yaml")["services"]
    for name, svc in base.items():
        assert svc["pull_policy"] == "never", name  # no registry has it: compose builds it before any container
        if name != "ray-head":  # `docker compose up trainer` must bring in (and build) ray-head too
            assert "ray-head" in svc["depends_on"], name


def test_trainer_output_has_no_per_report_ray_info_lines():
    # Ray Train V2 logs "Reporting training result ..." at INFO on every report of every rank, past LoggingConfig
    for name, svc in load("compose.yaml")["services"].items():
        assert svc["environment"]["RAY_TRAIN_ENABLE_WORKER_STRUCTURED_LOGGING"] == "0", name


def test_compose_cluster_needs_a_token_made_at_run_time(tmp_path):
    """Ray 2.60 leaves a `ray start` cluster open: every node and client runs in token mode, reading the token from a
    volume that the head fills before Ray starts, never from the image, the compose file or the environment."""
    doc = load("compose.yaml")
    for name, svc in doc["services"].items():
        env = svc["environment"]
        assert env["RAY_AUTH_MODE"] == "token" and env["RAY_AUTH_TOKEN_PATH"] == "/auth/token", name
        assert "RAY_AUTH_TOKEN" not in env, name  # a token in the environment shows in `docker inspect`
        assert "ray-auth:/auth" in svc["volumes"], name
    assert "ray-auth" in doc["volumes"]
    head = " ".join(doc["services"]["ray-head"]["command"])
    make_token = re.search(r'python -c "([^"]+)"', head)
    assert head.index(make_token.group(0)) < head.index("exec ray start --head")  # the token exists before Ray does
    # the head's generator, run here twice: a 256-bit token its owner alone reads, kept when the volume has one
    token = tmp_path / "token"
    made = []
    for _ in range(2):
        proc = subprocess.run([sys.executable, "-c", make_token.group(1)], env={"RAY_AUTH_TOKEN_PATH": str(token)},
                              capture_output=True, text=True)
        assert proc.returncode == 0 and proc.stdout == "", proc.stdout + proc.stderr  # and never printed
        made.append(token.read_text())
    assert re.fullmatch(r"[0-9a-f]{64}", made[0]) and made[1] == made[0]
    assert token.stat().st_mode & 0o777 == 0o600
    dockerfile = (ROOT / "docker" / "Dockerfile").read_text()
    assert "RAY_AUTH_TOKEN" not in dockerfile and "auth_token" not in dockerfile  # nothing baked into the image
    for build in (doc["services"]["ray-head"]["build"], load("compose.gpu.yaml")["services"]["ray-head"]["build"]):
        assert not any("TOKEN" in arg for arg in build.get("args", {})), build


def test_kuberay_dashboard_reachable_in_cluster_only():
    cluster = load("docker/rayjob.yaml")["spec"]["rayClusterSpec"]
    head = cluster["headGroupSpec"]
    # the job submitter talks to the head service on 8265: the dashboard must listen on the pod's address
    assert head["rayStartParams"]["dashboard-host"] == "0.0.0.0"
    # ... and that service must never leave the cluster; the job API needs Ray's token inside it
    assert head["serviceType"] == "ClusterIP" and head["enableIngress"] is False
    assert "headService" not in head  # a custom service could set another type
    assert cluster["authOptions"]["mode"] == "token"


def test_gpu_override_reserves_two_gpus_per_worker():
    worker = load("compose.gpu.yaml")["services"]["ray-worker"]
    (device,) = worker["deploy"]["resources"]["reservations"]["devices"]
    assert device["count"] == 2 and device["capabilities"] == ["gpu"]
    assert "--num-gpus=2" in " ".join(worker["command"])
    assert load("compose.yaml")["services"]["ray-worker"].get("deploy") is None  # the default needs no GPU


def test_kuberay_manifest_shape():
    job = load("docker/rayjob.yaml")
    assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob"
    (group,) = job["spec"]["rayClusterSpec"]["workerGroupSpecs"]
    (container,) = group["template"]["spec"]["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 2 and group["rayStartParams"]["num-gpus"] == "2"


def test_dockerfile_copies_and_runs_what_exists():
    text = (ROOT / "docker" / "Dockerfile").read_text()
    for line in text.splitlines():
        if line.startswith("COPY ") and "--from=" not in line:  # --from copies out of an earlier stage
            for src in line.split()[1:-1]:
                assert (ROOT / src).exists(), src
    assert re.search(r"^USER (?!root)\w+", text, re.M)
    cmd = re.search(r'^CMD \["python", "([^"]+)"', text, re.M).group(1)
    assert (ROOT / cmd).is_file()
    for script in ("pipeline/build_shards.py", "cluster/launch.py"):
        assert (ROOT / script).is_file()
    for pin in (ROOT / "docker" / "constraints.txt").read_text().split():
        if "==" in pin:
            assert re.fullmatch(r"[\w.-]+==[\w.]+", pin), pin


def test_dependency_layer_does_not_depend_on_readme_or_code():
    # torch, DALI and Ray take minutes to reinstall: only the dependency list and the pins may key that layer
    lines = (ROOT / "docker" / "Dockerfile").read_text().splitlines()
    final = lines[max(i for i, line in enumerate(lines) if line.startswith("FROM ")):]
    install = next(i for i, line in enumerate(final) if "-r requirements.txt" in line)
    copied = [w for line in final[:install] if line.startswith("COPY ") for w in line.split()[1:-1]]
    assert copied == ["docker/constraints.txt", "--from=requirements", "/tmp/requirements.txt"], copied


def test_dockerignore_keeps_data_runs_and_venvs_out():
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {"data/", "runs/", ".venv/"} <= set(ignored)


def test_kuberay_pods_run_as_the_images_user_and_can_write_the_volume():
    # the image's user owns nothing on a fresh volume: fsGroup makes Kubernetes hand the mounted volume to its group
    uid = int(re.search(r"useradd .*--uid (\d+)", (ROOT / "docker" / "Dockerfile").read_text()).group(1))
    cluster = load("docker/rayjob.yaml")["spec"]["rayClusterSpec"]
    for group in (cluster["headGroupSpec"], *cluster["workerGroupSpecs"]):
        pod = group["template"]["spec"]
        assert pod["securityContext"]["runAsUser"] == uid and pod["securityContext"]["fsGroup"] == uid
        mounts = {m["mountPath"] for c in pod["containers"] for m in c["volumeMounts"]}
        assert {"/data", "/runs"} <= mounts
