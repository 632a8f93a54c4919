"""One replica fed by the loader, for gpu_check/check.py: the replica both the `training` and the `fed_profile` steps
train (FedReplica), and `fed_profile`, which says where a fed step's time goes.

Why fed_profile exists: on a GPU the fed replica has run at about the rate that the loader's and the model's times
added up would give, consistent with loading and training not overlapping at all (docs/BENCHMARKS.md, "One replica
fed by the loader"). Two explanations fit. The mixed
decoder's kernels may share the GPU's SMs with training (then the GPU is busy all the time and the kernel table
shows DALI's kernels taking the difference), or the step may wait for each batch on the host (then the GPU idles
while the host waits in the loader). The step measures both: the host's time blocked in the loader per step, and
how much of the wall time the GPU was busy (the union of all kernel and copy intervals, DALI's included: they run
in this process). Read gpu_busy_fraction first: CUDA runs asynchronously, so a host blocked in the loader does not
by itself mean an idle GPU; and the profiler slows the host, so the fraction reads low if anything.
"""
import math
import time
from dataclasses import dataclass

import torch
from torch.profiler import ProfilerActivity, profile

from benchmarks.profiling import top_rows
from cluster.build_model import build_model
from cluster.loop import LrSchedule, make_optimizer, train_one_epoch
from cluster.recipe import PRESETS, preset_config


@dataclass
class FedReplica:
    """The paper preset's start (its init, lr per 128 images, warmup steps, weights-only decay), as a run on ImageNet
    would train, on the check's shards; bf16 + channels_last on the GPU. Pairing the demo's Kaiming init with the
    paper's lr 0.01 and no warmup, which no preset does, sent the loss to nan (docs/BENCHMARKS.md). A rate is worth
    keeping even from a run whose loss is not finite (the arithmetic costs the same): `diverged` says so."""
    loader: object
    model: torch.nn.Module
    opt: torch.optim.Optimizer
    schedule: LrSchedule
    lr: float
    device: torch.device
    amp: bool
    diverged: bool = False

    @classmethod
    def build(cls, ctx):
        from pipeline.loader import make_loader
        size, gpu = ctx.size, ctx.gpu
        dev = torch.device("cuda:0" if gpu else "cpu")
        loader = make_loader(ctx.data, "train", size.train_batch, device="cuda" if gpu else "cpu",
                             device_id=0 if gpu else None, crop=size.crop)
        paper = PRESETS["paper"]
        model = build_model(preset_config("paper", num_classes=1000)).place(dev, dev)
        model = model.to(memory_format=torch.channels_last)
        lr = paper.base_lr * size.train_batch / 128
        opt = make_optimizer(model, lr, momentum=0.9, wd=5e-4, decay_biases=paper.decay_biases)
        schedule = LrSchedule(base_lr=lr, warmup_epochs=0, warmup_steps=paper.warmup_steps,
                              steps_per_epoch=len(loader))
        return cls(loader, model, opt, schedule, lr, dev, gpu)

    def epoch(self, epoch, loader=None):
        """cluster/loop.py's train_one_epoch over `loader` (default: the replica's own, which `loader` may wrap)."""
        self.loader.set_epoch(epoch)
        m = train_one_epoch(self.model, self.opt, self.loader if loader is None else loader, epoch=epoch,
                            schedule=self.schedule, peak_lr=self.lr, device=self.device, amp=self.amp)
        self.diverged = self.diverged or not math.isfinite(m["train_loss"])
        return m


class WaitTimer:
    """Wraps a loader and sums the host's time blocked in fetching each batch."""

    def __init__(self, loader):
        self.loader, self.wait_s = loader, 0.0

    def __len__(self):
        return len(self.loader)

    def __iter__(self):
        batches = iter(self.loader)
        while True:
            t0 = time.perf_counter()
            try:  # the last next() ends the epoch (the loader drops its pipeline): counted too
                batch = next(batches)
            except StopIteration:
                return
            finally:
                self.wait_s += time.perf_counter() - t0
            yield batch


def busy_us(intervals):
    """Length of the union of (start, end) intervals: time during which at least one of them ran."""
    total, end = 0.0, -math.inf
    for a, b in sorted(intervals):
        if b > end:
            total += b - max(a, end)
            end = b
    return total


def step_fed_profile(ctx):
    """Epoch 1 warms up; epoch 2 is timed without the profiler (img/s, host wait per step); epoch 3 runs under
    torch.profiler (the GPU's busy time per step, the top kernels, DALI's among them)."""
    replica = FedReplica.build(ctx)
    try:
        replica.epoch(0)
        timed = WaitTimer(replica.loader)
        start = time.perf_counter()
        m = replica.epoch(1, timed)
        wall = time.perf_counter() - start
        steps = len(replica.loader)
        gpu = ctx.gpu
        profiled = WaitTimer(replica.loader)
        with profile(activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if gpu else [])) as prof:
            t0 = time.perf_counter()
            replica.epoch(2, profiled)  # ends with a .item(): the GPU's work is done when it returns
            profiled_wall = time.perf_counter() - t0
    finally:
        replica.loader.close()
    result = {"steps_per_epoch": steps, "img_s": m["images_per_second"], "wall_ms_per_step": 1e3 * wall / steps,
              "batch_wait_ms_per_step": 1e3 * timed.wait_s / steps,
              "profiled_wall_ms_per_step": 1e3 * profiled_wall / steps,
              "profiled_batch_wait_ms_per_step": 1e3 * profiled.wait_s / steps, "diverged": replica.diverged}
    top, total_ms = top_rows(prof, steps, gpu, ctx.size.profile_top)
    if gpu:
        # kernels, copies and memsets; not the annotations (record_function spans such as Optimizer.step, which
        # also carry the CUDA device type and cover the gaps between their kernels)
        device_events = [e for e in prof.events()
                         if e.device_type == torch.autograd.DeviceType.CUDA and not e.is_user_annotation]
        busy = busy_us((e.time_range.start, e.time_range.end) for e in device_events) / 1e3 / steps
        result.update(gpu_busy_ms_per_step=busy, gpu_busy_fraction=busy / result["profiled_wall_ms_per_step"])
    result.update(kernel_ms_per_step=total_ms, top_kernels=[r.__dict__ for r in top])
    return result
