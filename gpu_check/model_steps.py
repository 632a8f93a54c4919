"""gpu_check/check.py's model steps: split vs single-device, the model's variants at batch 256 bf16 (split on one
GPU), and the profile of where a step's GPU time goes."""
import torch

from benchmarks.model_variants import VARIANTS, build, cudnn_benchmark, measure
from benchmarks.profiling import markdown_table, profile_fwd_bwd
from benchmarks.timing import fwd_bwd_images_per_second
from gpu_check.steps import Context
from model import AlexNet, GroupedAlexNet


def step_model(ctx: Context):
    """Single-device (grouped) vs split on one device at the model batch (128), the split alone at the variants'
    batch (256), and the split across cuda:0 + CPU (or two GPUs); bf16 + channels_last on the GPU."""
    gpu, size = ctx.gpu, ctx.size
    dev = "cuda:0" if gpu else "cpu"
    kw = dict(amp=gpu, channels_last=gpu, iters=size.iters)
    b, crop = size.model_batch, size.crop
    grouped = GroupedAlexNet().to(dev).to(memory_format=torch.channels_last)
    result = {"lrn_impl": grouped.lrn.__class__.__name__,
              "single_device_img_s": fwd_bwd_images_per_second(grouped, b, crop, dev, **kw)}
    del grouped
    split = AlexNet().place(dev, dev).to(memory_format=torch.channels_last)
    result["split_same_device_img_s"] = fwd_bwd_images_per_second(split, b, crop, dev, **kw)
    result["split_overhead"] = result["single_device_img_s"] / result["split_same_device_img_s"] - 1
    # the model target's batch (256), with the default (fast) LRN, as the replica trains
    result[f"split_same_device_batch{size.variant_batch}_img_s"] = fwd_bwd_images_per_second(
        split, size.variant_batch, crop, dev, **kw)
    if gpu:
        split.place("cuda:0", "cpu", output_device="cuda:0")  # real cross-device copies with one GPU
        result["split_cuda0_cpu_img_s"] = fwd_bwd_images_per_second(
            split, b, crop, dev, amp=True, channels_last=True, iters=size.cpu_column_iters, warmup=1)
        if torch.cuda.device_count() >= 2:
            split.place("cuda:0", "cuda:1")
            result["split_two_gpus_img_s"] = fwd_bwd_images_per_second(split, b, crop, dev, **kw)
    return result


def _variants(ctx: Context, names):
    """fwd+bwd img/s of each named variant, split on one device, bf16 + channels_last on the GPU, best of the
    alternating repeats; the best of them and its speed-up over the torch LRN when that was among them."""
    size, dev = ctx.size, "cuda:0" if ctx.gpu else "cpu"
    timings = measure([VARIANTS[n] for n in names], dev, [size.variant_batch], crop=size.crop,
                      amp=ctx.gpu, channels_last=ctx.gpu, iters=size.variant_iters, repeats=size.variant_repeats,
                      compile_backend=size.compile_backend)
    result = {"batch": size.variant_batch}
    for t in timings:
        result[f"{t.variant}_img_s"] = t.best if not t.error else f"error: {t.error}"
    measured = [t for t in timings if not t.error]
    if measured:
        best = max(measured, key=lambda t: t.best)
        result.update(best_variant=best.variant, best_img_s=best.best)
    if len(measured) < len(timings):  # recorded as the step's error, the measured variants kept beside it
        result["error"] = f"variants failed: {[t.variant for t in timings if t.error]}"
    return result


def step_model_variants(ctx: Context):
    """Eager: the LRN implementations (torch, fast, none) and cuDNN autotuning at the variants' batch."""
    result = _variants(ctx, ctx.size.variants)
    base, best = result.get("torch_lrn_img_s"), result.get("best_img_s")
    if isinstance(base, float) and best:
        result["speedup_over_torch_lrn"] = best / base
    return result


def step_compiled_variants(ctx: Context):
    """Compiled: torch.compile (inductor on the GPU) with each LRN, and CUDA graphs. Last in the check:
    each variant compiles for about a minute before it is timed."""
    return {"compile_backend": ctx.size.compile_backend, **_variants(ctx, ctx.size.compiled_variants)}


def step_profile(ctx: Context):
    """Top kernels by GPU time (CPU ops by CPU time on the CPU) of a few steps of each profiled variant, at the
    variants' batch; the tables go to gpu_check.json and after the summary table in gpu_check.md."""
    size, dev = ctx.size, "cuda:0" if ctx.gpu else "cpu"
    result = {}
    for name in size.profile_variants:
        v = VARIANTS[name]
        model = build(v, dev, channels_last=ctx.gpu, compile_backend=size.compile_backend)
        trace = ctx.args.out / f"trace_{name}.json" if ctx.gpu else None  # for chrome://tracing / Perfetto
        with cudnn_benchmark(v.cudnn_benchmark):
            prof = profile_fwd_bwd(model, size.variant_batch, size.crop, dev, amp=ctx.gpu, channels_last=ctx.gpu,
                                   top=size.profile_top, warmup=size.profile_steps, steps=size.profile_steps,
                                   trace_path=trace)
        del model
        result[f"{name}_wall_ms_per_step"] = prof.wall_ms_per_step
        result[f"{name}_kernel_ms_per_step"] = prof.kernel_ms_per_step
        result[f"{name}_top_kernels"] = [r.__dict__ for r in prof.top]
        print(f"[profile] {name}, batch {size.variant_batch}:\n{markdown_table(prof.top)}", flush=True)
    return result


def _max_rel(a, b):
    return ((a.float() - b.float()).abs().max() / b.float().abs().max()).item()


def step_lrn_numerics(ctx: Context):
    """The fast LRN against nn.LocalResponseNorm on this device: forward and backward on conv1-shaped ReLU outputs
    (eager and compiled), and the whole split model's output, in fp32 and under bf16 autocast."""
    from model.lrn import FastLocalResponseNorm, GroupedLocalResponseNorm
    dev = torch.device("cuda:0" if ctx.gpu else "cpu")
    paper = dict(size=5, alpha=5e-4, beta=0.75, k=2.0, groups=2)
    ref, fast = GroupedLocalResponseNorm(**paper), FastLocalResponseNorm(**paper)
    g = torch.Generator(device=dev).manual_seed(0)
    x = (torch.randn(ctx.size.lrn_check_batch, 96, 55, 55, device=dev, generator=g) * 100).relu().contiguous(
        memory_format=torch.channels_last)
    grad = torch.randn(x.shape, device=dev, generator=g)
    result = {}
    compiled = torch.compile(fast, backend=ctx.size.compile_backend)
    for dtype in (torch.float32, torch.bfloat16):
        outs = {}
        for name, module in (("torch", ref), ("fast", fast), ("compiled", compiled)):
            xi = x.detach().clone().requires_grad_(True)
            with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
                y = module(xi.to(dtype) if dtype == torch.bfloat16 else xi)
            y.backward(grad.to(y.dtype))
            outs[name] = (y.detach(), xi.grad)
        tag = "fp32" if dtype == torch.float32 else "bf16"
        for name in ("fast", "compiled"):
            result[f"{name}_{tag}_fwd_max_rel_diff"] = _max_rel(outs[name][0], outs["torch"][0])
            result[f"{name}_{tag}_bwd_max_rel_diff"] = _max_rel(outs[name][1], outs["torch"][1])
    torch.manual_seed(0)
    nets = [AlexNet(dropout=0.0, lrn_impl=impl).place(dev, dev) for impl in ("torch", "fast")]
    nets[1].load_state_dict(nets[0].state_dict())
    images = torch.randn(8, 3, ctx.size.crop, ctx.size.crop, device=dev) * 3
    for tag, amp in (("fp32", False), ("bf16", True)):
        with torch.no_grad(), torch.autocast(dev.type, dtype=torch.bfloat16, enabled=amp):
            a, b = (net.eval()(images) for net in nets)
        result[f"split_model_{tag}_max_rel_diff"] = _max_rel(b, a)
    return result
