"""Training on Ray, on CPU: end to end, resume, a worker failure, gradient sync, and clear errors for bad flags.
Each test starts a small local Ray cluster, so these are the slowest tests of the suite (about a minute each)."""
import json
import shutil

import pytest
import torch

from cluster import launch
from cluster.recipe import PRESETS

SLOW = pytest.mark.slow  # each of these starts a Ray cluster

TINY = ["--workers", "2", "-b", "8", "--crop", "64", "--print-freq", "5", "--cpus-per-worker", "0.5"]


def run(tmp_path, data, *extra):
    return launch.main(["--data", str(data), "--output-dir", str(tmp_path / "runs"), *TINY, *map(str, extra)])


def metrics(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def finished_run(demo_shards, tmp_path_factory):
    """Two epochs with checkpoints kept elsewhere (--storage) than the outputs (--output-dir)."""
    tmp = tmp_path_factory.mktemp("e2e")
    assert run(tmp, demo_shards, "--epochs", 2, "--name", "e2e", "--storage", tmp / "ckpt") == 0
    yield tmp, tmp / "runs" / "e2e"
    shutil.rmtree(tmp, ignore_errors=True)  # two ~435 MB checkpoints: CI's disk is shared with the rest of the suite


@SLOW
def test_end_to_end_outputs_are_the_drivers_and_checkpoints_go_to_storage(finished_run):
    tmp, run_dir = finished_run
    summary = json.loads((run_dir / "summary.json").read_text())
    for key in ("val_top1_error", "val_top5_error", "val_top1_error_10crop", "epochs", "images_per_second",
                "workers", "devices", "checkpoint"):
        assert summary[key] is not None, key
    assert summary["epochs"] == 2 and summary["workers"] == 2 and summary["devices"] == "CPU"
    assert summary["replicas_per_epoch"] == [2, 2] and summary["failures"] == 0
    rows = metrics(run_dir)
    # the summary is the last epoch's evaluation: errors are counts of the 50 validation images, top-5 <= top-1
    for key in ("val_top1_error", "val_top5_error"):
        assert summary[key] == rows[-1][key] and (summary[key] * 50) == pytest.approx(round(summary[key] * 50))
    assert summary["val_top5_error"] <= summary["val_top1_error"] and summary["images_per_second"] > 0
    assert [m["epoch"] for m in rows] == [1, 2]
    assert all(m["val_images"] == 50 and m["replicas"] == 2 and len(m["nodes"]) == 2 for m in rows)
    assert (run_dir / "learning_curves.png").stat().st_size > 1000
    assert (run_dir / "conv1_kernels.png").stat().st_size > 1000
    assert (run_dir / "figure4.png").stat().st_size > 1000
    assert list((run_dir / "tensorboard").glob("events.out.tfevents.*"))
    assert not list(run_dir.glob("checkpoint_*"))  # checkpoints live in --storage, outputs in --output-dir
    ckpts = sorted((tmp / "ckpt" / "e2e").glob("checkpoint_*/checkpoint.pt"))
    assert ckpts and summary["checkpoint"] == str(ckpts[-1].parent)
    state = torch.load(ckpts[-1], map_location="cpu", weights_only=True)
    assert state["epoch"] == 1 and state["model"]["conv1.weight"].shape == (96, 3, 11, 11)
    assert {"optimizer", "schedule", "metrics"} <= set(state)
    cfg = json.loads((run_dir / "config.json").read_text())
    # 2 replicas x 8 images: a global batch of 16, so the demo preset's 0.0025 per 128 images becomes 0.0003125
    assert cfg["global_batch_size"] == 16 and cfg["lr"] == pytest.approx(0.0003125) and cfg["base_lr"] == 0.0025
    assert cfg["warmup_epochs"] == 0 and cfg["preset"] == "demo" and cfg["storage"] == str(tmp / "ckpt")
    assert cfg["normalize"] == "paper" and not cfg["central_square"] and not cfg["decay_biases"]
    assert rows[0]["lr"] == pytest.approx(0.0003125)


@SLOW
def test_a_finished_run_classifies_images_without_its_shards(finished_run, demo_shards, capsys):
    """The launcher records the classes, the build's resize and the statistics (inputs.json): cluster/classify.py
    then needs the run folder and its checkpoint only."""
    from cluster import classify
    from pipeline import demo_data
    from pipeline import manifest as mf
    tmp, run_dir = finished_run
    recorded = json.loads((run_dir / "inputs.json").read_text())
    manifest = mf.load(demo_shards)
    assert recorded["classes"] == manifest["classes"] and recorded["names"] == manifest["names"]
    assert recorded["build"]["size"] == manifest["build"]["size"] and recorded["stats"]["mean"] == \
        manifest["stats"]["mean"]
    moved = tmp / "moved"
    shutil.copytree(run_dir, moved)
    config = json.loads((moved / "config.json").read_text())
    (moved / "config.json").write_text(json.dumps({**config, "data": str(tmp / "no-shards-here")}))
    image = tmp / "blue.jpg"
    image.write_bytes(demo_data.demo_jpeg("val", 0, 7, len(manifest["classes"]), seed=5))
    capsys.readouterr()
    assert classify.main(["--run", str(moved), str(image), "-k", "10"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in manifest["names"]) and out.count("%") == 10


@SLOW
def test_resume_continues_at_the_next_epoch_and_applies_only_changeable_flags(finished_run, capsys):
    tmp, run_dir = finished_run
    before = metrics(run_dir)
    common = ["--output-dir", str(tmp / "runs"), "--name", "e2e", "--resume"]
    assert launch.main([*common, "--epochs", "3", "--lr", "0.1"]) == 2  # would change what the run computes
    err = capsys.readouterr().err
    assert "--lr 0.1 differs from the run's saved value base_lr=0.0025" in err
    # --print-freq as saved: fine. 3 replicas instead of 2: peak 0.0025 x 24/128, reached by a warmup from 0.0003125
    assert launch.main([*common, "--epochs", "3", "--print-freq", "5", "--workers", "3"]) == 0
    out = capsys.readouterr().out
    assert "--epochs 3 applied (was 2)" in out and "--workers 3 applied (was 2)" in out
    assert "peak lr follows the global batch: 0.00046875 for 3 replica(s) (was 0.0003125)" in out
    after = metrics(run_dir)
    assert [m["epoch"] for m in after] == [1, 2, 3] and after[:2] == before and after[2]["replicas"] == 3
    # the last step of the ramp's first epoch (of 5): 0.0003125 + 0.00015625 x 0.8 / 5, not the new peak
    assert after[2]["lr"] == pytest.approx(0.0003125 + 0.00015625 * 0.8 / 5), after[2]["lr"]
    assert json.loads((run_dir / "config.json").read_text())["epochs"] == 3


@SLOW
def test_a_failing_worker_is_replaced_and_no_epoch_counts_twice(demo_shards, tmp_path, monkeypatch):
    from cluster.worker import FAILURE_ENV
    monkeypatch.setenv(FAILURE_ENV, "1:1")
    assert run(tmp_path, demo_shards, "--epochs", 2, "--name", "f", "--max-failures", 1) == 0
    run_dir = tmp_path / "runs" / "f"
    assert "inject" not in (run_dir / "config.json").read_text()  # a test hook, not a setting of the run
    events = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]
    assert len(events) == 1 and "injected failure" in events[0]["ranks"]["1"]["error"]
    assert not events[0]["node_lost"]  # its node is alive: a failure in the training code
    assert [m["epoch"] for m in metrics(run_dir)] == [1, 2]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["epochs"] == 2 and summary["failures"] == 1 and summary["nodes_lost"] == 0


def tiny_config(data, tmp_path, *flags):
    """A resolved TrainConfig for the demo shards, as launch.py makes it, on a 2-CPU cluster without GPUs."""
    from cluster.resolve import new_config, plan_resources
    args = launch.get_args_parser().parse_args(["--data", str(data), "--output-dir", str(tmp_path), "--name", "t",
                                                *TINY, *flags])
    return plan_resources(new_config(args, data), {"CPU": 2})


def _grad_digest_loop(loop_config):
    """Inside a Ray worker: one DDP step on rank-specific data, then every rank's gradients, gathered."""
    import ray.train
    import torch.distributed as dist

    from cluster.worker import build_replica, replica_devices

    cfg = loop_config["config"]
    torch.manual_seed(0)  # same initial weights on every rank
    model, ddp = build_replica(cfg, replica_devices(cfg))
    rank = ray.train.get_context().get_world_rank()
    torch.manual_seed(100 + rank)  # different data on every rank
    x, y = torch.randn(4, 3, 64, 64), torch.randint(0, cfg.num_classes, (4,))
    torch.nn.functional.cross_entropy(ddp(x), y).backward()
    flat = torch.cat([p.grad.flatten() for p in model.parameters()])
    gathered = [torch.empty_like(flat) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, flat)
    result = {"max_diff": max((g - gathered[0]).abs().max().item() for g in gathered), "norm": flat.norm().item()}
    with open(f"{loop_config['out']}/rank{rank}.json", "w") as f:  # Train V2 keeps metrics only with a checkpoint
        json.dump(result, f)
    ray.train.report(result)


@SLOW
def test_gradients_are_identical_across_replicas(demo_shards, tmp_path):
    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer
    cfg = {"config": tiny_config(demo_shards, tmp_path, "--dropout", "0"), "out": str(tmp_path)}
    import sys
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import this test module
    ray.init(num_cpus=2, dashboard_host="127.0.0.1", _node_ip_address="127.0.0.1")
    try:
        TorchTrainer(_grad_digest_loop, train_loop_config=cfg,
                     scaling_config=ScalingConfig(num_workers=2, resources_per_worker={"CPU": 0.5}),
                     run_config=RunConfig(name="grads", storage_path=str(tmp_path))).fit()
    finally:
        ray.shutdown()
    for rank in (0, 1):
        got = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert got["norm"] > 0 and got["max_diff"] == 0.0  # DDP averaged rank-specific gradients: all equal


def test_too_small_a_cluster_is_a_clear_error_not_a_wait(demo_shards, tmp_path, capsys):
    from cluster.resolve import LaunchError
    with pytest.raises(LaunchError, match="needs 128 CPUs and 0 GPUs .*--wait-for-resources"):
        tiny_config(demo_shards, tmp_path, "--cpus-per-worker", "64")
    cfg = tiny_config(demo_shards, tmp_path, "--cpus-per-worker", "64", "--wait-for-resources")
    assert cfg.cpus_per_worker == 64 and "waiting for resources" in capsys.readouterr().out


@pytest.mark.parametrize("flags, available, expected", [
    ([], {"CPU": 2}, (0.0, 0.5, 1, "gloo")),  # 4 workers share 2 CPUs in quarters
    (["--workers", "2"], {"CPU": 16, "GPU": 4}, (2.0, 8.0, 8, "nccl")),  # whole GPUs: NCCL; at most 8 CPUs each
    (["--workers", "2", "--gpus-per-worker", "0.5"], {"CPU": 3, "GPU": 1}, (0.5, 1.5, 2, "gloo")),
    (["--workers", "2", "--column1-device", "cpu"], {"CPU": 4, "GPU": 4}, (2.0, 2.0, 2, "gloo")),
    (["--workers", "2", "-j", "1", "--cpus-per-worker", "1"], {"CPU": 8}, (0.0, 1.0, 1, "gloo")),
])
def test_plan_resources_from_what_the_cluster_has(demo_shards, tmp_path, flags, available, expected):
    from cluster.resolve import new_config, plan_resources
    args = launch.get_args_parser().parse_args(["--data", str(demo_shards), "--output-dir", str(tmp_path),
                                                "--name", "p", "-b", "8", *flags])
    cfg = plan_resources(new_config(args, demo_shards), available)
    assert (cfg.gpus_per_worker, cfg.cpus_per_worker, cfg.threads, cfg.backend) == expected
    assert cfg.global_batch_size == 8 * cfg.workers
    assert cfg.lr == pytest.approx(PRESETS["demo"].base_lr * 8 * cfg.workers / 128)


def test_nccl_without_whole_gpus_is_refused(demo_shards, tmp_path):
    from cluster.resolve import LaunchError
    with pytest.raises(LaunchError, match="--backend nccl needs whole GPUs"):
        tiny_config(demo_shards, tmp_path, "--backend", "nccl", "--gpus-per-worker", "0.5")


@pytest.mark.parametrize("flags, message", [
    (["--workers", "0"], "--replicas must be >= 1"),
    (["-b", "1000"], "larger than a worker's share"),
    (["--gpus-per-worker", "3"], "--gpus-per-worker must be 0, a fraction up to 1, or 2"),
])
def test_bad_flags(demo_shards, tmp_path, capsys, flags, message):
    assert run(tmp_path, demo_shards, "--name", "x", *flags) == 2
    assert message in capsys.readouterr().err


def test_missing_data_and_missing_run(tmp_path, capsys):
    assert launch.main(["--data", str(tmp_path / "nowhere"), "--output-dir", str(tmp_path)]) == 2
    assert "no manifest.json" in capsys.readouterr().err
    assert launch.main(["--output-dir", str(tmp_path), "--name", "ghost", "--resume"]) == 2
    assert "no run at" in capsys.readouterr().err


def test_every_flag_help_states_its_default():
    for action in launch.get_args_parser()._actions:
        if action.help not in (None, "==SUPPRESS==") and action.dest != "help":
            assert "default" in action.help, action.dest


@pytest.fixture
def no_ray(monkeypatch):
    """These checks must happen before Ray starts: starting it fails the test."""
    import ray

    def refuse(*args, **kwargs):
        raise AssertionError("ray.init was called")
    monkeypatch.setattr(ray, "init", refuse)


def saved_run(data, tmp_path, *flags):
    """A run's config.json as launch.py writes it (no training): the argv that resumes it."""
    cfg = tiny_config(data, tmp_path, *flags)
    cfg.run_dir.mkdir(parents=True)
    cfg.save(cfg.run_dir)
    return ["--output-dir", str(tmp_path), "--name", "t", "--resume"]


def resumed(argv):
    from cluster.resolve import resumed_config
    return resumed_config(launch.get_args_parser().parse_args(argv), launch.explicit_flags(argv))


def test_a_relative_storage_is_made_absolute(demo_shards, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # pyarrow took "ckpt" for a URI without a scheme, inside fit()
    assert tiny_config(demo_shards, tmp_path, "--storage", "ckpt").storage == str(tmp_path / "ckpt")
    assert tiny_config(demo_shards, tmp_path, "--storage", "s3://bucket/runs").storage == "s3://bucket/runs"
    assert tiny_config(demo_shards, tmp_path).storage == str(tmp_path)  # default: --output-dir


@pytest.mark.parametrize("flag", ["--storage", "--output-dir"])
def test_a_path_flag_under_a_file_is_refused_before_ray_starts(demo_shards, tmp_path, capsys, no_ray, flag):
    (tmp_path / "afile").write_text("")
    assert run(tmp_path, demo_shards, "--name", "x", flag, tmp_path / "afile" / "sub") == 2
    err = capsys.readouterr().err
    assert f"{flag} {tmp_path / 'afile' / 'sub'}: {tmp_path / 'afile'} is a file, not a folder" in err


@pytest.mark.parametrize("flags, said", [
    (["--no-lrn"], "--no-lrn differs from the run's saved value lrn=True"),
    (["--no-overlap"], "--no-overlap differs from the run's saved value overlapping_pool=True"),
    (["--weight-decay", "0.1"], "--weight-decay 0.1 differs from the run's saved value wd=0.0005"),
    (["--wd=0.1"], "--wd 0.1 differs"),
    (["--lr", "0.1"], "--lr 0.1 differs from the run's saved value base_lr=0.0025"),
    (["--no-l"], "--no-lrn differs"),  # abbreviated: the flag's full name
])
def test_a_refused_resume_names_the_flag_as_typed(demo_shards, tmp_path, capsys, no_ray, flags, said):
    resume = saved_run(demo_shards, tmp_path)
    assert launch.main([*resume, *flags]) == 2
    assert said in capsys.readouterr().err


def test_resume_applies_changeable_flags_and_says_the_new_peak(demo_shards, tmp_path, capsys):
    resume = saved_run(demo_shards, tmp_path)
    cfg = resumed([*resume, "--workers", "4", "--epochs", "5", "--lr", "0.0025"])  # --lr as saved: fine
    assert (cfg.workers, cfg.min_workers, cfg.epochs, cfg.base_lr) == (4, 4, 5, 0.0025)  # fixed-size stays fixed
    out = capsys.readouterr().out
    assert "--workers 4 applied (was 2)" in out and "--epochs 5 applied (was 10)" in out
    assert "peak lr follows the global batch: 0.000625 for 4 replica(s) (was 0.0003125)" in out


def test_resume_keeps_an_elastic_runs_minimum(demo_shards, tmp_path):
    resume = saved_run(demo_shards, tmp_path, "--min-workers", "1")
    assert (resumed([*resume, "--workers", "3"]).min_workers, resumed([*resume, "--workers", "3"]).workers) == (1, 3)
    assert resumed([*resume, "--workers", "3", "--min-workers", "2"]).min_workers == 2


def test_the_failure_hook_aims_at_a_rank_of_the_live_world():
    from cluster.worker import failure_hook
    hook = failure_hook((1, 1), rank=0, world=1, start_epoch=0)  # --workers 2 shrunk to 1: rank 0 is all there is
    hook(0, 1)
    hook(1, 0)
    with pytest.raises(RuntimeError, match="injected failure at epoch 1, step 1"):
        hook(1, 1)
    assert failure_hook((1, 1), rank=0, world=2, start_epoch=0) is None  # rank 1 fails where it exists
    assert failure_hook((1, 1), rank=1, world=2, start_epoch=0) is not None
    assert failure_hook((1, 1), rank=1, world=2, start_epoch=1) is None  # the restart from a checkpoint goes on
    assert failure_hook(None, rank=1, world=2, start_epoch=0) is None


def test_the_failure_hook_is_no_setting_of_the_run(demo_shards, tmp_path, capsys, monkeypatch, no_ray):
    import dataclasses

    from cluster.recipe import TrainConfig
    from cluster.worker import FAILURE_ENV
    assert "inject_failure" not in {f.name for f in dataclasses.fields(TrainConfig)}
    with pytest.raises(SystemExit):
        launch.get_args_parser().parse_args(["--inject-failure", "1:1"])
    monkeypatch.setenv(FAILURE_ENV, "soon")
    assert run(tmp_path, demo_shards, "--name", "x") == 2
    assert f"${FAILURE_ENV}='soon': expected EPOCH:STEP" in capsys.readouterr().err
    # a config.json that an earlier version wrote with the hook in it still resumes
    saved_run(demo_shards, tmp_path)
    path = tmp_path / "t" / "config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "inject_failure": None}))
    assert TrainConfig.load(tmp_path / "t").workers == 2
