"""Train AlexNet on a Ray cluster: N data-parallel replicas, each split over two GPUs as in the paper.

    python cluster/launch.py --replicas 4                         # local Ray; demo shards built if missing
    python cluster/launch.py --replicas 4 --data /data/shards     # the paper's recipe on real data
    python cluster/launch.py --address auto --replicas 16 --min-replicas 8 --data /shared/shards --max-failures 3
    python cluster/launch.py --name my-run --resume               # continue a stopped run at its epoch
    python cluster/launch.py --name my-run --test-only            # 10-crop top-1/top-5 of its checkpoint

The recipe is per image at any replica count: --lr is the rate for a global batch of 128 (the paper's one replica),
and the run uses lr x global batch / 128 after a linear warmup (cluster/recipe.py). --preset paper|demo fills in the
flags you leave out (batch, epochs, crop, init, lr patience); the default is demo on the embedded demo set, paper
otherwise. Without GPUs everything runs on the CPU with gloo (the same code path, said once).
Outputs go to --output-dir/--name (config.json, metrics.jsonl, events.jsonl, tensorboard/, summary.json, figures),
checkpoints to --storage (default: the same folder).
"""
import argparse
import importlib.util
import os
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repo root importable
    sys.path[0] = str(Path(__file__).resolve().parents[1])

from cluster import checkpoints, stopping  # noqa: E402
from cluster.recipe import PRESETS, describe  # noqa: E402
from cluster.resolve import LaunchError, new_config, plan_resources, resumed_config  # noqa: E402
from cluster.run_files import SHARDS_FILE  # noqa: E402
from pipeline import manifest as mf  # noqa: E402
from pipeline import shard_watch  # noqa: E402

DEFAULT_DATA = Path("data/shards")


def get_args_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    # Groups only change --help's layout; each `a = ...` line starts the next group.
    a = p.add_argument_group("data").add_argument
    a("--data", "--data-path", dest="data", type=str, default=None,  # str: Path("s3://b/p") would fold the "//"
      help=f"shard folder from pipeline/build_shards.py, or s3://bucket/prefix (default: {DEFAULT_DATA}; the demo "
           "set is built there if missing)")
    a("--preset", choices=sorted(PRESETS), default=None,
      help="defaults for the flags you leave out: paper = batch 128, 90 epochs, crop 224 of the central 256x256, "
           "paper init, lr 0.01, 50 warmup steps, lr patience 2; demo = batch 32, 10 epochs, crop 112 of the whole "
           "image, Kaiming init, lr 0.0025, lr patience 10; both: the paper's inputs, weight decay on weights only "
           "(default: demo on the embedded demo set, paper otherwise)")
    a = p.add_argument_group("replicas and the Ray cluster").add_argument
    a("--replicas", "--workers", dest="workers", type=int, default=4, metavar="N",
      help="data-parallel AlexNet replicas, one Ray worker each (--workers: the same flag) (default: 4)")
    a("--min-replicas", "--min-workers", dest="min_workers", type=int, default=None, metavar="M",
      help="elastic: keep training with as few as this many replicas when nodes are lost, and grow back to "
           "--replicas when they return (default: --replicas, not elastic)")
    a("--resize-check-s", type=float, default=60.0,
      help="elastic runs: seconds between looks for room to grow back to --replicas; growing restarts the replicas "
           "from the latest checkpoint (default: 60)")
    a("--gpus-per-worker", type=float, default=None,
      help="GPUs per replica: 2 puts the columns on two GPUs, 1 both on one, a fraction such as 0.5 lets replicas "
           "share a GPU (with gloo) (default: 2 with GPUs, 0 without)")
    a("--column1-device", choices=["gpu", "cpu"], default="gpu",
      help="where column 1 runs: on the replica's second GPU (or its only one), or on the CPU to cross devices on "
           "a one-GPU node (slow) (default: gpu)")
    a("--backend", choices=["nccl", "gloo"], default=None,
      help="torch.distributed backend between replicas (default: nccl with whole GPUs, gloo otherwise)")
    a("--cpus-per-worker", type=float, default=None,
      help="CPUs reserved per replica, fractions allowed (default: the cluster's CPUs / workers, at most 8)")
    a("--address", default=os.environ.get("RAY_ADDRESS"),
      help="an existing Ray cluster: auto, HOST:6379 or ray://HOST:10001 (default: $RAY_ADDRESS, else a new local "
           "cluster)")
    a = p.add_argument_group("recipe").add_argument
    a("-b", "--batch-size", type=int, default=None, help="images per replica per step (default: from --preset)")
    a("--epochs", type=int, default=None, help="epochs to train (default: from --preset: 90 paper, 10 demo)")
    a("--lr", type=float, default=None,
      help="learning rate for a global batch of 128, scaled with the global batch (default: from --preset: 0.01 "
           "paper, 0.0025 demo)")
    a("--lr-scaling", choices=["linear", "none"], default="linear",
      help="linear: lr x global batch / 128; none: --lr as it is (default: linear)")
    a("--warmup-epochs", "--lr-warmup-epochs", dest="warmup_epochs", type=int, default=None,
      help="epochs of linear warmup from --lr to the scaled rate (default: 5 when the scaled rate is larger, "
           "else 0)")
    a("--warmup-steps", type=int, default=None,
      help="the first N steps' lr ramps linearly from 1/N of it (default: from --preset: 50 paper, 0 demo)")
    a("--momentum", type=float, default=0.9, help="SGD momentum (default: 0.9)")
    a("--wd", "--weight-decay", dest="wd", type=float, default=5e-4, help="weight decay (default: 5e-4)")
    a("--lr-schedule", choices=["plateau", "step"], default="plateau",
      help="plateau: lr / 10 when val error stops improving, at most 3 times, not during warmup; step: every "
           "--lr-step-size epochs (default: plateau)")
    a("--lr-patience", type=int, default=None,
      help="epochs in a row without improvement allowed; the next one divides lr by 10, as in torch's "
           "ReduceLROnPlateau (default: from --preset: 2 paper, 10 demo)")
    a("--lr-step-size", type=int, default=30, help="epochs per lr / 10 with --lr-schedule step (default: 30)")
    a("--crop", type=int, default=None, help="training/eval crop size (default: from --preset: 224 paper, 112 demo)")
    a = p.add_argument_group("model and augmentation").add_argument
    a("--init", choices=["paper", "kaiming"], default=None, help="weight init (default: from --preset)")
    a("--normalize", choices=["paper", "std"], default=None,
      help="input normalisation: paper = 0-255 pixels minus the training set's per-channel mean, as the paper "
           "trained; std = also divided by the per-channel std (default: from --preset: paper for both)")
    a("--activation", choices=["relu", "tanh"], default="relu", help="nonlinearity (default: relu)")
    a("--no-lrn", dest="lrn", action="store_false", help="drop local response normalisation (default: LRN on)")
    a("--no-overlap", dest="overlapping_pool", action="store_false",
      help="pooling z=2, s=2 instead of the paper's overlapping z=3, s=2 (default: overlapping)")
    a("--dropout", type=float, default=0.5,
      help="probability of zeroing each output of fc6 and fc7, one mask per neuron shared by both columns "
           "(section 4.2) (default: 0.5)")
    a("--random-resized-crop", action="store_true",
      help="modern random-resized crops instead of the paper's fixed-scale crops (default: off)")
    a = p.add_argument_group("speed").add_argument
    a("--amp", action="store_true",
      help="bf16 autocast on GPU; not the paper's fp32 recipe (default: off)")
    a("--compile", action="store_true", help="torch.compile each replica (default: off)")
    a("--grad-compression", choices=("none", "bf16", "fp16"), default="none",
      help="dtype of the gradients all-reduced between replicas: bf16/fp16 halve AlexNet's 244 MB per step "
           "(DDP's compression hooks; weights and optimizer stay fp32) (default: none)")
    a("-j", "--threads", type=int, default=None, help="CPU threads per worker for DALI and torch (default: its CPUs)")
    a = p.add_argument_group("run, outputs and checkpoints").add_argument
    a("--seed", type=int, default=0, help="data order and augmentation seed (default: 0)")
    a("--output-dir", type=Path, default=Path("runs"), help="where runs go (default: runs)")
    a("--name", default=None, help="run name, a folder under --output-dir (default: the start time)")
    a("--storage", default=None,
      help="where Ray keeps checkpoints: a path every node sees, or a URI such as s3://bucket/runs "
           "(default: --output-dir)")
    a("--resume", action="store_true",
      help="continue run --name (under --output-dir) from its latest checkpoint with its saved config.json; takes "
           "no path, unlike torchvision's --resume CHECKPOINT (default: off)")
    a("--test-only", action="store_true",
      help="no training: the 10-crop top-1/top-5 error of run --name's final (else latest) checkpoint on the "
           "validation set of its --data, in this process without Ray (default: off)")
    a("--max-failures", type=int, default=0,
      help="restart from the latest checkpoint this many times when a worker or node dies (default: 0)")
    a("--wait-for-resources", action="store_true",
      help="wait for the cluster to grow instead of stopping when it is too small (default: off)")
    a("--print-freq", type=int, default=10, help="progress line every N steps (default: 10)")
    return p


def explicit_flags(argv):
    """{dest: the flag as typed} for the flags given on the command line, so --resume can tell them from defaults
    and name them as the user wrote them (--no-lrn, not lrn; all of a flag's spellings where it was abbreviated)."""
    p = get_args_parser()
    for action in p._actions:
        action.default = argparse.SUPPRESS
    spellings = {action.dest: "/".join(action.option_strings) for action in p._actions}
    given = {dest: spellings[dest] for dest in vars(p.parse_args(argv))}
    for token in argv:
        action = p._option_string_actions.get(token.split("=", 1)[0])
        if action is not None and action.dest in given:
            given[action.dest] = token.split("=", 1)[0]
    return given


def failure_point():
    """(epoch, step) from $ALEXNET_INJECT_FAILURE: the fault-tolerance test's hook, kept out of the run's settings."""
    from cluster.worker import FAILURE_ENV
    text = os.environ.get(FAILURE_ENV)
    if not text:
        return None
    try:
        epoch, step = (int(v) for v in text.split(":"))
    except ValueError:
        raise LaunchError(f"${FAILURE_ENV}={text!r}: expected EPOCH:STEP (0-based), e.g. 1:1") from None
    return epoch, step


def dali_missing():
    """DALI is an extra (cu12 or cu13, see pyproject.toml); without it every worker would fail at import."""
    if importlib.util.find_spec("nvidia") is None or importlib.util.find_spec("nvidia.dali") is None:
        return ("NVIDIA DALI is not installed. Install the project with one of its DALI extras: pip install -e "
                "'.[cu12]' (NVIDIA driver >= 525.60, or no GPU) or pip install -e '.[cu13]' (driver >= 580).")
    return None


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    args = get_args_parser().parse_args(argv)
    before = stopping.install()  # SIGTERM and Ctrl-C: one policy (cluster/stopping.py)
    try:
        return _main(args, argv)
    finally:
        stopping.restore(before)


def _main(args, argv):
    cfg = None
    if dali_missing():
        print(f"error: {dali_missing()}", file=sys.stderr)
        return 2
    if args.test_only:
        from cluster.evaluate import test_only
        return test_only(args)
    args.name = args.name or time.strftime("%Y%m%d-%H%M%S")
    try:
        if args.resume:
            cfg = resumed_config(args, explicit_flags(argv))
            print(checkpoints.resume_point(cfg.storage, cfg.name), flush=True)
            shard_watch.check_build(cfg.data, shard_watch.recorded(cfg.run_dir / SHARDS_FILE), "since the run started")
        else:
            if (args.output_dir / args.name).exists():
                raise LaunchError(f"{(args.output_dir / args.name).resolve()} already exists: pass --resume to "
                                  "continue it, or choose another --name.")
            cfg = new_config(args, DEFAULT_DATA)
        inject_failure = failure_point()
        # Ray Train V2 logs "Reporting training result ..." at INFO on every report from every rank, through a logger
        # that LoggingConfig(log_level) does not reach; Train's structured worker logging is what lets it through.
        # Ray passes the variable on from the driver to the controller and the workers.
        os.environ.setdefault("RAY_TRAIN_ENABLE_WORKER_STRUCTURED_LOGGING", "0")
        import ray
        if cfg.address:
            try:
                ray.init(address=cfg.address, logging_level="WARNING")
            except ConnectionError as e:  # Ray says only "Failed to connect", whether it is the address or the token
                token = ("check that RAY_AUTH_TOKEN_PATH (or RAY_AUTH_TOKEN) holds this cluster's token"
                         if os.environ.get("RAY_AUTH_MODE") == "token" else
                         "run this with RAY_AUTH_MODE=token and RAY_AUTH_TOKEN_PATH=<the cluster's token file>")
                raise LaunchError(f"--address {cfg.address}: {e}. Is the cluster up at that address? If Ray's lines "
                                  f"above say InvalidAuthToken, the cluster wants its token: {token}.") from None
        else:
            # A local cluster of this run's own. Its dashboard binds 127.0.0.1, but Ray's GCS, raylet and worker ports
            # listen on every interface whatever the node address says: what keeps others out is the token Ray
            # (>= 2.59) requires of clients of a cluster ray.init starts, generated at ~/.ray/auth_token.
            # address="local": a new cluster even when one is already running on this machine (a bare ray.init()
            # joins that one, with its owner's resources and settings).
            ray.init(address="local", dashboard_host="127.0.0.1", logging_level="WARNING", _node_ip_address="127.0.0.1")
        stopping.install()  # again: ray.init puts a handler of its own (a stack dump, then death) on SIGTERM
        try:
            cfg = plan_resources(cfg, ray.cluster_resources())
            print(describe(cfg), flush=True)
            if cfg.grad_compression != "none" and cfg.workers > 1:
                print(f"gradients all-reduced in {cfg.grad_compression} (--grad-compression), weights and updates in "
                      "fp32", flush=True)
            from cluster.driver import fit
            return fit(cfg, inject_failure)
        finally:
            ray.shutdown()
    except (LaunchError, mf.ManifestError, checkpoints.CheckpointError, shard_watch.ShardsChanged) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # stopping.Stopped, or Ray's own when a stop signal ended a ray.get
        return stopping.report(cfg, stopping.last_signal())


if __name__ == "__main__":
    sys.exit(main())
