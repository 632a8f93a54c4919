"""Training on Ray, on CPU: end to end, resume, a worker failure, gradient sync, and clear errors for bad flags.
Each test starts a small local Ray cluster, so these are the slowest tests of the suite (about a minute each)."""
import json

import pytest
import torch

from cluster import launch

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
    return tmp, tmp / "runs" / "e2e"


@SLOW
def test_end_to_end_outputs_are_the_drivers_and_checkpoints_go_to_storage(finished_run):
    tmp, run_dir = finished_run
    summary = json.loads((run_dir / "summary.json").read_text())
    for key in ("val_top1_error", "val_top5_error", "val_top1_error_10crop", "epochs", "images_per_second",
                "workers", "devices", "checkpoint"):
        assert summary[key] is not None, key
    assert summary["epochs"] == 2 and summary["workers"] == 2 and summary["devices"] == "CPU"
    assert summary["replicas_per_epoch"] == [2, 2] and summary["failures"] == 0
    assert 0 <= summary["val_top1_error"] <= 1 and summary["images_per_second"] > 0
    rows = metrics(run_dir)
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
def test_resume_continues_at_the_next_epoch_and_applies_only_changeable_flags(finished_run, capsys):
    tmp, run_dir = finished_run
    before = metrics(run_dir)
    common = ["--output-dir", str(tmp / "runs"), "--name", "e2e", "--resume"]
    assert launch.main([*common, "--epochs", "3", "--lr", "0.1"]) == 2  # would change what the run computes
    err = capsys.readouterr().err
    assert "--lr 0.1 differs from the run's saved value 0.0025" in err
    assert launch.main([*common, "--epochs", "3", "--print-freq", "5"]) == 0  # same value as saved: fine
    assert "--epochs 3 applied (was 2)" in capsys.readouterr().out
    after = metrics(run_dir)
    assert [m["epoch"] for m in after] == [1, 2, 3] and after[:2] == before
    assert json.loads((run_dir / "config.json").read_text())["epochs"] == 3


@SLOW
def test_a_failing_worker_is_replaced_and_no_epoch_counts_twice(demo_shards, tmp_path):
    assert run(tmp_path, demo_shards, "--epochs", 2, "--name", "f", "--max-failures", 1, "--inject-failure", "1:1") == 0
    run_dir = tmp_path / "runs" / "f"
    events = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]
    assert len(events) == 1 and "injected failure" in events[0]["ranks"]["1"]["error"]
    assert not events[0]["node_lost"]  # its node is alive: a failure in the training code
    assert [m["epoch"] for m in metrics(run_dir)] == [1, 2]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["epochs"] == 2 and summary["failures"] == 1 and summary["nodes_lost"] == 0


def tiny_config(data, tmp_path, *flags):
    """A resolved TrainConfig for the demo shards, as launch.py makes it, on a 2-CPU cluster without GPUs."""
    from cluster.settings import new_config, plan_resources
    args = launch.get_args_parser().parse_args(["--data", str(data), "--output-dir", str(tmp_path), "--name", "t",
                                                *TINY, *flags])
    return plan_resources(new_config(args, data), {"CPU": 2})


def _grad_digest_loop(loop_config):
    """Inside a Ray worker: one DDP step on rank-specific data, then every rank's gradients, gathered."""
    import ray.train
    import torch.distributed as dist

    from cluster.train import build_replica, replica_devices

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


@SLOW
def test_too_small_a_cluster_is_a_clear_error_not_a_wait(demo_shards, tmp_path, capsys):
    assert run(tmp_path, demo_shards, "--name", "big", "--cpus-per-worker", 64) == 2
    err = capsys.readouterr().err
    assert "needs 128 CPUs" in err and "--wait-for-resources" in err


@pytest.mark.parametrize("flags, message", [
    (["--workers", "0"], "--workers must be >= 1"),
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
