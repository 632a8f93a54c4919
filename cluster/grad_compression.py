"""--grad-compression: what DDP sends between replicas. AlexNet all-reduces all of its 61M gradients every step
(244 MB in fp32, 58.6M of them in fc6-fc8), so the bytes on the wire are what limits it across nodes
(docs/SCALING.md). bf16 and fp16 halve them with DDP's built-in comm hooks: each bucket is cast, divided by the
world size (fp16 would overflow otherwise), summed over the replicas in that dtype, and cast back to fp32 before
the optimizer sees it. The model, the optimizer and the forward/backward stay in their own precision.

bf16 keeps fp32's exponent range with 8 significant bits; fp16 has 11, but loses them below 6e-5 and rounds
gradients under ~3e-8 (after the division by the world size) to zero.
Ray-free: the workers (cluster/worker.py) and the benchmarks use it.
"""
import torch
import torch.distributed as dist
from torch.distributed.algorithms.ddp_comm_hooks import default_hooks

from cluster.recipe import GRAD_COMPRESSIONS

WIRE_DTYPES = {"none": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
HOOKS = {"bf16": default_hooks.bf16_compress_hook, "fp16": default_hooks.fp16_compress_hook}


class CompressionError(RuntimeError):
    """The backend cannot all-reduce the chosen dtype; the message says what to do."""


def wire_dtype(kind):
    """The dtype gradients travel in (float32 for "none")."""
    if kind not in GRAD_COMPRESSIONS:
        raise ValueError(f"--grad-compression must be one of {', '.join(GRAD_COMPRESSIONS)}, got {kind!r}")
    return WIRE_DTYPES[kind]


def check_backend(kind, device):
    """Fail now, with the flag's name, if this process group cannot sum `kind` tensors on `device` (the devices
    DDP's buckets live on): otherwise the first backward would fail deep inside DDP. One tiny collective, so every
    rank must call it (register() does)."""
    dtype = wire_dtype(kind)
    probe = torch.ones(1, dtype=dtype, device=device)
    try:
        dist.all_reduce(probe)
    except RuntimeError as e:
        raise CompressionError(
            f"--grad-compression {kind}: the {dist.get_backend()} backend cannot all-reduce {dtype} tensors on "
            f"{device} ({str(e).splitlines()[0]}). Use --grad-compression none, or fp16 (bf16 over NCCL needs "
            "NCCL >= 2.10).") from None
    if probe.item() != dist.get_world_size():
        raise CompressionError(f"--grad-compression {kind}: a {dtype} all-reduce over {dist.get_backend()} summed "
                               f"{dist.get_world_size()} ones to {probe.item()}. Use --grad-compression none.")


def _bf16_hook_for_gloo(process_group, bucket):
    """DDP's bf16_compress_hook under another name. DDP refuses a hook *named* bf16_compress_hook unless torch was
    built with CUDA and NCCL >= 2.10, whatever the backend (an NCCL rule); gloo sums bf16 on CPU, which
    check_backend has just verified, so over gloo the same hook runs under this name."""
    return default_hooks.bf16_compress_hook(process_group, bucket)


def comm_hook(kind):
    """The DDP comm hook that all-reduces in `kind`'s dtype, or None for "none" (DDP's own fp32 all-reduce)."""
    if wire_dtype(kind) is torch.float32:
        return None
    return _bf16_hook_for_gloo if kind == "bf16" and dist.get_backend() == "gloo" else HOOKS[kind]


def register(ddp_model, kind, devices=("cpu",), wrap=None):
    """Make `ddp_model` (a DistributedDataParallel) all-reduce its gradients in `kind`'s dtype; "none" leaves DDP's
    own fp32 all-reduce. `devices`: where the replica's parameters live (each device's buckets are reduced there).
    `wrap`: hook -> hook, for a benchmark that counts what goes through (with "none" it wraps DDP's allreduce_hook,
    which computes what DDP does without a hook)."""
    hook = comm_hook(kind)
    if hook is not None:
        for device in dict.fromkeys(str(d) for d in devices):
            check_backend(kind, torch.device(device))
    if wrap is not None:
        hook = wrap(hook or default_hooks.allreduce_hook)
    if hook is None:
        return
    try:
        ddp_model.register_comm_hook(None, hook)  # state None: the default (world) process group
    except TypeError as e:  # DDP's own check, e.g. bf16 over NCCL older than 2.10
        raise CompressionError(f"--grad-compression {kind}: DDP refuses it here ({e}). Use --grad-compression fp16 "
                               "or none.") from None
