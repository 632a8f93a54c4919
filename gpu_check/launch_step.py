"""The GPU check's `launch` step: the real launcher (cluster/launch.py, Ray Train, the DALI loader, DDP) end to end on
a GPU node, each case as its own process as a user would run it, 2 epochs with --amp.

- nccl: one replica on one GPU, NCCL (what every GPU run uses between replicas).
- gloo_shared_gpu: two replicas sharing the one GPU (--gpus-per-worker 0.5); NCCL refuses two ranks on one device,
  so they talk over gloo.
- cuda_cpu_columns: one replica with column 0 on cuda:0 and column 1 on the CPU: the only way to make activations
  cross devices on a one-GPU node. The CPU column sets the pace, so it trains on a small set.
On a machine without CUDA (--smoke) one CPU replica runs instead, so the step cannot rot between GPU runs.
"""
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GPU_CASES = {
    "nccl": ["--workers", "1", "--gpus-per-worker", "1"],
    "gloo_shared_gpu": ["--workers", "2", "--gpus-per-worker", "0.5", "--backend", "gloo"],
    "cuda_cpu_columns": ["--workers", "1", "--gpus-per-worker", "1", "--column1-device", "cpu"],
}
SMALL_SET_CASES = {"cuda_cpu_columns"}  # ~150 img/s: 10,000 images per epoch would take minutes
CPU_CASES = {"cpu": ["--workers", "1", "--gpus-per-worker", "0", "--cpus-per-worker", "1"]}
REPORTED = ("images_per_second", "val_top1_error", "val_top5_error", "val_top1_error_10crop", "train_loss",
            "replicas_per_epoch", "devices")


def run_case(name, flags, data, out, *, crop, batch, timeout):
    run_dir = out / "runs" / name
    cmd = [sys.executable, "cluster/launch.py", "--data", str(data), "--output-dir", str(out / "runs"),
           "--name", name, "--epochs", "2", "--crop", str(crop), "-b", str(batch), "--amp", "--print-freq", "20",
           *flags]
    start = time.time()
    try:
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
        code, log = proc.returncode, proc.stdout + proc.stderr
    except subprocess.TimeoutExpired as e:  # its partial output may come back as bytes even with text=True
        code, log = "timeout", e.stdout.decode(errors="replace") if isinstance(e.stdout, bytes) else e.stdout or ""
    (out / f"launch_{name}.log").write_text(log)
    result = {"exit_code": code, "wall_s": round(time.time() - start, 1)}
    summary_path = run_dir / "summary.json"
    if summary_path.is_file():
        summary = json.loads(summary_path.read_text())
        result.update({k: summary.get(k) for k in REPORTED})
    if code != 0:
        result["log_tail"] = log[-1500:]
    return result


def step_launch(ctx):
    """Every case of this machine (GPU_CASES, or CPU_CASES in the smoke run), flattened as "case.key"; exit_code is
    the first failing case's, so a failed case fails the check while the others still run."""
    from pipeline import build_shards
    out, size = Path(ctx.args.out), ctx.size
    cases = GPU_CASES if ctx.gpu else CPU_CASES
    small = out / "small_shards"
    if any(name in SMALL_SET_CASES for name in cases) and not (small / "manifest.json").is_file():
        build_shards.build(build_shards.BuildConfig(out=small, jobs=ctx.args.workers, demo_train_per_class=50,
                                                    demo_val_per_class=10))
    flat, codes = {}, []
    for name, flags in cases.items():
        shards = small if name in SMALL_SET_CASES else ctx.data
        timeout = size.launch_timeout
        if ctx.deadline is not None:  # under --budget-s a case never runs past the budget's end
            timeout = min(timeout, int(ctx.deadline - time.time()))
            if timeout < 10:
                flat[f"{name}.skipped"] = "--budget-s ran out before this case"
                continue
        result = run_case(name, flags, shards, out, crop=size.crop, batch=size.model_batch, timeout=timeout)
        codes.append(result["exit_code"])
        flat.update({f"{name}.{k}": v for k, v in result.items()})
    flat["exit_code"] = next((c for c in codes if c != 0), 0)
    return flat
