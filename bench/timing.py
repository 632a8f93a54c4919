"""Timing helpers shared by the benchmarks: synchronise before reading the clock, warm up first, report img/s."""
import time

import torch


def sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def fwd_bwd_images_per_second(model, batch, crop, input_device, *, amp=False, channels_last=False, iters=10,
                              warmup=3):
    """Forward + backward + SGD-free gradient of `model` on random data; img/s over `iters` timed steps."""
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

    for _ in range(warmup):
        step()
    sync(input_device)
    start = time.perf_counter()
    for _ in range(iters):
        step()
    sync(input_device)
    return batch * iters / (time.perf_counter() - start)


def loader_images_per_second(loader, *, epochs=1, skip_batches=2):
    """img/s of iterating `loader` (a DaliLoader), not counting its first `skip_batches` (pipeline start-up)."""
    n, start = 0, None
    for epoch in range(epochs):
        loader.set_epoch(epoch)
        for step, (images, _, _) in enumerate(loader):
            if epoch == 0 and step == skip_batches:
                sync(images.device)
                start, n = time.perf_counter(), 0
            n += images.shape[0]
    if start is None:
        raise ValueError(f"the loader gave fewer than {skip_batches + 1} batches: use more data or a smaller batch")
    sync(images.device)
    return n / (time.perf_counter() - start)
