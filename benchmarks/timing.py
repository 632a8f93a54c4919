"""Timing helpers shared by the benchmarks: synchronise before reading the clock, warm up first, report img/s."""
import statistics
import time
from dataclasses import dataclass, field

import torch


def sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def fwd_bwd_step(model, batch, crop, input_device, *, amp=False, channels_last=False):
    """A function doing one forward + backward of `model` (train mode) on a fixed random batch, gradients dropped
    (no optimizer: the benchmarks time the net, not SGD). amp: bfloat16 autocast, on CUDA only."""
    input_device = torch.device(input_device)
    x = torch.randn(batch, 3, crop, crop, device=input_device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, model.num_classes, (batch,), device=input_device)
    model.train()

    def step():
        with torch.autocast(input_device.type, dtype=torch.bfloat16, enabled=amp and input_device.type == "cuda"):
            loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        model.zero_grad(set_to_none=True)
    return step


def fwd_bwd_images_per_second(model, batch, crop, input_device, *, amp=False, channels_last=False, iters=10,
                              warmup=3):
    """img/s of fwd_bwd_step over `iters` timed steps, after `warmup` untimed ones."""
    input_device = torch.device(input_device)
    step = fwd_bwd_step(model, batch, crop, input_device, amp=amp, channels_last=channels_last)
    for _ in range(warmup):
        step()
    sync(input_device)
    start = time.perf_counter()
    for _ in range(iters):
        step()
    sync(input_device)
    return batch * iters / (time.perf_counter() - start)


@dataclass
class LoaderTiming:
    """One loader timed over several epochs. img_s counts every batch after the first `skip_batches` against the
    wall time, hand-overs included. overhead_s[k] is what epoch k+1 took beyond streaming its batches at the median
    batch interval: the hand-over to its pipeline plus any stall while the following one was built in the
    background. epochs: the loader's own EpochTiming per epoch (build, first batch, wait, drop)."""
    img_s: float
    median_batch_s: float
    steps: int
    overhead_s: list = field(default_factory=list)
    epochs: list = field(default_factory=list)


def time_loader(loader, *, epochs=1, skip_batches=2):
    """Iterate `loader` (a DaliLoader) for `epochs` epochs and time it; see LoaderTiming."""
    stamps, n, start, images = [], 0, None, None  # stamps[epoch] = times each batch arrived
    for epoch in range(epochs):
        loader.set_epoch(epoch)
        stamps.append([])
        for step, (images, _, _) in enumerate(loader):
            if epoch == 0 and step == skip_batches:
                sync(images.device)
                start, n = time.perf_counter(), 0
            n += images.shape[0]
            stamps[-1].append(time.perf_counter())  # no sync per batch: it would stall DALI's GPU prefetching
    if start is None:
        raise ValueError(f"the loader gave fewer than {skip_batches + 1} batches: use more data or a smaller batch")
    sync(images.device)
    img_s = n / (time.perf_counter() - start)
    median = statistics.median(b - a for s in stamps for a, b in zip(s, s[1:]))
    overhead = [s[-1] - prev[-1] - len(s) * median for prev, s in zip(stamps, stamps[1:])]
    return LoaderTiming(img_s, median, len(stamps[0]), overhead, getattr(loader, "epoch_timings", [])[-epochs:])


def loader_images_per_second(loader, *, epochs=1, skip_batches=2):
    """img/s of iterating `loader` (a DaliLoader), not counting its first `skip_batches` (pipeline start-up)."""
    return time_loader(loader, epochs=epochs, skip_batches=skip_batches).img_s
