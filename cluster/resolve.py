"""From launch.py's flags to one TrainConfig: presets, the recipe for the replica count, --resume rules, and the
resources each replica gets. Every message says which flag and what to do."""
import dataclasses
import math
import os
from pathlib import Path

from cluster import disk_space, setting
from cluster.recipe import GRAD_COMPRESSIONS, PRESETS, TrainConfig, default_warmup_epochs, scaled_lr
from pipeline import build_shards, object_store
from pipeline import manifest as mf

RUN_IDENTITY = ("name", "output_dir")  # they pick the run to resume


class LaunchError(Exception):
    """Bad flags or an unusable cluster; the message says what to do."""


def flag_name(name):
    """A setting's flag as messages name it (-j/--threads, --replicas)."""
    return setting.flag_name(TrainConfig, name)


def ensure_data(data, default_data):
    """The shard folder (or s3:// URI) to train on, building the demo set when no --data was given and none is
    there. A URI's manifest and indexes are fetched now: a bad bucket, prefix or credentials fail before Ray starts."""
    if object_store.is_uri(data):
        mf.load(data)
        return data
    path = Path(data) if data is not None else default_data
    if mf.manifest_path(path).is_file():
        return path.resolve()
    if data is not None:
        raise LaunchError(f"--data {path}: no manifest.json there. Build shards first: "
                          f"python pipeline/build_shards.py --src IMAGENET --out {path}")
    print(f"no shards in {path}: building the embedded demo set there first (python pipeline/build_shards.py)")
    try:
        build_shards.build(build_shards.BuildConfig(out=path))
    except build_shards.BuildError as e:
        raise LaunchError(f"building the demo set in {path} failed: {e}") from None
    return path.resolve()


def is_storage_uri(path):
    """Any scheme Ray's storage (pyarrow) reads: s3://, gs://, hdfs://... (the data itself is local or s3://:
    pipeline/object_store.py)."""
    return "://" in str(path)


def storage_location(storage, output_dir):
    """--storage as Ray needs it: a URI as given, a path made absolute (pyarrow, under Ray's storage, reads a
    relative path as a URI and fails with "URI has empty scheme" once training has started)."""
    if storage is None:
        return str(output_dir)
    return storage if is_storage_uri(storage) else str(Path(storage).expanduser().resolve())


def check_paths(cfg):
    """--output-dir and a local --storage: absolute folders (or folders to be) this user can write, checked before
    Ray starts rather than found out when the first checkpoint is written."""
    for flag, path in (("--output-dir", cfg.output_dir), ("--storage", cfg.storage)):
        if flag == "--storage" and is_storage_uri(path):
            continue
        path = Path(path)
        if not path.is_absolute():
            raise LaunchError(f"{flag} {path}: not an absolute path (from an older config.json?); Ray's storage "
                              "needs one. Start a new run with another --name.")
        existing = disk_space.existing_folder(path)
        if not existing.is_dir():
            raise LaunchError(f"{flag} {path}: {existing} is a file, not a folder. Choose another {flag}.")
        if not os.access(existing, os.W_OK | os.X_OK):
            raise LaunchError(f"{flag} {path}: {existing} is not writable by this user. Choose another {flag}.")


def default_preset(manifest):
    """demo on a set the builder generated itself (no --src), paper on real data."""
    return "demo" if manifest["build"].get("src") is None else "paper"


def new_config(args, default_data):
    """A fresh run's TrainConfig from the flags (resources are planned later, once Ray is up): every declared
    setting is its flag's value, else its preset's, else its default; the few below are resolved from others."""
    data = ensure_data(args.data, default_data)
    manifest = mf.load(data)
    preset_name = args.preset or default_preset(manifest)
    how = "given" if args.preset else ("the embedded demo set" if preset_name == "demo" else "real data")
    print(f"preset {preset_name} ({how}; --preset {'paper' if preset_name == 'demo' else 'demo'} for the other)")
    values = dataclasses.asdict(PRESETS[preset_name])
    values.update({f.name: getattr(args, f.name) for f, s in setting.declared(TrainConfig)
                   if s.flags is not None and getattr(args, f.name) is not None})
    peak = scaled_lr(values["base_lr"], args.workers * values["batch_size"], args.lr_scaling)
    output_dir = args.output_dir.resolve()
    values.update(
        data=str(data), num_classes=len(manifest["classes"]), preset=preset_name,
        min_workers=args.min_workers if args.min_workers is not None else args.workers,
        warmup_epochs=args.warmup_epochs if args.warmup_epochs is not None else
        default_warmup_epochs(values["base_lr"], peak),
        central_square=values["central_square"] and not args.random_resized_crop,  # crops anywhere: no square
        output_dir=str(output_dir), storage=storage_location(args.storage, output_dir),
        address=args.address if args.address is not None else os.environ.get("RAY_ADDRESS"))
    cfg = TrainConfig(**values)
    check(cfg, manifest)
    return cfg


def resumed_config(args, explicit):
    """The saved TrainConfig with the resumable flags applied (and said); any other flag given with another value
    than the saved one is an error naming it, never silently ignored. explicit: {setting: the flag as the user typed
    it} for the flags on the command line (launch.explicit_flags)."""
    run_dir = args.output_dir.resolve() / args.name
    try:
        saved = TrainConfig.load(run_dir)
    except FileNotFoundError:
        raise LaunchError(f"--resume: no run at {run_dir} (config.json missing). "
                          "Check --output-dir and --name.") from None
    except (ValueError, TypeError) as e:
        raise LaunchError(f"--resume: {run_dir / 'config.json'} cannot be read: {e}") from None
    resumable = {f.name for f, s in setting.declared(TrainConfig) if s.resumable}
    changes = {}
    for name in sorted(set(explicit) - set(RUN_IDENTITY)):
        value = getattr(args, name)
        if name == "data" and not object_store.is_uri(value):
            value = str(Path(value).resolve())
        old = getattr(saved, name)
        if value == old:
            continue
        if name not in resumable:
            given = explicit[name]  # as typed: --no-lrn, not the field lrn
            given = given if isinstance(value, bool) else f"{given} {value}"
            raise LaunchError(f"--resume: {given} differs from the run's saved value {name}={old!r} "
                              f"({run_dir / 'config.json'}); it would change what the run computes. Drop the flag, "
                              "or start a new run with another --name.")
        changes[name] = value
    if "workers" in changes and "min_workers" not in changes:  # a fixed-size run stays fixed-size
        changes["min_workers"] = changes["workers"] if saved.min_workers == saved.workers else \
            min(saved.min_workers, changes["workers"])
    for name, value in changes.items():
        print(f"--resume: {explicit.get(name, flag_name(name))} {value} applied (was {getattr(saved, name)!r})")
    cfg = dataclasses.replace(saved, **changes)
    if "workers" in changes:
        _, peak = cfg.recipe(cfg.workers)
        print(f"--resume: the peak lr follows the global batch: {peak:g} for {cfg.workers} replica(s) (was "
              f"{saved.lr:g}); a higher peak is reached by a warmup from the run's current rate (the workers say "
              "over which epochs)")
    check(cfg, mf.load(cfg.data))
    return cfg


def check(cfg, manifest):
    check_paths(cfg)
    for name in ("workers", "min_workers", "batch_size", "epochs", "crop", "print_freq", "prefetch"):
        if getattr(cfg, name) < 1:
            raise LaunchError(f"{flag_name(name)} must be >= 1, got {getattr(cfg, name)}")
    if cfg.min_workers > cfg.workers:
        raise LaunchError(f"--min-replicas {cfg.min_workers} is more than --replicas {cfg.workers}.")
    gpus = cfg.gpus_per_worker
    if gpus is not None and not (gpus == 0 or 0 < gpus <= 1 or gpus == 2):
        raise LaunchError(f"--gpus-per-worker must be 0, a fraction up to 1, or 2 (one replica spans at most two "
                          f"GPUs), got {gpus:g}")
    if cfg.resize_check_s < 0:
        raise LaunchError(f"--resize-check-s must be >= 0, got {cfg.resize_check_s:g}")
    if cfg.grad_compression not in GRAD_COMPRESSIONS:
        raise LaunchError(f"--grad-compression must be one of {', '.join(GRAD_COMPRESSIONS)}, "
                          f"got {cfg.grad_compression!r}")
    if cfg.lr_milestones and cfg.lr_schedule != "milestones":
        raise LaunchError(f"--lr-milestones is read by --lr-schedule milestones only (this run: {cfg.lr_schedule}): "
                          "add --lr-schedule milestones, or drop --lr-milestones")
    if cfg.lr_schedule == "milestones" and any(e >= cfg.epochs for e in cfg.lr_milestones):
        raise LaunchError(f"--lr-milestones {','.join(map(str, cfg.lr_milestones))}: every milestone must be below "
                          f"--epochs {cfg.epochs} (a drop after the last epoch never happens)")
    if not cfg.crop_flip and cfg.random_resized_crop:
        raise LaunchError("--no-crop-flip trains on the centre crop; --random-resized-crop is a random crop: give "
                          "one of them")
    if cfg.lighting < 0:
        raise LaunchError(f"--lighting must be >= 0 (0: no PCA lighting), got {cfg.lighting:g}")
    if cfg.warmup_epochs < 0 or cfg.warmup_steps < 0:
        raise LaunchError(f"--warmup-epochs and --warmup-steps must be >= 0, got {cfg.warmup_epochs} and "
                          f"{cfg.warmup_steps}")
    per_shard = manifest["splits"]["train"]["num_samples"] // cfg.workers
    if cfg.batch_size > per_shard:
        raise LaunchError(f"-b/--batch-size {cfg.batch_size} is larger than a worker's share of the training set "
                          f"({per_shard} images with {cfg.workers} workers). Use a smaller batch or fewer workers.")
    if not manifest["splits"]["val"]["num_samples"]:
        raise LaunchError(f"--data {cfg.data}: no validation split; rebuild the shards with a val/ folder.")
    # last, so that a flag mistake is named as such even on a full disk
    no_room = disk_space.shortfall(cfg, storage_is_local=not is_storage_uri(cfg.storage))
    if no_room:
        raise LaunchError(no_room)


def plan_resources(cfg, available):
    """Fill in GPUs, CPUs, threads and backend from the cluster; a cluster too small is an error (or a wait)."""
    gpus = cfg.gpus_per_worker if cfg.gpus_per_worker is not None else (2.0 if available.get("GPU", 0) else 0.0)
    whole_gpus = gpus >= 1 and cfg.column1_device == "gpu"
    backend = cfg.backend or ("nccl" if whole_gpus else "gloo")
    if backend == "nccl" and not whole_gpus:
        raise LaunchError("--backend nccl needs whole GPUs per replica with both columns on them: NCCL refuses two "
                          "ranks on one GPU and cannot reduce CPU tensors. Use --backend gloo.")
    if gpus == 0:
        print("no GPUs requested or found: training on CPU with gloo (both columns of each replica on the CPU)")
    elif backend == "gloo":
        print(f"{gpus:g} GPU(s) per replica, column 1 on {cfg.column1_device}: replicas talk over gloo")
    cpus = cfg.cpus_per_worker
    if cpus is None:  # fractional shares, so 4 workers fit on a 2-core machine
        cpus = max(0.25, min(8.0, math.floor(4 * available.get("CPU", 1) / cfg.workers) / 4))
    threads = cfg.threads if cfg.threads is not None else max(1, round(cpus))
    cfg = dataclasses.replace(cfg, gpus_per_worker=gpus, cpus_per_worker=cpus, threads=threads, backend=backend)
    check_resources(cfg, available)
    return cfg.with_derived()


def check_resources(cfg, available):
    """Stop with a clear message instead of letting Ray wait forever for workers that cannot be placed."""
    need_cpu, need_gpu = cfg.min_workers * cfg.cpus_per_worker, cfg.min_workers * cfg.gpus_per_worker
    have_cpu, have_gpu = available.get("CPU", 0), available.get("GPU", 0)
    if need_cpu <= have_cpu + 1e-9 and need_gpu <= have_gpu + 1e-9:
        return
    replicas = f"--replicas {cfg.workers}" if cfg.min_workers == cfg.workers else f"--min-replicas {cfg.min_workers}"
    msg = (f"{replicas} needs {need_cpu:g} CPUs and {need_gpu:g} GPUs ({cfg.cpus_per_worker:g} CPUs, "
           f"{cfg.gpus_per_worker:g} GPUs each); the cluster has {have_cpu:g} CPUs and {have_gpu:g} GPUs. Use fewer "
           "--replicas, lower --gpus-per-worker/--cpus-per-worker, add nodes, or pass --wait-for-resources.")
    if not cfg.wait_for_resources:
        raise LaunchError(msg)
    print(f"waiting for resources: {msg}")
