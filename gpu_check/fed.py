"""One replica fed by the loader, for gpu_check/check.py: the replica the `training`, `fed_profile`, `handoff` and
`hw_decoder` steps train (FedReplica), and `fed_profile`, which says where a fed step's time goes.

Why fed_profile exists: on a GPU the fed replica has run at about the rate that the loader's and the model's times
added up would give, consistent with loading and training not overlapping at all (docs/BENCHMARKS.md, "One replica
fed by the loader"), each measured at another batch size. Here every part is measured at the same batch, in
the same run, each a full training step (forward, backward, SGD) through cluster/loop.py's train_one_epoch:
- loader alone, step alone (the model stepped on one fixed batch), fed, and fed_over_min = fed / min of the two;
- the decoupled control: the loader iterated and the model stepped on the fixed batch in the same loop. Near fed:
  the two compete (for the GPU's SMs, copy engines or the host), the batch's hand-off is not the cost; near
  min(loader, step) while fed is lower: the hand-off (a host wait per batch, or ordering) is;
- host syncs: the fed epoch runs under torch.cuda.set_sync_debug_mode("warn"), every host sync it makes counted
  (the loop's end makes 2: its loss and error sums);
- a profiled fed epoch at the first batch size: how much of the wall time the GPU was busy (DALI's kernels
  included) and the top kernels. Read gpu_busy_fraction first: the profiler slows the host, so it reads low if
  anything.
"""
import math
import time
import warnings
from dataclasses import dataclass

import torch
from torch.profiler import ProfilerActivity, profile

from benchmarks.profiling import top_rows
from benchmarks.timing import sync
from cluster.build_model import build_model
from cluster.loop import LrSchedule, make_optimizer, train_one_epoch
from cluster.recipe import preset_config


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
    def build(cls, ctx, batch=None, *, lrn_impl="fast", fused_sgd=False, **loader_options):
        from pipeline.loader import make_loader
        size, gpu = ctx.size, ctx.gpu
        batch = batch or size.train_batch
        dev = torch.device("cuda:0" if gpu else "cpu")
        loader = make_loader(ctx.data, "train", batch, device="cuda" if gpu else "cpu", device_id=0 if gpu else None,
                             crop=size.crop, channels_last=gpu, **loader_options)
        paper = preset_config("paper", num_classes=1000, batch_size=batch)  # the recipe one replica trains with
        model = build_model(paper, lrn_impl=lrn_impl).place(dev, dev)
        model = model.to(memory_format=torch.channels_last)
        _, lr = paper.recipe(1)  # the paper's rule for one replica of `batch`
        opt = make_optimizer(model, lr, paper.momentum, paper.wd, decay_biases=paper.decay_biases, fused=fused_sgd)
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

    def fixed_batch(self):
        """One batch of the loader's, kept on the device: what the step-alone and decoupled runs train on."""
        images, labels, indices = next(iter(self.loader))
        return images.clone(), labels.clone(), indices.clone()


class FixedBatches:
    """A loader-like sequence: `batch` `steps` times (the step alone), or, wrapping `loader`, the loader's batches
    fetched but `batch` returned (the decoupled control)."""

    def __init__(self, batch, steps, loader=None):
        self.batch, self.steps, self.loader = batch, steps, loader

    def __len__(self):
        return self.steps

    def __iter__(self):
        if self.loader is None:
            for _ in range(self.steps):
                yield self.batch
            return
        for _ in self.loader:
            yield self.batch


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


def counting_host_syncs(fn, gpu):
    """(fn(), host syncs it made): torch.cuda.set_sync_debug_mode("warn") warns at every synchronising call; on a
    CPU there is nothing to count (None)."""
    if not gpu:
        return fn(), None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            out = fn()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return out, sum("synchroniz" in str(w.message) for w in caught)


def loader_epoch_img_s(loader, epoch):
    """img/s of iterating one epoch of `loader` alone, timed as train_one_epoch times a step's epoch (its pipeline's
    hand-over included, the device's work finished at the end)."""
    loader.set_epoch(epoch)
    n, images, start = 0, None, time.perf_counter()
    for images, _, _ in loader:
        n += images.shape[0]
    if images is not None:
        sync(images.device)
    return n / (time.perf_counter() - start)


def busy_us(intervals):
    """Length of the union of (start, end) intervals: time during which at least one of them ran."""
    total, end = 0.0, -math.inf
    for a, b in sorted(intervals):
        if b > end:
            total += b - max(a, end)
            end = b
    return total


def fed_parts(ctx, batch, **replica_options):
    """Loader alone, step alone, fed, decoupled and host syncs at one batch size (see the module docstring)."""
    replica = FedReplica.build(ctx, batch, **replica_options)
    try:
        steps = len(replica.loader)
        fixed = replica.fixed_batch()
        replica.epoch(0)  # warm-up: cuDNN's choices; each later epoch's pipeline is prepared during the one before
        loader_img_s = loader_epoch_img_s(replica.loader, 1)
        step = replica.epoch(1, FixedBatches(fixed, steps))
        timed = WaitTimer(replica.loader)
        fed, syncs = counting_host_syncs(lambda: replica.epoch(2, timed), ctx.gpu)
        decoupled = replica.epoch(3, FixedBatches(fixed, steps, replica.loader))
    finally:
        replica.loader.close()
    slower = min(loader_img_s, step["images_per_second"])
    return {"steps_per_epoch": steps, "loader_img_s": loader_img_s, "step_img_s": step["images_per_second"],
            "fed_img_s": fed["images_per_second"], "decoupled_img_s": decoupled["images_per_second"],
            "fed_over_min": fed["images_per_second"] / slower,
            "decoupled_over_min": decoupled["images_per_second"] / slower,
            "batch_wait_ms_per_step": 1e3 * timed.wait_s / steps, "host_syncs_in_fed_epoch": syncs,
            "diverged": replica.diverged}


def profiled_epoch(ctx, batch):
    """A fed epoch under torch.profiler: the GPU's busy time per step and the top kernels (CPU ops on a CPU)."""
    replica = FedReplica.build(ctx, batch)
    try:
        replica.epoch(0)
        steps = len(replica.loader)
        profiled = WaitTimer(replica.loader)
        with profile(activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if ctx.gpu else [])) as prof:
            t0 = time.perf_counter()
            replica.epoch(1, profiled)  # ends with a .item(): the GPU's work is done when it returns
            wall = time.perf_counter() - t0
    finally:
        replica.loader.close()
    result = {"profiled_wall_ms_per_step": 1e3 * wall / steps,
              "profiled_batch_wait_ms_per_step": 1e3 * profiled.wait_s / steps}
    top, total_ms = top_rows(prof, steps, ctx.gpu, ctx.size.profile_top)
    if ctx.gpu:
        # kernels, copies and memsets; not the annotations (record_function spans such as Optimizer.step, which
        # also carry the CUDA device type and cover the gaps between their kernels)
        device_events = [e for e in prof.events()
                         if e.device_type == torch.autograd.DeviceType.CUDA and not e.is_user_annotation]
        busy = busy_us((e.time_range.start, e.time_range.end) for e in device_events) / 1e3 / steps
        result.update(gpu_busy_ms_per_step=busy, gpu_busy_fraction=busy / result["profiled_wall_ms_per_step"])
    result.update(kernel_ms_per_step=total_ms, top_kernels=[r.__dict__ for r in top])
    return result


def step_fed_profile(ctx):
    """fed_parts at each of the check's fed batch sizes (flattened as "b128.fed_img_s", ...), then one profiled fed
    epoch at the first."""
    result = {}
    for batch in ctx.size.fed_batches:
        result.update({f"b{batch}.{k}": v for k, v in fed_parts(ctx, batch).items()})
    result.update(profiled_epoch(ctx, ctx.size.fed_batches[0]))
    return result
