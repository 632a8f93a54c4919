"""What every gpu_check/check.py step gets (Context) and how a step is registered (Step), in a module of its own so
step modules (gpu_check/model_steps.py, ...) and the runner import it without importing each other."""
import argparse
from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class Sizes:
    train_per_class: int
    val_per_class: int
    loader_batch: int
    model_batch: int  # single vs split (the "model" step)
    crop: int
    iters: int
    cpu_column_iters: int
    train_batch: int  # the "training" step: one replica fed by the loader for 2 epochs
    variant_batch: int  # the model's speed target: batch 256, bf16, split on one GPU
    variant_iters: int
    variant_repeats: int
    variants: tuple  # names in benchmarks/model_variants.py: the eager ones (the "model_variants" step)
    compiled_variants: tuple  # the torch.compile ones (the "compiled_variants" step: minutes of compiling)
    profile_variants: tuple
    profile_top: int
    profile_steps: int  # profiled steps, after as many unprofiled warm-up steps
    lrn_check_batch: int  # conv1-shaped (N, 96, 55, 55) tensors for the LRN numerics
    compile_backend: str  # inductor on the GPU; tracing only on CPU, where inductor takes minutes per model
    launch_timeout: int  # seconds per cluster/launch.py case of the "launch" step
    fed_batches: tuple  # fed_profile's batch sizes (handoff uses the last, hw_decoder the first); the smoke run's is
    # its whole training set, one step per epoch: each of its ~20 fed steps costs seconds on a CPU (SGD on 61M weights)
    lrn_step_eager: tuple  # lrn_step's LRN forms ("none": no LRN), eager
    lrn_step_compiled: tuple  # and compiled
    hw_loads: tuple  # hw_decoder's shares of JPEGs for the hardware decoder
    long_batch: int  # long_epochs: benchmarks/feed.py's batch
    long_copies: int  # and its shards listed this many times (>= 1,000 batches per epoch on the full set)


FULL = Sizes(train_per_class=1000, val_per_class=50, loader_batch=256, model_batch=128, crop=224, iters=20,
             cpu_column_iters=3, train_batch=128, variant_batch=256, variant_iters=20, variant_repeats=2,
             variants=("torch_lrn", "fast_lrn", "fast_lrn_cudnn", "no_lrn"),
             compiled_variants=("compiled", "compiled_torch_lrn", "cudagraphs"),
             profile_variants=("fast_lrn", "compiled"), profile_top=15, profile_steps=3, lrn_check_batch=16,
             compile_backend="inductor", launch_timeout=240, fed_batches=(128, 256),
             lrn_step_eager=("none", "fast", "fused", "torch"), lrn_step_compiled=("none", "fast"),
             hw_loads=(0.0, 0.65, 1.0), long_batch=256, long_copies=26)
SMOKE = Sizes(train_per_class=4, val_per_class=2, loader_batch=8, model_batch=4, crop=64, iters=2,
              cpu_column_iters=1, train_batch=8, variant_batch=4, variant_iters=1, variant_repeats=1,
              variants=("torch_lrn", "fast_lrn"), compiled_variants=("compiled",),
              profile_variants=("torch_lrn", "fast_lrn"),
              profile_top=15, profile_steps=1, lrn_check_batch=2, compile_backend="aot_eager",
              launch_timeout=400, fed_batches=(40,), lrn_step_eager=("none", "fast"), lrn_step_compiled=("fast",),
              hw_loads=(0.65,), long_batch=8, long_copies=2)


@dataclass
class Context:
    args: argparse.Namespace
    size: Sizes
    gpu: bool
    data: str | None = None  # the shards folder, once the shards step has made or found it
    deadline: float | None = None  # time.time() at which --budget-s runs out: a step with parts stops there


@dataclass(frozen=True)
class Step:
    name: str  # its key in gpu_check.json
    run: Callable[[Context], dict]
    needs_data: bool = False  # skipped when no shards could be built
    gpu_only: bool = False  # skipped in the CPU smoke run
