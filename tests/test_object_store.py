"""Shards in an S3-compatible store: build -> upload -> DALI readers over s3://, and the errors, against moto's
server started on 127.0.0.1 by the test (credentials: moto's dummy ones, from the environment only)."""
import collections
import json
import socket
from pathlib import Path

import pytest

from benchmarks.loader_s3 import moto_server
from cluster import launch, report
from pipeline import build_shards as bs
from pipeline import manifest as mf
from pipeline import object_store as store
from pipeline.loader import make_loader
from pipeline.samples import read_samples

boto3 = pytest.importorskip("boto3")
pytest.importorskip("moto.server")

SLOW = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def endpoint():
    server, url = moto_server()
    try:
        yield url
    finally:
        server.terminate()
        server.wait(timeout=10)


@pytest.fixture
def s3(endpoint, monkeypatch, tmp_path):
    for key, value in {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "AKIDTESTONLY0001",
                       "AWS_SECRET_ACCESS_KEY": "s3cr3t-test-only", "AWS_REGION": "us-east-1",
                       "AWS_DEFAULT_REGION": "us-east-1", "ALEXNET_CACHE": str(tmp_path / "cache")}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(store, "_LOCAL", {})
    client = boto3.client("s3")
    if "shards" not in [b["Name"] for b in client.list_buckets()["Buckets"]]:
        client.create_bucket(Bucket="shards")
    return client


def upload_demo(uri, tmp_path, **kw):
    return bs.build(bs.BuildConfig(out=uri, staging=tmp_path / "staging", jobs=1, demo_train_per_class=8,
                                   demo_val_per_class=5, shard_size=13, size=64, **kw))


def test_build_upload_then_read_every_validation_sample_once_over_s3(s3, tmp_path):
    man = upload_demo("s3://shards/demo", tmp_path)
    keys = {o["Key"] for o in s3.list_objects_v2(Bucket="shards", Prefix="demo/")["Contents"]}
    assert "demo/manifest.json" in keys and f"demo/val/{man['splits']['val']['shards'][0]['tar']}" in keys
    assert store.verify("s3://shards/demo") == []
    seen = collections.Counter()
    for shard in range(2):
        loader = make_loader("s3://shards/demo", "val", 4, shard_id=shard, num_shards=2, train=False, crop=32)
        assert loader.tars[0].startswith("s3://shards/demo/val/")  # DALI reads the tar from the store
        for _, _, indices in loader:
            seen.update(indices.tolist())
    assert sorted(seen) == list(range(50)) and set(seen.values()) == {1}
    train = make_loader("s3://shards/demo", "train", 8, train=False, crop=32)
    assert sum(len(i) for _, _, i in train) == 80
    positions = [0, 7, 49]  # figure 4's reads: ranged GETs from the store, the same bytes as from disk
    assert read_samples("s3://shards/demo", man, "val", positions) == \
        read_samples(tmp_path / "staging", man, "val", positions)
    cached = list((tmp_path / "cache").rglob("*.idx"))
    assert len(cached) == len(man["splits"]["train"]["shards"]) + len(man["splits"]["val"]["shards"])


def test_verify_and_resume_upload(s3, tmp_path, capsys):
    man = upload_demo("s3://shards/resume", tmp_path)
    tar = man["splits"]["train"]["shards"][1]["tar"]
    s3.delete_object(Bucket="shards", Key=f"resume/train/{tar}")
    assert any(tar in p and "missing" in p for p in store.verify("s3://shards/resume"))
    assert bs.main(["--out", "s3://shards/resume", "--verify"]) == 1
    s3.delete_object(Bucket="shards", Key="resume/manifest.json")  # as if killed before the manifest went up
    with pytest.raises(bs.BuildError, match="--resume"):
        upload_demo("s3://shards/resume", tmp_path)
    capsys.readouterr()
    upload_demo("s3://shards/resume", tmp_path, resume=True)
    files = 2 * sum(len(s["shards"]) for s in man["splits"].values())
    assert f"1 files uploaded, {files - 1} already there" in capsys.readouterr().out
    assert store.verify("s3://shards/resume") == []
    s3.put_object(Bucket="shards", Key=f"resume/train/{tar}", Body=b"not the shard")
    assert any(tar in p and "differ" in p for p in store.verify("s3://shards/resume"))


@pytest.mark.parametrize("uri, env, message", [
    ("s3://no-such-bucket/x", {}, "bucket 'no-such-bucket' does not exist"),
    ("s3://shards/nothing-here", {}, "no manifest.json"),
    ("s3://shards/x", {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{free_port()}"}, "cannot reach"),
    ("s3://shards/x", {"AWS_ACCESS_KEY_ID": None, "AWS_SECRET_ACCESS_KEY": None, "AWS_PROFILE": None,
                       "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent", "AWS_CONFIG_FILE": "/nonexistent",
                       "AWS_EC2_METADATA_DISABLED": "true"}, "no AWS credentials"),
    ("s3://AKIA:secret@shards/x", {}, "credentials do not belong in the URI"),
])
def test_errors_name_the_uri_before_ray_starts(s3, tmp_path, monkeypatch, capsys, uri, env, message):
    for key, value in env.items():
        monkeypatch.delenv(key, raising=False) if value is None else monkeypatch.setenv(key, value)
    with pytest.raises(mf.ManifestError, match=message):
        mf.load(uri)
    assert launch.main(["--data", uri, "--output-dir", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err
    assert message in err and "secret" not in err
    assert uri.split("@")[-1] in err
    assert not (tmp_path / "runs").exists()  # refused before anything was written or Ray started


def test_refused_credentials_are_explained():
    from botocore.exceptions import ClientError
    e = ClientError({"Error": {"Code": "InvalidAccessKeyId", "Message": "bad key"}}, "HeadBucket")
    msg = str(store.explain(e, "s3://b/p"))
    assert "s3://b/p" in msg and "refused the credentials" in msg and "AWS_ACCESS_KEY_ID" in msg


@SLOW
def test_launch_trains_one_epoch_from_s3_and_reports(s3, tmp_path, capsys, monkeypatch):
    # ray.init() without an address attaches to the newest Ray cluster running on the machine, if any (Ray 2.60's
    # get_ray_address_from_environment): "local" keeps this test's run on a cluster of its own.
    monkeypatch.setenv("RAY_ADDRESS", "local")
    upload_demo("s3://shards/train", tmp_path)
    runs = tmp_path / "runs"
    assert launch.main(["--data", "s3://shards/train", "--output-dir", str(runs), "--name", "s3", "--epochs", "1",
                        "--workers", "2", "-b", "8", "--crop", "64", "--cpus-per-worker", "0.5",
                        "--storage", "s3://shards/runs"]) == 0
    stored = [o["Key"] for o in s3.list_objects_v2(Bucket="shards", Prefix="runs/s3/")["Contents"]]
    assert any("checkpoint" in k for k in stored), stored  # the object-store variant keeps no shared volume
    cfg = json.loads((runs / "s3" / "config.json").read_text())
    assert cfg["data"] == "s3://shards/train"
    summary = json.loads((runs / "s3" / "summary.json").read_text())
    assert summary["epochs"] == 1 and summary["workers"] == 2
    capsys.readouterr()
    assert report.main([str(runs / "s3")]) == 0  # checkpoint from the store, figure 4's images over s3:// too
    assert "figure4" in capsys.readouterr().out
    text = "".join(p.read_text(errors="replace") for p in (runs / "s3").rglob("*") if p.is_file()
                   and p.suffix in (".json", ".jsonl", ".txt", ".log"))
    assert "AKIDTESTONLY0001" not in text and "s3cr3t-test-only" not in text  # in no file of the run


def test_rayjob_object_store_variant():
    """docker/rayjob-s3.yaml: shards and checkpoints in the store, no shared volume, credentials only from a Secret."""
    yaml = pytest.importorskip("yaml")
    text = (ROOT / "docker" / "rayjob-s3.yaml").read_text()
    job = yaml.safe_load(text)
    args = launch.get_args_parser().parse_args(job["spec"]["entrypoint"].split()[2:])
    assert store.is_uri(args.data) and args.storage.startswith("s3://")
    cluster = job["spec"]["rayClusterSpec"]
    pods = [cluster["headGroupSpec"]["template"]["spec"]] + [g["template"]["spec"] for g in
                                                             cluster["workerGroupSpecs"]]
    for pod in pods:
        assert not any("persistentVolumeClaim" in v for v in pod["volumes"])
        (container,) = pod["containers"]
        assert container["envFrom"] == [{"secretRef": {"name": "alexnet-s3"}}]
        assert "env" not in container  # no credential written into the manifest
    assert cluster["authOptions"]["mode"] == "token" and cluster["headGroupSpec"]["serviceType"] == "ClusterIP"
