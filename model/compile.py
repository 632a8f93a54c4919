"""torch.compile for AlexNet, in the one way that keeps checkpoints, DDP and the split placement working.

How each form compiles (torch 2.13; see tests/test_model_compile.py):
- The whole forward of either form is one graph: dynamo traces the split form's column loop, the device copies
  of ``_exchange`` and the custom LRN (model/lrn.py switches to a slice-sum form inductor fuses), with no graph
  break. Columns on two devices stay one graph; inductor emits each kernel for its own device, but CUDA graphs
  (mode="reduce-overhead") are skipped for multi-device graphs, so use them on one device only.
- ``nn.Module.compile`` compiles in place: the module keeps its class, its parameters and its state_dict keys
  (``torch.compile(model)`` would return a wrapper whose keys gain an ``_orig_mod.`` prefix, breaking the merged
  checkpoint layout shared with GroupedAlexNet).
- DDP: compile the module first, then wrap it, ``DistributedDataParallel(model, device_ids=None)``. The compiled
  backward returns all gradients at once, so DDP's all-reduce overlaps less with backward than in eager mode.
- Switching train/eval or the batch size recompiles once (then shapes are marked dynamic); the first steps are
  slow (minutes for inductor on a 2-core CPU, tens of seconds on a GPU node), so time after a warm-up.
"""
from torch import nn

BACKENDS = ("inductor", "aot_eager", "eager")  # inductor generates kernels; the others only check tracing


def compile_for_speed(model, *, backend="inductor", mode=None):
    """Compile `model` (AlexNet or GroupedAlexNet) in place for training speed and return it.

    Call it after ``place(...)`` and ``.to(memory_format=...)`` and before wrapping in DDP. `mode` is
    torch.compile's (None, "max-autotune-no-cudagraphs", or "reduce-overhead" on one device)."""
    if isinstance(model, nn.parallel.DistributedDataParallel):
        raise TypeError("compile_for_speed: pass the model itself and wrap the result in DistributedDataParallel "
                        "afterwards (compile the module inside DDP, not DDP)")
    if backend not in BACKENDS:
        raise ValueError(f"compile_for_speed: backend must be one of {BACKENDS}, got {backend!r}")
    devices = set(getattr(model, "devices", ()))
    if mode == "reduce-overhead" and len(devices) > 1:
        raise ValueError(f"compile_for_speed: mode='reduce-overhead' (CUDA graphs) needs one device, the columns "
                         f"are on {sorted(map(str, devices))}: use mode=None")
    model.compile(backend=backend, mode=mode)
    return model
