"""gpu_check/check.py's steps on feeding and stepping one replica, after fed_profile (gpu_check/fed.py):

- handoff: the fed run with the batch ordered on torch's stream (the loader's default) vs a host wait per batch
  (DALI's own iterator), and prefetch 2 vs 4;
- lrn_step: the full training step (forward, backward, SGD; bf16, channels_last, split on one GPU) with each LRN
  and without one, eager and compiled: the LRN's cost as a share of the step, and fused SGD against the default;
- hw_decoder: the fed run at several shares of JPEGs for the hardware decoder (chosen by training, not the loader
  alone);
- long_epochs: benchmarks/feed.py (loader alone, a simulated step, fed) on epochs of >= 1,000 batches.
"""
import time

import torch

from benchmarks import feed
from cluster.loop import make_optimizer, train_one_epoch
from gpu_check.fed import FixedBatches, fed_parts
from model import AlexNet, compile_for_speed

FED_KEYS = ("loader_img_s", "fed_img_s", "decoupled_img_s", "fed_over_min", "batch_wait_ms_per_step",
            "host_syncs_in_fed_epoch")


def step_handoff(ctx):
    result = {}
    batch = ctx.size.fed_batches[-1]
    for name, options in (("stream_prefetch2", dict(handoff="stream", prefetch=2)),
                          ("stream_prefetch4", dict(handoff="stream", prefetch=4)),
                          ("host_prefetch2", dict(handoff="host", prefetch=2))):
        parts = fed_parts(ctx, batch, **options)
        result.update({f"{name}.{k}": parts[k] for k in FED_KEYS})
    result["batch"] = batch
    return result


def _step_img_s(ctx, batch, *, lrn, lrn_impl="fast", compiled=False, fused_sgd=False):
    """img/s of cluster/loop.py's training step on one fixed batch, after as many untimed steps."""
    gpu, size = ctx.gpu, ctx.size
    dev = torch.device("cuda:0" if gpu else "cpu")
    torch.manual_seed(0)
    model = AlexNet(lrn=lrn, lrn_impl=lrn_impl).place(dev, dev).to(memory_format=torch.channels_last)
    if compiled:
        compile_for_speed(model, backend=size.compile_backend)
    opt = make_optimizer(model, 0.01, 0.9, 5e-4, decay_biases=False, fused=fused_sgd)
    images = torch.randn(batch, 3, size.crop, size.crop, device=dev).contiguous(memory_format=torch.channels_last)
    labels = torch.randint(0, 1000, (batch,), device=dev)
    fixed = FixedBatches((images, labels, None), size.variant_iters)

    class Constant:  # lr fixed: the schedule does not matter to the speed
        @staticmethod
        def lr(peak, epoch, progress):
            return peak

    for epoch in range(2):  # the first warms up (cuDNN's choices, compiling)
        m = train_one_epoch(model, opt, fixed, epoch=epoch, schedule=Constant, peak_lr=0.01, device=dev, amp=gpu)
    return m["images_per_second"]


def step_lrn_step(ctx):
    size, batch = ctx.size, ctx.size.variant_batch
    result = {"batch": batch}
    for mode, impls in (("eager", size.lrn_step_eager), ("compiled", size.lrn_step_compiled)):
        for impl in impls:
            t = time.time()
            try:
                img_s = _step_img_s(ctx, batch, lrn=impl != "none", lrn_impl=impl if impl != "none" else "fast",
                                    compiled=mode == "compiled")
            except Exception as e:  # one failing form (e.g. a compile error) leaves the others measured
                result[f"{mode}.{impl}_img_s"] = f"error: {type(e).__name__}: {e}"
                continue
            result[f"{mode}.{impl}_img_s"] = img_s
            print(f"[lrn_step] {mode} {impl}: {img_s:,.0f} img/s ({time.time() - t:.0f} s)", flush=True)
        base = result.get(f"{mode}.none_img_s")
        for impl in impls:
            value = result.get(f"{mode}.{impl}_img_s")
            if impl != "none" and isinstance(base, float) and isinstance(value, float):
                result[f"{mode}.{impl}_over_no_lrn"] = value / base  # target: >= 0.95
    try:
        result["eager.fast_fused_sgd_img_s"] = _step_img_s(ctx, batch, lrn=True, fused_sgd=True)
    except RuntimeError as e:  # a torch without fused SGD on this device
        result["eager.fast_fused_sgd_img_s"] = f"error: {e}"
    return result


def step_hw_decoder(ctx):
    result = {"batch": ctx.size.fed_batches[0]}
    for load in ctx.size.hw_loads:
        parts = fed_parts(ctx, ctx.size.fed_batches[0], hw_decoder_load=load)
        result.update({f"load{load:g}.{k}": parts[k] for k in ("loader_img_s", "fed_img_s", "fed_over_min")})
    return result


def step_long_epochs(ctx):
    size = ctx.size
    out = ctx.args.out / "feed_long.json"
    threads = [] if ctx.gpu else ["--threads", str(ctx.args.workers)]  # on a GPU: the loader's own default
    report = feed.main(["--data", str(ctx.data), "--device", "cuda" if ctx.gpu else "cpu", "-b",
                        str(size.long_batch), "--crop", str(size.crop), "--link-copies", str(size.long_copies),
                        "--rounds", "1", "--json", str(out)] + threads)
    result = {}
    for run in report["runs"]:
        name = run["name"]
        result.update({f"{name}.steps_per_epoch": run["steps_per_epoch"],
                       f"{name}.loader_img_s": run["loader"]["img_s"], f"{name}.step_img_s": run["step"]["img_s"],
                       f"{name}.fed_img_s": run["fed"]["img_s"], f"{name}.fed_over_min": run["fed_over_min"]})
        result.update({f"{name}.fed_{k}": v for k, v in run["fed"]["per_epoch"].items()})
    return result

