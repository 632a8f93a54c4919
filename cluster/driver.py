"""The driver's part of a run: start Ray Train with the resolved TrainConfig, and turn what the workers reported into
the run's outputs (summary.json and figures, beside the metrics and events the callback wrote during the run)."""
import dataclasses
import json
import sys
import textwrap

import ray
from ray.train import CheckpointConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchConfig, TorchTrainer

from cluster import report, run_inputs
from cluster.job_paths import location_line
from cluster.outputs import RunOutputs, mark_lost_nodes
from cluster.run_files import CHECKPOINTS_KEPT, EVENTS_FILE, METRICS_FILE, SHARDS_FILE, read_jsonl
from cluster.worker import train_loop_per_worker
from pipeline import shard_watch


def make_trainer(cfg, callback, inject_failure=None):
    resources = {"CPU": cfg.cpus_per_worker, **({"GPU": cfg.gpus_per_worker} if cfg.use_gpu else {})}
    # elastic: (min, max) replicas; Ray restarts the group smaller after a lost node and larger when it returns
    num_workers = cfg.workers if cfg.min_workers == cfg.workers else (cfg.min_workers, cfg.workers)
    trainer = TorchTrainer(
        train_loop_per_worker, train_loop_config={"config": cfg, "inject_failure": inject_failure},
        scaling_config=ScalingConfig(num_workers=num_workers, use_gpu=cfg.use_gpu, resources_per_worker=resources,
                                     elastic_resize_monitor_interval_s=cfg.resize_check_s),
        torch_config=TorchConfig(backend=cfg.backend),
        run_config=RunConfig(name=cfg.name, storage_path=cfg.storage, callbacks=[callback],
                             failure_config=FailureConfig(max_failures=cfg.max_failures),
                             checkpoint_config=CheckpointConfig(num_to_keep=CHECKPOINTS_KEPT),
                             logging_config=LoggingConfig(log_level="WARNING")))
    # Ray's fit() puts its own SIGINT handler in place of the launcher's (it aborts the run and exits 1, saying
    # nothing): keep the launcher's one policy for SIGINT and SIGTERM (cluster/stopping.py)
    trainer._register_sigint_handler = lambda controller: None
    return trainer


def checkpoint_uri(checkpoint):
    """Where a Ray checkpoint lives, as a path (local storage) or a URI (s3://..., gs://...)."""
    kind = getattr(checkpoint.filesystem, "type_name", "local")
    return checkpoint.path if kind == "local" else f"{kind}://{checkpoint.path}"


def run_facts(cfg, history, events, dead_nodes):
    """What the summary says beyond the last epoch's metrics: replicas, failures, lost nodes, devices."""
    failures = [e for e in events if e["event"] == "failure"]
    lost = {r["node"] for e in failures for r in e["ranks"].values() if r.get("node") in dead_nodes}
    return {"workers": cfg.workers, "min_workers": cfg.min_workers,
            "replicas_per_epoch": [h.get("replicas") for h in history],
            "failures": len(failures), "nodes_lost": len(lost),
            "devices": f"{cfg.gpus_per_worker:g} GPU(s) per worker" if cfg.use_gpu else "CPU",
            "preset": cfg.preset}


def fit(cfg, inject_failure=None):
    """Train, then write the outputs; 0 on success. inject_failure: (epoch, step) for the fault-tolerance test."""
    run_dir = cfg.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    cfg.save(run_dir)
    run_inputs.record(run_dir, cfg.data)  # classes, resize and statistics: classify/export need no shards
    shard_watch.record(run_dir / SHARDS_FILE, cfg.data)  # what --resume checks the shards against
    settings = ", ".join(f"{k}={v}" for k, v in dataclasses.asdict(cfg).items())
    print(textwrap.fill(f"config ({run_dir / 'config.json'}): {settings}", width=120, subsequent_indent="  "))
    callback = RunOutputs(run_dir)
    storage = cfg.storage if cfg.storage != cfg.output_dir else "the run folder"
    print(f"training {cfg.workers} replica(s) on {cfg.data} -> {run_dir} (checkpoints: {storage})", flush=True)
    if location_line(run_dir, cfg.storage):
        print(location_line(run_dir, cfg.storage), flush=True)
    try:
        result = make_trainer(cfg, callback, inject_failure).fit()
    except Exception as e:  # Ray wraps the worker's error; its message carries the worker traceback
        print(f"error: training failed: {e}", file=sys.stderr)
        return 1
    dead = {n["NodeID"] for n in ray.nodes() if not n["Alive"]}
    history, events = read_jsonl(run_dir / METRICS_FILE), mark_lost_nodes(run_dir, dead)
    facts = run_facts(cfg, history, events, dead)
    if result.checkpoint is None:
        print("error: the run left no checkpoint (see above)", file=sys.stderr)
        return 1
    try:  # summary.json and the curves come first: a figure that fails (shards gone) leaves them in place
        summary, paths = report.write_all(run_dir, facts, checkpoint_uri(result.checkpoint), dataclasses.asdict(cfg),
                                          log=print)
    except report.ReportError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if summary["failures"]:
        lost = f", {summary['nodes_lost']} of them a lost node" if summary["nodes_lost"] else ""
        print(f"{summary['failures']} failure(s) during the run{lost}; replicas per epoch: "
              f"{summary['replicas_per_epoch']} (see {run_dir / EVENTS_FILE})")
    print(json.dumps(summary, indent=1))
    print("outputs: " + ", ".join(str(p) for p in paths.values() if p.exists()))
    return 0

