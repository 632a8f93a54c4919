"""A model of one data-parallel AlexNet step, projected to 90 ImageNet epochs at 1-64 replicas (docs/SCALING.md).

    python -m benchmarks.scaling_model                                   # the tables of docs/SCALING.md
    python -m benchmarks.scaling_model --replica-img-s 8069 --overlap 1  # model-bound replicas, perfect overlap
    python -m benchmarks.scaling_model --measured docs/scaling/*.json    # measured overlap + the check against gloo

One step of N replicas with b images each:
    compute    = b / R                       R: one replica's measured img/s (fwd + bwd + update)
    all-reduce = 2 (N-1)/N x bytes / bw      ring all-reduce; bytes = AlexNet's gradients in the wire dtype;
                 + buckets x 2 (N-1) x lat   bw: NVLink while the replicas fit in one node, else the node's link
    step       = compute + all-reduce - overlap x min(all-reduce, backward)
where backward = bwd_fraction x compute and overlap is the fraction of that the all-reduce runs hidden behind
backward (benchmarks/allreduce.py measures it). 90 epochs = 90 x 1,281,167 images / (N b / step). GPU-hours count
every GPU of a replica. The wall is what dominates the step, plus the global batch where it outgrows what the
literature trained AlexNet at.
"""
import argparse
import json
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from cluster.build_model import build_model
from cluster.recipe import preset_config

IMAGENET_TRAIN = 1_281_167
EPOCHS = 90
WIRE_BYTES = {"none": 4, "bf16": 2, "fp16": 2}
BUCKETS = 6  # DDP's buckets for AlexNet after its first step: fc8, fc7 x2, fc6 x2, the convolutions (measured)
NO_LARS_BATCH = 1024  # You, Gitman & Ginsburg 2017: without LARS, AlexNet's published batch stopped at 1K
LARS_BATCH = 8192  # ... and with LARS they trained AlexNet at 8K (AlexNet-BN to 32K, Jia et al. to 64K)


def gradient_params():
    """AlexNet's parameter count (1000 classes), counted on the meta device (nothing allocated)."""
    with torch.device("meta"):
        return sum(p.numel() for p in build_model(preset_config("paper", num_classes=1000)).parameters())


@dataclass
class Setup:
    replicas: int
    batch: int  # per replica
    replica_img_s: float  # one replica's compute rate
    gpus_per_replica: int
    link_GBps: float  # the ring's slowest link, GB/s (bytes)
    link_name: str
    compression: str = "none"
    overlap: float = 1.0
    bwd_fraction: float = 2 / 3
    latency_s: float = 5e-6  # per ring hop and bucket
    accumulate: int = 1  # micro-batches per all-reduce (gradient accumulation)


@dataclass
class Step:
    compute_s: float
    allreduce_s: float
    step_s: float
    img_s: float
    hours: float
    gpu_hours: float
    wall: str


def allreduce_s(n, nbytes, GBps, latency_s=0.0, buckets=BUCKETS):
    if n == 1:
        return 0.0
    return buckets * 2 * (n - 1) * latency_s + 2 * (n - 1) / n * nbytes / (GBps * 1e9)


def project(s, params):
    """One step (s.accumulate micro-batches, one all-reduce) and 90 epochs of it."""
    compute = s.accumulate * s.batch / s.replica_img_s
    ar = allreduce_s(s.replicas, params * WIRE_BYTES[s.compression], s.link_GBps, s.latency_s)
    backward = s.bwd_fraction * s.batch / s.replica_img_s  # only the last micro-batch's backward can hide it
    step = compute + ar - s.overlap * min(ar, backward)
    img_s = s.replicas * s.accumulate * s.batch / step
    hours = EPOCHS * IMAGENET_TRAIN / img_s / 3600
    exposed = step - compute
    wall = f"all-reduce over {s.link_name}" if exposed > 0.2 * step else "compute (replica img/s)"
    if exposed > 0.2 * step and exposed < 0.5 * step:
        wall = f"compute + all-reduce over {s.link_name}"
    global_batch = s.replicas * s.accumulate * s.batch
    if global_batch > LARS_BATCH:
        wall += f"; global batch {global_batch} > 8K: beyond AlexNet with LARS"
    elif global_batch > NO_LARS_BATCH:
        wall += f"; global batch {global_batch} > 1K: needs LARS"
    return Step(compute, ar, step, img_s, hours, hours * s.replicas * s.gpus_per_replica, wall)


def link(replicas, gpus_per_replica, gpus_per_node, nvlink_GBps, inter_gbit):
    """(GB/s, name) of the ring's slowest link: NVLink inside one node, the node's network link beyond."""
    if replicas * gpus_per_replica <= gpus_per_node:
        return nvlink_GBps, "NVLink"
    return inter_gbit / 8, f"{inter_gbit:g} Gb/s"


def hm(hours):
    return f"{int(hours)} h {round(hours % 1 * 60):02d} min" if hours >= 1 else f"{hours * 60:.1f} min"


def scaling_table(args, params, compression, overlap):
    print(f"\nGradients all-reduced in {compression} ({params * WIRE_BYTES[compression] / 1e6:.0f} MB per step), "
          f"{args.replica_img_s:g} img/s per replica, batch {args.batch} per replica, overlap {overlap:.2f}:\n")
    print("| replicas (GPUs) | global batch | compute ms | link | all-reduce ms | step ms | img/s | 90 epochs | "
          "GPU-hours | wall |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for n in args.replicas:
        links = [None] if n * args.gpus_per_replica <= args.gpus_per_node else args.links_gbit
        for gbit in links:
            bw, name = link(n, args.gpus_per_replica, args.gpus_per_node, args.nvlink_GBps, gbit)
            s = Setup(n, args.batch, args.replica_img_s, args.gpus_per_replica, bw, name, compression, overlap,
                      args.bwd_fraction, args.latency_us * 1e-6)
            p = project(s, params)
            name = "-" if n == 1 else name
            print(f"| {n} ({n * args.gpus_per_replica}) | {n * args.batch} | {p.compute_s * 1e3:.1f} | {name} | "
                  f"{p.allreduce_s * 1e3:.1f} | {p.step_s * 1e3:.1f} | {p.img_s:,.0f} | {hm(p.hours)} | "
                  f"{p.gpu_hours:.1f} | {p.wall} |")


def eight_h100(args, params, overlap):
    """Ways to spend 8 H100s on 90 epochs, against the 30-minute target."""
    need = EPOCHS * IMAGENET_TRAIN / (30 * 60)
    print(f"\n8 H100s, 90 epochs in <= 30 min needs {need:,.0f} img/s = {need / 8:,.0f} img/s per GPU:\n")
    print("| layout | per replica img/s (source) | batch/replica | grads | accumulate | global batch | step ms | "
          "img/s | 90 epochs |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    model, fed = args.model_img_s, args.replica_img_s
    rows = [  # (layout, replicas, GPUs each, img/s, source, batch, compression, accumulate)
        ("4 replicas x 2 GPUs", 4, 2, fed, "one GPU, loader-fed", 128, "none", 1),
        ("4 replicas x 2 GPUs", 4, 2, model, "one GPU, model-bound", 128, "none", 1),
        ("4 replicas x 2 GPUs", 4, 2, model, "one GPU, model-bound", 512, "bf16", 1),
        ("4 replicas x 2 GPUs", 4, 2, 2 * model, "2x one GPU: columns fully concurrent (unmeasured)", 128, "none", 1),
        ("8 replicas x 1 GPU", 8, 1, fed, "loader-fed", 128, "none", 1),
        ("8 replicas x 1 GPU", 8, 1, model, "model-bound", 128, "none", 1),
        ("8 replicas x 1 GPU", 8, 1, model, "model-bound", 128, "bf16", 4),
    ]
    for layout, n, g, rate, source, batch, comp, acc in rows:
        s = Setup(n, batch, rate, g, args.nvlink_GBps, "NVLink", comp, overlap, args.bwd_fraction,
                  args.latency_us * 1e-6, acc)
        p = project(s, params)
        print(f"| {layout} | {rate:,.0f} ({source}) | {batch} | {comp} | {acc} | {n * batch * acc} | "
              f"{p.step_s * 1e3:.1f} | {p.img_s:,.0f} | {hm(p.hours)} |")


def measured_rows(paths):
    """The rows of one or more benchmarks/allreduce.py JSON files."""
    runs = [json.loads(Path(path).read_text()) for path in paths]
    return [{**row, "cpus": run["meta"]["cpus"]} for run in runs for row in run["rows"]]


def check_measured(args, rows):
    """The model's prediction for the gloo runs: bus bandwidth and overlap from the smallest process count, compute
    from each run's own plain step. gloo's ring runs on the CPUs, so with more processes than cores each rank's
    "link" gets its share of a core: the second prediction scales the bandwidth by it."""
    base_n = min(r["procs"] for r in rows)
    base = {r["compression"]: r for r in rows if r["procs"] == base_n}
    print(f"\nModel vs measured (gloo, this machine): bus bandwidth and overlap taken from the {base_n}-process "
          "runs of the same compression\n")
    print("| procs | grads | compute s | all-reduce s: ring / ring with shared cores / measured | "
          "DDP fwd+bwd s: predicted / measured | error |")
    print("| --- | --- | --- | --- | --- | --- |")
    for r in rows:
        b = base[r["compression"]]
        share = min(1.0, r["cpus"] / r["procs"]) / min(1.0, r["cpus"] / base_n)
        ring = allreduce_s(r["procs"], r["bytes_per_step"], b["busbw_GBps"])  # busbw: 2(N-1)/N x bytes / time
        shared = allreduce_s(r["procs"], r["bytes_per_step"], b["busbw_GBps"] * share)
        hidden = min(1.0, max(0.0, b["overlap"])) * min(shared, r["compute_bwd_s"])
        predicted = r["compute_s"] + shared - hidden
        print(f"| {r['procs']} | {r['compression']} | {r['compute_s']:.2f} | {ring:.3f} / {shared:.3f} / "
              f"{r['allreduce_s']:.3f} | {predicted:.2f} / {r['ddp_fwd_bwd_s']:.2f} | "
              f"{predicted / r['ddp_fwd_bwd_s'] - 1:+.0%} |")


def get_args_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--replica-img-s", type=float, default=6161,
                   help="one replica's training img/s: H100, split model, bf16, batch 128, fed by the GPU loader "
                        "(docs/BENCHMARKS.md, 2026-11-26 run 2) (default: 6161)")
    p.add_argument("--model-img-s", type=float, default=8069,
                   help="the same without the loader: fwd+bwd on synthetic data (run 2) (default: 8069)")
    p.add_argument("--batch", type=int, default=128, help="images per replica per step (default: 128)")
    p.add_argument("--replicas", type=int, nargs="+", default=[1, 4, 8, 16, 64],
                   help="replica counts (default: 1 4 8 16 64)")
    p.add_argument("--gpus-per-replica", type=int, default=2, help="GPUs per replica (default: 2, the paper's)")
    p.add_argument("--gpus-per-node", type=int, default=8, help="GPUs per node (default: 8)")
    p.add_argument("--nvlink-GBps", type=float, default=450,
                   help="all-reduce bus bandwidth inside a node, GB/s: NVLink 4 per direction; nccl-tests "
                        "reach 460-480 on 8 H100 SXM (default: 450)")
    p.add_argument("--links-gbit", type=float, nargs="+", default=[100, 200, 400, 3200],
                   help="each node's network bandwidth between nodes, Gb/s; 3200 = 8 x 400 Gb/s NICs "
                        "(default: 100 200 400 3200)")
    p.add_argument("--latency-us", type=float, default=5.0,
                   help="latency per ring hop and bucket, microseconds (default: 5)")
    p.add_argument("--bwd-fraction", type=float, default=2 / 3,
                   help="backward's share of a step's compute (default: 2/3: backward ~2x forward)")
    p.add_argument("--overlap", type=float, default=None,
                   help="share of min(all-reduce, backward) hidden behind backward (default: measured, from "
                        "--measured; 1 without it)")
    p.add_argument("--measured", type=Path, nargs="+", default=None,
                   help="JSON file(s) of benchmarks/allreduce.py: their overlap becomes the default, and the model is "
                        "checked against it (default: none)")
    return p


def main(argv=None):
    args = get_args_parser().parse_args(argv)
    params = gradient_params()
    rows = measured_rows(args.measured) if args.measured else None
    overlap = args.overlap
    if overlap is None:
        overlap = 1.0
        if rows:
            overlap = min(1.0, max(0.0, statistics.median(r["overlap"] for r in rows if r["compression"] == "none")))
    print(f"AlexNet: {params:,} parameters = {params * 4 / 1e6:.1f} MB of fp32 gradients per step; overlap "
          f"{overlap:.2f} ({'given' if args.overlap is not None else 'measured' if rows else 'assumed'})")
    for compression in ("none", "bf16"):
        scaling_table(args, params, compression, overlap)
    eight_h100(args, params, overlap)
    if rows:
        check_measured(args, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
