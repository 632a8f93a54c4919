"""A data-parallel AlexNet step split into compute and all-reduce, on gloo, with N processes on this machine.

    python -m benchmarks.allreduce                                   # 2 and 4 processes, none/bf16/fp16, batch 8, 224
    python -m benchmarks.allreduce --procs 2 --compression none --rounds 1 --out docs/scaling/allreduce.json

Each process is one replica: the project's split AlexNet (1000 classes) with both columns on the CPU, wrapped in
DDP with device_ids=None as cluster/worker.py does, --grad-compression applied through cluster/grad_compression.py.
Every step, after a barrier, each rank times three things, in turn, on its own random batch:
  compute     forward + backward of an identical model without DDP
  ddp         forward + backward + SGD step through DDP (the all-reduce runs inside backward, bucket by bucket)
  allreduce   the same buckets (sizes and dtype counted by a comm hook on the DDP model) all-reduced alone
A step's time is its slowest rank's (the others wait for it in the all-reduce); the table gives medians over the
timed steps. Exposed = DDP's backward minus the plain backward of the same step (paired: load changes between
steps); overlap = the part of the all-reduce hidden behind backward, 1 - exposed / allreduce. Settings run in
rounds (none, bf16, fp16, none, ...), each a fresh pair of models, so a change in the machine's load falls on all
of them. With "none" the counting hook wraps DDP's allreduce_hook, which does what DDP does without a hook.
The load average is recorded: on a shared 2-core box compute and gloo compete for the same cores.
"""
import argparse
import json
import os
import platform
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel

from cluster.build_model import build_model
from cluster.grad_compression import register, wire_dtype
from cluster.recipe import GRAD_COMPRESSIONS, preset_config

TIMES = ("compute_fwd", "compute_bwd", "ddp_fwd", "ddp_bwd", "ddp_opt", "allreduce")


def get_args_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--procs", type=int, nargs="+", default=[2, 4], help="process counts (replicas) (default: 2 4)")
    p.add_argument("--compression", nargs="+", choices=GRAD_COMPRESSIONS, default=list(GRAD_COMPRESSIONS),
                   help="--grad-compression settings to time (default: none bf16 fp16)")
    p.add_argument("-b", "--batch-size", type=int, default=8, help="images per replica per step (default: 8)")
    p.add_argument("--crop", type=int, default=224, help="input size (default: 224)")
    p.add_argument("--steps", type=int, default=3, help="timed steps per setting and round (default: 3)")
    p.add_argument("--rounds", type=int, default=2, help="rounds over the settings (default: 2)")
    p.add_argument("--warmup", type=int, default=1,
                   help="untimed steps per setting and round; DDP puts all gradients in one bucket until its "
                        "second step (default: 1)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads per process (default: cores / processes, at least 1)")
    p.add_argument("--out", type=Path, default=None, help="JSON file for the results (default: none)")
    return p


def counting(buckets, dtype):
    """A hook wrapper recording each bucket's size on the wire (elements x the all-reduced dtype's bytes)."""
    def wrap(hook):
        def counted_hook(state, bucket):
            buckets.append(bucket.buffer().numel() * dtype.itemsize)
            return hook(state, bucket)
        return counted_hook
    return wrap


def timed(fn):
    dist.barrier()
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def time_kind(kind, rank, world, args):
    """{name: [seconds per step]} for this rank, and the byte sizes of one step's buckets."""
    torch.manual_seed(0)
    recipe = preset_config("demo", num_classes=1000)  # Kaiming init: the demo preset's
    plain = build_model(recipe).place("cpu", "cpu")
    torch.manual_seed(0)
    replica = build_model(recipe).place("cpu", "cpu")
    ddp = DistributedDataParallel(replica, device_ids=None)
    buckets, dtype = [], wire_dtype(kind)
    register(ddp, kind, wrap=counting(buckets, dtype))
    opt = torch.optim.SGD(replica.parameters(), lr=1e-4)  # no momentum buffer: 244 MB less per process
    torch.manual_seed(100 + rank)
    x, y = torch.randn(args.batch_size, 3, args.crop, args.crop), torch.randint(0, 1000, (args.batch_size,))
    times, step_buckets = {name: [] for name in TIMES}, []
    for step in range(args.warmup + args.steps):
        loss, t_fwd = timed(lambda: F.cross_entropy(plain(x), y))
        _, t_bwd = timed(loss.backward)
        plain.zero_grad(set_to_none=True)
        buckets.clear()
        loss, d_fwd = timed(lambda: F.cross_entropy(ddp(x), y))
        _, d_bwd = timed(loss.backward)
        _, d_opt = timed(opt.step)
        opt.zero_grad(set_to_none=True)
        step_buckets = list(buckets)
        tensors = [torch.ones(n // dtype.itemsize, dtype=dtype) for n in step_buckets]
        _, t_ar = timed(lambda ts=tensors: [w.wait() for w in [dist.all_reduce(t, async_op=True) for t in ts]])
        if step >= args.warmup:
            for name, t in zip(TIMES, (t_fwd, t_bwd, d_fwd, d_bwd, d_opt, t_ar)):
                times[name].append(t)
    return times, step_buckets


def worker(rank, world, args, port, out_dir):
    torch.set_num_threads(args.threads or max(1, (os.cpu_count() or 1) // world))
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    results = {kind: {"steps_s": {name: [] for name in TIMES}} for kind in args.compression}
    for _ in range(args.rounds):
        for kind in args.compression:
            times, buckets = time_kind(kind, rank, world, args)
            gathered = [None] * world
            dist.all_gather_object(gathered, times)
            for name in TIMES:  # per step, the slowest rank's time
                results[kind]["steps_s"][name] += [max(r[name][i] for r in gathered) for i in range(args.steps)]
            results[kind].update(bucket_bytes=buckets, bytes_per_step=sum(buckets))
    if rank == 0:
        (Path(out_dir) / f"procs{world}.json").write_text(json.dumps(results))
    dist.destroy_process_group()


def summarise(world, kind, r):
    """The derived numbers for one (processes, compression) row."""
    steps = r["steps_s"]
    m = {name: statistics.median(v) for name, v in steps.items()}
    compute, bwd = m["compute_fwd"] + m["compute_bwd"], m["compute_bwd"]
    exposed = statistics.median(d - c for d, c in zip(steps["ddp_bwd"], steps["compute_bwd"]))
    algbw = r["bytes_per_step"] / m["allreduce"]
    return {"procs": world, "compression": kind, "bytes_per_step": r["bytes_per_step"],
            "buckets": len(r["bucket_bytes"]), "compute_s": compute, "compute_bwd_s": bwd,
            "ddp_fwd_bwd_s": m["ddp_fwd"] + m["ddp_bwd"], "ddp_step_s": m["ddp_fwd"] + m["ddp_bwd"] + m["ddp_opt"],
            "allreduce_s": m["allreduce"], "allreduce_min_s": min(steps["allreduce"]), "exposed_s": exposed,
            "overlap": 1 - exposed / m["allreduce"],
            "algbw_GBps": algbw / 1e9, "busbw_GBps": algbw * 2 * (world - 1) / world / 1e9}


def main(argv=None):
    args = get_args_parser().parse_args(argv)
    load_before, start = os.getloadavg(), time.time()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for world in args.procs:
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                port = s.getsockname()[1]
            mp.spawn(worker, args=(world, args, port, tmp), nprocs=world)
            results = json.loads((Path(tmp) / f"procs{world}.json").read_text())
            rows += [{**summarise(world, kind, r), "steps_s": r["steps_s"], "bucket_bytes": r["bucket_bytes"]}
                     for kind, r in results.items()]
    load_after = os.getloadavg()
    print(f"batch {args.batch_size}, crop {args.crop}, {args.rounds} x {args.steps} timed steps; load average "
          f"{load_before[0]:.1f} before, {load_after[0]:.1f} after ({time.time() - start:.0f} s)")
    print("| procs | compression | MB/step | buckets | compute s | DDP fwd+bwd s | DDP step s | all-reduce alone s | "
          "exposed s | overlap | busbw GB/s |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['procs']} | {r['compression']} | {r['bytes_per_step'] / 1e6:.1f} | {r['buckets']} | "
              f"{r['compute_s']:.2f} | {r['ddp_fwd_bwd_s']:.2f} | {r['ddp_step_s']:.2f} | {r['allreduce_s']:.3f} | "
              f"{r['exposed_s']:.3f} | {r['overlap']:.0%} | {r['busbw_GBps']:.2f} |")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        meta = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "cpus": os.cpu_count(),
                "cpu": platform.processor() or platform.machine(), "torch": torch.__version__,
                "load_average_before": load_before, "load_average_after": load_after, "args": {
                    k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}}
        args.out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
