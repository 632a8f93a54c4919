"""Train AlexNet on a Ray cluster: N data-parallel replicas, each split over two GPUs as in the paper.

    python cluster/launch.py --workers 4                          # local Ray; demo shards built if missing
    python cluster/launch.py --workers 4 --data /data/shards --epochs 90 --amp
    python cluster/launch.py --address ray://head:10001 --workers 16 --data /shared/shards
    python cluster/launch.py --name my-run --resume               # continue a stopped run at its epoch

Without GPUs everything runs on the CPU with gloo (the same code path, said once). On the embedded demo set the
defaults switch to a preset that learns within minutes on a laptop: crop 112, Kaiming init, batch 32, 10 epochs,
lr patience 10 (no decay within the run).
Outputs go to --output-dir/--name: Ray checkpoints, metrics.jsonl, tensorboard/, summary.json and two PNGs.
"""
import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repo root importable
    sys.path[0] = str(Path(__file__).resolve().parents[1])

from pipeline import build_shards, demo_data  # noqa: E402
from pipeline import manifest as mf  # noqa: E402

DEFAULT_DATA = Path("data/shards")
# flag: (paper / real data, demo set). The paper's recipe unless the data is the embedded demo set.
# The demo's patience outlasts its 10 epochs: 300 validation images make single epochs noisy, and an early lr / 10
# (seen: after epoch 5) left the run at 0.58 top-1 error instead of ~0.2.
PRESETS = {"batch_size": (128, 32), "epochs": (90, 10), "crop": (224, 112), "init": ("paper", "kaiming"),
           "lr_patience": (2, 10)}
KEPT_ON_RESUME = {"resume", "epochs", "address", "max_failures", "wait_for_resources", "print_freq"}


class LaunchError(Exception):
    """Bad flags or an unusable cluster; the message says what to do."""


def get_args_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    a = p.add_argument
    a("--data", type=Path, default=None,
      help=f"shard folder from pipeline/build_shards.py (default: {DEFAULT_DATA}; the demo set is built there "
           "if missing)")
    a("--workers", type=int, default=4, help="data-parallel replicas, one Ray worker each (default: 4)")
    a("--gpus-per-worker", type=int, default=None,
      help="GPUs per replica: 2 puts the columns on two GPUs, 1 both on one (default: 2 with GPUs, 0 without)")
    a("--cpus-per-worker", type=float, default=None,
      help="CPUs reserved per replica, fractions allowed (default: the cluster's CPUs / workers, at most 8)")
    a("--address", default=os.environ.get("RAY_ADDRESS"),
      help="an existing Ray cluster, e.g. ray://head:10001 (default: $RAY_ADDRESS, else a new local cluster)")
    a("-b", "--batch-size", type=int, default=None, help="images per replica per step (default: 128; demo 32)")
    a("--epochs", type=int, default=None, help="epochs to train (default: 90 as in the paper; demo 10)")
    a("--lr", type=float, default=0.01, help="initial learning rate (default: 0.01)")
    a("--momentum", type=float, default=0.9, help="SGD momentum (default: 0.9)")
    a("--wd", "--weight-decay", dest="wd", type=float, default=5e-4, help="weight decay (default: 5e-4)")
    a("--lr-schedule", choices=["plateau", "step"], default="plateau",
      help="plateau: lr / 10 when val error stops improving, at most 3 times; step: every --lr-step-size epochs "
           "(default: plateau)")
    a("--lr-patience", type=int, default=None,
      help="epochs without improvement before lr / 10 (default: 2; demo 10)")
    a("--lr-step-size", type=int, default=30, help="epochs per lr / 10 with --lr-schedule step (default: 30)")
    a("--crop", type=int, default=None, help="training/eval crop size (default: 224; demo 112)")
    a("--init", choices=["paper", "kaiming"], default=None, help="weight init (default: paper; demo kaiming)")
    a("--activation", choices=["relu", "tanh"], default="relu", help="nonlinearity (default: relu)")
    a("--no-lrn", dest="lrn", action="store_false", help="drop local response normalisation (default: LRN on)")
    a("--no-overlap", dest="overlapping_pool", action="store_false",
      help="pooling z=2, s=2 instead of the paper's overlapping z=3, s=2 (default: overlapping)")
    a("--dropout", type=float, default=0.5, help="dropout before fc6, fc7 and fc8 (default: 0.5)")
    a("--random-resized-crop", action="store_true",
      help="modern random-resized crops instead of the paper's fixed-scale crops (default: off)")
    a("--amp", action="store_true", help="bf16 autocast on GPU (default: off)")
    a("-j", "--threads", type=int, default=None, help="CPU threads per worker for DALI and torch (default: its CPUs)")
    a("--seed", type=int, default=0, help="data order and augmentation seed (default: 0)")
    a("--output-dir", type=Path, default=Path("runs"), help="where runs go (default: runs)")
    a("--name", default=None, help="run name, a folder under --output-dir (default: the start time)")
    a("--resume", action="store_true", help="continue run --name from its latest checkpoint (default: off)")
    a("--max-failures", type=int, default=0,
      help="restart from the latest checkpoint this many times when a worker dies (default: 0)")
    a("--wait-for-resources", action="store_true",
      help="wait for the cluster to grow instead of stopping when it is too small (default: off)")
    a("--print-freq", type=int, default=10, help="progress line every N steps (default: 10)")
    a("--inject-failure", default=None, help=argparse.SUPPRESS)  # "EPOCH:STEP", for the fault-tolerance test
    return p


def ensure_data(args):
    """The shard folder to train on, building the demo set when no --data was given and none is there."""
    data = args.data if args.data is not None else DEFAULT_DATA
    if mf.manifest_path(data).is_file():
        return data.resolve()
    if args.data is not None:
        raise LaunchError(f"--data {data}: no manifest.json there. Build shards first: "
                          f"python pipeline/build_shards.py --src IMAGENET --out {data}")
    print(f"no shards in {data}: building the embedded demo set there first (python pipeline/build_shards.py)")
    if build_shards.main(["--out", str(data)]) != 0:
        raise LaunchError(f"building the demo set in {data} failed (see above)")
    return data.resolve()


def resolve_args(args, manifest):
    is_demo = manifest["classes"] == demo_data.DEMO_CLASSES
    for flag, (paper, demo) in PRESETS.items():
        if getattr(args, flag) is None:
            setattr(args, flag, demo if is_demo else paper)
    for flag in ("workers", "batch_size", "epochs", "crop", "print_freq"):
        if getattr(args, flag) < 1:
            raise LaunchError(f"--{flag.replace('_', '-')} must be >= 1, got {getattr(args, flag)}")
    per_shard = manifest["splits"]["train"]["num_samples"] // args.workers
    if args.batch_size > per_shard:
        raise LaunchError(f"-b/--batch-size {args.batch_size} is larger than a worker's share of the training set "
                          f"({per_shard} images with {args.workers} workers). Use a smaller batch or fewer workers.")
    if not manifest["splits"]["val"]["num_samples"]:
        raise LaunchError(f"--data {args.data}: no validation split; rebuild the shards with a val/ folder.")
    return is_demo


def check_resources(args, available):
    """Stop with a clear message instead of letting Ray wait forever for workers that cannot be placed."""
    need_cpu, need_gpu = args.workers * args.cpus_per_worker, args.workers * args.gpus_per_worker
    have_cpu, have_gpu = available.get("CPU", 0), available.get("GPU", 0)
    if need_cpu <= have_cpu + 1e-9 and need_gpu <= have_gpu + 1e-9:
        return
    msg = (f"--workers {args.workers} needs {need_cpu:g} CPUs and {need_gpu:g} GPUs "
           f"({args.cpus_per_worker:g} CPUs, {args.gpus_per_worker} GPUs each); the cluster has {have_cpu:g} CPUs "
           f"and {have_gpu:g} GPUs. Use fewer --workers, lower --gpus-per-worker/--cpus-per-worker, add nodes, "
           "or pass --wait-for-resources.")
    if not args.wait_for_resources:
        raise LaunchError(msg)
    print(f"waiting for resources: {msg}")


def plan_resources(args, available):
    gpus = available.get("GPU", 0)
    if args.gpus_per_worker is None:
        args.gpus_per_worker = 2 if gpus else 0
    if args.gpus_per_worker not in (0, 1, 2):
        raise LaunchError(f"--gpus-per-worker must be 0, 1 or 2 (one replica spans at most two GPUs), "
                          f"got {args.gpus_per_worker}")
    if args.gpus_per_worker == 0:
        print("no GPUs requested or found: training on CPU with gloo (both columns of each replica on the CPU)")
    if args.cpus_per_worker is None:  # fractional shares, so 4 workers fit on a 2-core machine
        args.cpus_per_worker = max(0.25, min(8.0, math.floor(4 * available.get("CPU", 1) / args.workers) / 4))
    if args.threads is None:
        args.threads = max(1, round(args.cpus_per_worker))


def run_paths(args):
    run_dir = (args.output_dir / args.name).resolve()
    if args.resume:
        saved = run_dir / "args.json"
        if not saved.is_file():
            raise LaunchError(f"--resume: no run at {run_dir} (args.json missing). Check --output-dir and --name.")
        for k, v in json.loads(saved.read_text()).items():
            if k not in KEPT_ON_RESUME or getattr(args, k) is None:
                setattr(args, k, Path(v) if k in ("data", "output_dir") and v else v)
    elif run_dir.exists():
        raise LaunchError(f"{run_dir} already exists: pass --resume to continue it, or choose another --name.")
    return run_dir


def main(argv=None):
    args = get_args_parser().parse_args(argv)
    args.name = args.name or time.strftime("%Y%m%d-%H%M%S")
    try:
        run_dir = run_paths(args)
        args.data = ensure_data(args)
        manifest = mf.load(args.data)
        resolve_args(args, manifest)
        return fit(args, manifest, run_dir)
    except (LaunchError, mf.ManifestError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def fit(args, manifest, run_dir):
    import ray
    from ray.train import CheckpointConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from cluster import report
    from cluster.train import CHECKPOINT_FILE, train_loop_per_worker

    if args.address:
        ray.init(address=args.address, logging_level="WARNING")
    else:  # a private local cluster, reachable from this machine only
        ray.init(dashboard_host="127.0.0.1", logging_level="WARNING", _node_ip_address="127.0.0.1")
    try:
        plan_resources(args, ray.cluster_resources())
        check_resources(args, ray.cluster_resources())
        run_dir.mkdir(parents=True, exist_ok=True)
        saved = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
        (run_dir / "args.json").write_text(json.dumps(saved, indent=1) + "\n")
        use_gpu = args.gpus_per_worker > 0
        cfg = {**saved, "use_gpu": use_gpu, "num_classes": len(manifest["classes"]), "run_dir": str(run_dir)}
        if args.inject_failure:
            epoch, step = (int(v) for v in args.inject_failure.split(":"))
            cfg["inject_failure"] = {"at": [epoch, step], "marker": str(run_dir / "injected_failure.txt")}
        resources = {"CPU": args.cpus_per_worker, **({"GPU": args.gpus_per_worker} if use_gpu else {})}
        trainer = TorchTrainer(
            train_loop_per_worker, train_loop_config=cfg,
            scaling_config=ScalingConfig(num_workers=args.workers, use_gpu=use_gpu, resources_per_worker=resources),
            torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
            run_config=RunConfig(name=args.name, storage_path=str(run_dir.parent),
                                 failure_config=FailureConfig(max_failures=args.max_failures),
                                 checkpoint_config=CheckpointConfig(num_to_keep=2),
                                 logging_config=LoggingConfig(log_level="WARNING")))
        print(f"training {args.workers} replica(s) on {args.data} -> {run_dir}")
        try:
            result = trainer.fit()
        except Exception as e:  # Ray wraps the worker's error; its message carries the worker traceback
            print(f"error: training failed: {e}", file=sys.stderr)
            return 1
        conv1 = None
        if result.checkpoint is not None:
            import torch
            with result.checkpoint.as_directory() as d:
                state = torch.load(Path(d) / CHECKPOINT_FILE, map_location="cpu", weights_only=True)
            conv1 = state["model"]["conv1.weight"].numpy()
        devices = f"{args.gpus_per_worker} GPU(s) per worker" if use_gpu else "CPU"
        final_path = run_dir / "final_metrics.json"
        final = json.loads(final_path.read_text()) if final_path.is_file() else {}
        summary, paths = report.write_outputs(run_dir, final, conv1, workers=args.workers,
                                              devices=devices)
        print(json.dumps(summary, indent=1))
        print("outputs: " + ", ".join(f"{k} {v}" for k, v in paths.items() if v.exists()))
        return 0
    finally:
        ray.shutdown()


if __name__ == "__main__":
    sys.exit(main())
