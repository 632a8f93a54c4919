"""torch.profiler over a few fwd+bwd steps: the kernels that take the time, as rows for JSON and a markdown table.

On a GPU the rows are CUDA kernels (and copies) by their own GPU time; on a CPU, where there are no kernels, they
are aten operators by their own CPU time."""
import time
from dataclasses import asdict, dataclass

import torch
from torch.profiler import ProfilerActivity, profile

from benchmarks.timing import fwd_bwd_step, sync


@dataclass
class KernelRow:
    name: str
    ms_per_step: float  # the kernel's own time, summed over its calls in one step
    percent: float  # of all kernels' time
    calls_per_step: float


@dataclass
class Profile:
    device_kind: str  # "cuda" (rows are kernels, GPU time) or "cpu" (rows are aten ops, CPU time)
    steps: int
    kernel_ms_per_step: float  # all kernels (or ops) together
    wall_ms_per_step: float  # with the profiler on, which slows the host side
    top: list  # [KernelRow], most time first

    def as_dict(self):
        return asdict(self)


def profile_fwd_bwd(model, batch, crop, device, *, amp=False, channels_last=False, warmup=3, steps=3, top=15,
                    trace_path=None):
    """Profile `steps` fwd+bwd steps of `model` after `warmup` unprofiled ones (compilation, cuDNN autotuning)."""
    device = torch.device(device)
    step = fwd_bwd_step(model, batch, crop, device, amp=amp, channels_last=channels_last)
    for _ in range(warmup):
        step()
    sync(device)
    gpu = device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if gpu else [])
    with profile(activities=activities) as prof:
        start = time.perf_counter()
        for _ in range(steps):
            step()
        sync(device)
        wall = time.perf_counter() - start
    if trace_path:
        prof.export_chrome_trace(str(trace_path))
    rows, total_ms = top_rows(prof, steps, gpu, top)
    return Profile("cuda" if gpu else "cpu", steps, total_ms, wall * 1e3 / steps, rows)


def top_rows(prof, steps, gpu, top):
    """([KernelRow] of the `top` most expensive, all kernels' ms per step) from a finished torch.profiler run over
    `steps` steps: CUDA kernels by their GPU time when `gpu`, else aten operators by their own CPU time."""
    events = [e for e in prof.key_averages() if not e.is_user_annotation]
    if gpu:  # the kernels themselves, not the CPU-side operators that launched them
        events = [e for e in events if e.device_type == torch.autograd.DeviceType.CUDA]
        own = lambda e: e.self_device_time_total  # noqa: E731
    else:
        own = lambda e: e.self_cpu_time_total  # noqa: E731
    total = sum(own(e) for e in events) or 1.0
    rows = [KernelRow(e.key[:100], own(e) / 1e3 / steps, 100 * own(e) / total, e.count / steps)
            for e in sorted(events, key=own, reverse=True)[:top]]
    return rows, total / 1e3 / steps


def markdown_table(rows):
    """Rows of KernelRow (or their dicts) as a markdown table."""
    lines = ["| # | kernel | ms / step | % | calls / step |", "| --- | --- | --- | --- | --- |"]
    for i, r in enumerate(rows, 1):
        r = r if isinstance(r, dict) else asdict(r)
        name = r["name"].replace("|", "\\|")
        lines.append(f"| {i} | `{name}` | {r['ms_per_step']:.3f} | {r['percent']:.1f} | {r['calls_per_step']:g} |")
    return "\n".join(lines)
