"""Named ways of running one AlexNet replica (form, LRN implementation, torch.compile, cuDNN autotuning), built and
timed alike, so benchmarks/model_speed.py and gpu_check/check.py compare the same things."""
import contextlib
from dataclasses import dataclass

import torch

from benchmarks.timing import fwd_bwd_images_per_second
from cluster.build_model import build_model
from cluster.recipe import preset_config
from model import compile_for_speed


@dataclass(frozen=True)
class Variant:
    name: str
    form: str = "split"  # "split": the paper's two columns, both on the one device; "single": grouped convolutions
    lrn_impl: str = "fast"  # model/lrn.py's make_lrn: "fast", "fused" or "torch" (nn.LocalResponseNorm)
    lrn: bool = True
    compile: bool = False
    compile_mode: str | None = None  # torch.compile's mode; "reduce-overhead" adds CUDA graphs
    cudnn_benchmark: bool = False  # let cuDNN time its convolution algorithms on the first steps
    gpu_only: bool = False  # CUDA graphs mean nothing on a CPU


_VARIANTS = [
    Variant("torch_lrn", lrn_impl="torch"),  # the replica as it trained before the fast LRN
    Variant("fast_lrn"),
    Variant("fast_lrn_cudnn", cudnn_benchmark=True),
    Variant("fused_lrn", lrn_impl="fused", cudnn_benchmark=True),  # the compiled LRN kernel in an eager model
    Variant("compiled", compile=True, cudnn_benchmark=True),
    Variant("compiled_torch_lrn", lrn_impl="torch", compile=True, cudnn_benchmark=True),  # is compile alone enough?
    Variant("cudagraphs", compile=True, compile_mode="reduce-overhead", cudnn_benchmark=True, gpu_only=True),
    Variant("no_lrn", lrn=False, cudnn_benchmark=True),  # the ceiling: what LRN costs at all
    Variant("single", form="single"),
    Variant("single_torch_lrn", form="single", lrn_impl="torch"),
]
VARIANTS = {v.name: v for v in _VARIANTS}


def parse_variants(text, flag="--variants"):
    """'a,b,c' -> [Variant]; an unknown name is an error naming the flag and the known names."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in VARIANTS]
    if unknown or not names:
        raise ValueError(f"{flag}: unknown variant(s) {unknown or text!r}; choose from {', '.join(VARIANTS)}")
    return [VARIANTS[n] for n in names]


@contextlib.contextmanager
def cudnn_benchmark(enabled):
    before = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = enabled
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = before


def build(variant, device, *, channels_last, compile_backend="inductor", num_classes=1000, seed=0):
    """The variant's model on `device` (both columns there, for the split form), compiled if it asks to be."""
    torch.manual_seed(seed)
    recipe = preset_config("paper", num_classes=num_classes, lrn=variant.lrn)
    model = build_model(recipe, grouped=variant.form == "single", lrn_impl=variant.lrn_impl)
    model = model.to(device) if variant.form == "single" else model.place(device, device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    if variant.compile:
        # CUDA graphs are inductor's: with a tracing-only backend (the CPU smoke run) the mode is dropped
        mode = variant.compile_mode if compile_backend == "inductor" else None
        compile_for_speed(model, backend=compile_backend, mode=mode)
    return model


@dataclass
class Timing:
    variant: str
    batch: int
    img_s: list  # one rate per repeat
    error: str | None = None

    @property
    def best(self):
        return max(self.img_s) if self.img_s else None


def measure(variants, device, batches, *, crop=224, amp=False, channels_last=False, iters=10, warmup=3, repeats=3,
            compile_backend="inductor"):
    """Best-of-`repeats` fwd+bwd img/s of every (variant, batch), the repeats alternating over all of them so a
    machine that drifts (a shared CPU, GPU clocks) hits every variant alike. A variant that fails to build or run
    is recorded with its error and the others go on. Compiled variants compile during their warm-up steps."""
    device = torch.device(device)
    variants = [v for v in variants if not (v.gpu_only and device.type != "cuda")]
    by_name = {v.name: v for v in variants}
    timings = [Timing(v.name, b, []) for v in variants for b in batches]
    models = {}

    def key(t):  # a compiled model gets one per batch size: a second size would recompile it with dynamic shapes
        return (t.variant, t.batch if by_name[t.variant].compile else None)

    for t in timings:
        if key(t) in models:
            continue
        try:
            models[key(t)] = build(by_name[t.variant], device, channels_last=channels_last,
                                   compile_backend=compile_backend)
        except Exception as e:  # recorded; the other variants still run
            t.error = f"{type(e).__name__}: {e}"
    for r in range(repeats):
        for t in timings:
            if t.error:
                continue
            v = by_name[t.variant]
            try:
                with cudnn_benchmark(v.cudnn_benchmark):
                    t.img_s.append(fwd_bwd_images_per_second(
                        models[key(t)], t.batch, crop, device, amp=amp, channels_last=channels_last, iters=iters,
                        warmup=warmup if r == 0 else 1))
            except Exception as e:
                t.error = f"{type(e).__name__}: {e}"
    return timings

