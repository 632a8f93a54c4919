"""Train AlexNet on a Ray cluster: N data-parallel replicas, each split over two GPUs as in the paper.

    python cluster/launch.py --replicas 4                         # local Ray; demo shards built if missing
    python cluster/launch.py --replicas 4 --data /data/shards     # the paper's recipe on real data
    python cluster/launch.py --address auto --replicas 16 --min-replicas 8 --data /shared/shards --max-failures 3
    python cluster/launch.py --name my-run --resume               # continue a stopped run at its epoch
    python cluster/launch.py --name my-run --test-only            # 10-crop top-1/top-5 of its checkpoint

The recipe is per image at any replica count: --lr is the rate for a global batch of 128 (the paper's one replica),
and the run uses lr x global batch / 128 after a linear warmup (cluster/recipe.py). --preset paper|demo fills in the
flags you leave out (batch, epochs, lr, warmup steps, crop, init, inputs, lr patience: --help marks them); the
default is demo on the embedded demo set, paper otherwise. Without GPUs everything runs on the CPU with gloo (the
same code path, said once).
Outputs go to --output-dir/--name (config.json, metrics.jsonl, events.jsonl, tensorboard/, summary.json, figures),
checkpoints to --storage (default: the same folder).
"""
import argparse
import importlib.util
import os
import signal
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repo root importable
    sys.path[0] = str(Path(__file__).resolve().parents[1])

from cluster import checkpoints, stopping  # noqa: E402
from cluster.recipe import DEFAULT_DATA, RUN, TrainConfig, describe  # noqa: E402
from cluster.resolve import LaunchError, new_config, plan_resources, resumed_config  # noqa: E402
from cluster.run_files import SHARDS_FILE  # noqa: E402
from cluster.setting import add_flags, explicit  # noqa: E402
from pipeline import manifest as mf  # noqa: E402
from pipeline import shard_watch  # noqa: E402


def get_args_parser(suppress_defaults=False):
    """Every setting's flag, derived from its declaration in cluster/recipe.py (TrainConfig), in --help's groups;
    then this command's own two, --resume and --test-only, which pick what to do rather than set the run."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    groups = add_flags(p, TrainConfig, suppress_defaults=suppress_defaults)
    a = groups[RUN].add_argument
    off = argparse.SUPPRESS if suppress_defaults else False
    a("--resume", action="store_true", default=off,
      help="continue run --name (under --output-dir) from its latest checkpoint with its saved config.json; takes "
           "no path, unlike torchvision's --resume CHECKPOINT (default: off)")
    a("--test-only", action="store_true", default=off,
      help="no training: the 10-crop top-1/top-5 error of run --name's final (else latest) checkpoint on the "
           "validation set of its --data, in this process without Ray (default: off)")
    return p


def explicit_flags(argv):
    """{setting: the flag as typed} for the settings given on the command line (cluster/setting.py explicit)."""
    return explicit(get_args_parser, TrainConfig, argv)


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
    from cluster.job_paths import relative_path_error
    if relative_path_error(args.output_dir, args.storage):  # a `ray job submit` job: its cwd is deleted after
        print(f"error: {relative_path_error(args.output_dir, args.storage)}", file=sys.stderr)
        return 2
    try:
        if args.test_only:
            from cluster.evaluate import test_only
            return test_only(args)
        args.name = args.name or time.strftime("%Y%m%d-%H%M%S")
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

        from cluster import ray_noise
        ray_noise.before_init(local_cluster=not cfg.address)  # Ray's lines that read as failures: cluster/ray_noise.py
        try:  # from here on, whatever happens (a failed connect, a stop signal), Ray and its settings are undone
            _ray_init(ray, cfg.address)
            stopping.install()  # again: ray.init puts a handler of its own (a stack dump, then death) on SIGTERM
            ray_noise.after_init(ray, cfg.address)
            cfg = plan_resources(cfg, ray.cluster_resources())
            print(describe(cfg), flush=True)
            if cfg.grad_compression != "none" and cfg.workers > 1:
                print(f"gradients all-reduced in {cfg.grad_compression} (--grad-compression), weights and updates in "
                      "fp32", flush=True)
            from cluster.driver import fit
            return fit(cfg, inject_failure)
        finally:
            if ray.is_initialized():
                ray.shutdown()
            ray_noise.restore()
    except (LaunchError, mf.ManifestError, checkpoints.CheckpointError, shard_watch.ShardsChanged) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # stopping.Stopped, or Ray's own when a stop signal ended a ray.get
        if args.test_only:
            print(f"--test-only stopped by {signal.Signals(stopping.last_signal()).name}; nothing was written.",
                  file=sys.stderr)
            return stopping.exit_code(stopping.last_signal())
        return stopping.report(cfg, stopping.last_signal())


def _ray_init(ray, address):
    if address:
        try:
            ray.init(address=address, logging_level="WARNING")
        except ConnectionError as e:  # Ray says only "Failed to connect", whether it is the address or the token
            token = ("check that RAY_AUTH_TOKEN_PATH (or RAY_AUTH_TOKEN) holds this cluster's token"
                     if os.environ.get("RAY_AUTH_MODE") == "token" else
                     "run this with RAY_AUTH_MODE=token and RAY_AUTH_TOKEN_PATH=<the cluster's token file>")
            raise LaunchError(f"--address {address}: {e}. Is the cluster up at that address? If Ray's lines above "
                              f"say InvalidAuthToken, the cluster wants its token: {token}.") from None
    else:
        # A local cluster of this run's own. Its dashboard binds 127.0.0.1, but Ray's GCS, raylet and worker ports
        # listen on every interface whatever the node address says: what keeps others out is the token Ray (>= 2.59)
        # requires of clients of a cluster ray.init starts, generated at ~/.ray/auth_token. address="local": a new
        # cluster even when one is already running on this machine (a bare ray.init() joins that one, with its
        # owner's resources and settings).
        ray.init(address="local", dashboard_host="127.0.0.1", logging_level="WARNING", _node_ip_address="127.0.0.1")

if __name__ == "__main__":
    sys.exit(main())
