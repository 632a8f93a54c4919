"""Local response normalisation across channels, faster than ``nn.LocalResponseNorm`` and with the same math.

    y_c = x_c / (k + alpha / n * sum_{j in window(c)} x_j^2) ^ beta,   window(c) = [c - n//2, c + (n-1)//2]

(alpha in torch's convention, divided by the window size n; zero padding at the channel edges). With ``groups=g``
the channels are cut into g blocks normalised independently, as if each block were its own tensor: the paper's
two GPUs each normalised over their own kernel maps, so the single-device form uses groups=2 instead of
chunk + LRN + cat.

Why it is faster: torch's version is a chain of mul / pad / avg_pool3d / mul / add / pow / div kernels, each one
more pass over the activation, and autograd differentiates every link of it. Here, in eager mode:
- the channel-window sum is one matrix product with a constant banded (C x C) matrix that already holds alpha / n
  (on CPU much faster than torch's avg_pool3d over a padded copy: docs/BENCHMARKS.md, LRN); the banded matrix is
  block-diagonal for groups, so the block edges are zero padding for free;
- a hand-written backward reuses the saved denominator d and d^-beta instead of re-deriving the chain:
      dL/dx_i = g_i d_i^-beta - 2 beta x_i sum_{c: i in window(c)} (alpha/n) g_c x_c d_c^(-beta-1)
  which is one more window sum (the transposed band) and a few pointwise ops.
Under ``torch.compile`` (a compiled model) the same closed-form backward is used, with both window sums written as
sums of shifted slices (_ShiftedLRN), which inductor fuses with the pointwise ops into one kernel each way. Letting
autograd derive the backward of the slice form instead (as before) made inductor emit a slice_backward kernel per
shift: on the 2026-11-30 H200 those kernels were the largest of the compiled step (docs/BENCHMARKS.md).
``lrn_impl="fused"`` runs that compiled LRN kernel inside an eager model (the GPU check compares it with the others).

ONNX: while exporting, the forward is the slice form in plain torch ops (pad, slice, add, mul, pow): the exported
graph computes the same arithmetic. (torch's nn.LocalResponseNorm does not export as ONNX's LRN operator either: it
exports as its chain of Pad / AveragePool / Pow / Div.)

Numerics: the window sum and the power are computed in float32 (float64 for float64 input) whatever the input
dtype, and the result is returned in the input's dtype. Under bf16 autocast torch's version sums the squares in
bf16 and returns float32 (pow autocasts to float32); this one sums in float32 and returns bf16, which is what the
next layer (max pooling, then a bf16 convolution) would round it to anyway.
"""
import functools

import torch
from torch import nn
from torch.autograd.function import once_differentiable


def _compute_dtype(dtype):
    return torch.promote_types(dtype, torch.float32)


@functools.lru_cache(maxsize=64)
def _band(channels, groups, size, scale, device, dtype):
    """(C x C) matrix W with W[j, c] = scale where channel j is in channel c's window (and in c's group), else 0.

    Built once per (shape, device, dtype): a constant, not a buffer, so it is not in the state_dict and DDP
    does not broadcast it every forward. Made outside inference mode even when the first call is inside it (an
    evaluation under torch.inference_mode): a cached inference tensor could never be saved for a later backward."""
    with torch.inference_mode(False):
        j = torch.arange(channels, device=device)[:, None]
        c = torch.arange(channels, device=device)[None, :]
        block = channels // groups
        inside = (j >= c - size // 2) & (j <= c + (size - 1) // 2) & (j // block == c // block)
        return inside.to(dtype) * scale


def _window_sum(t, band, channels_last):
    """sum_j t_j W[j, c] over channels as one matrix product, keeping t's memory layout."""
    n, c, h, w = t.shape
    if channels_last:  # memory is (N, H, W, C): a (NHW x C) @ (C x C) product, no copies
        return (t.permute(0, 2, 3, 1).reshape(-1, c) @ band).view(n, h, w, c).permute(0, 3, 1, 2)
    return (band.t() @ t.view(n, c, h * w)).view(n, c, h, w)


class _BandLRN(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, band, beta, k, channels_last):
        with torch.autocast(x.device.type, enabled=False):  # matmul would otherwise autocast to bf16
            x32 = x.to(band.dtype)
            d = _window_sum(x32 * x32, band, channels_last).add_(k)
            p = d.pow(-beta)
            y = (x32 * p).to(x.dtype)
        ctx.save_for_backward(x, band, d, p)
        ctx.beta, ctx.channels_last = beta, channels_last
        return y

    @staticmethod
    @once_differentiable  # d and p were saved without a graph: a second derivative would be silently wrong
    def backward(ctx, grad):
        x, band, d, p = ctx.saved_tensors
        fmt = torch.channels_last if ctx.channels_last else torch.contiguous_format
        with torch.autocast(x.device.type, enabled=False):
            g = grad.to(band.dtype).contiguous(memory_format=fmt)  # the incoming grad may have another layout
            x32 = x.to(band.dtype)
            gp = g * p
            t = (gp * x32).div_(d)  # g_c x_c d_c^(-beta-1)
            grad_x = torch.addcmul(gp, x32, _window_sum(t, band.t(), ctx.channels_last), value=-2.0 * ctx.beta)
        return grad_x.to(x.dtype), None, None, None, None


def _shifted_window_sum(t, size, groups, transpose=False):
    """sum of t over each channel's window (zero-padded at the edges of each of `groups` blocks), as shifted slices.
    transpose: the adjoint window, sum over the channels c whose window holds i (what the backward needs)."""
    n, c, h, w = t.shape
    block = c // groups
    before, after = size // 2, (size - 1) // 2
    if transpose:
        before, after = after, before
    padded = nn.functional.pad(t.view(n, groups, block, h, w), (0, 0, 0, 0, before, after))
    return sum(padded[:, :, i:i + block] for i in range(size)).view(n, c, h, w)


def lrn_shifted(x, size, alpha, beta, k, groups=1):
    """The LRN as a sum of shifted slices of the squares in plain torch ops: what ONNX export records."""
    x32 = x.to(_compute_dtype(x.dtype))
    d = _shifted_window_sum(x32 * x32, size, groups) * (alpha / size) + k
    return (x32 * d.pow(-beta)).to(x.dtype)


class _ShiftedLRN(torch.autograd.Function):
    """The LRN with its closed-form backward, both window sums as shifted slices: inductor fuses each direction into
    pointwise kernels. Saves only x (d is recomputed inside the fused backward: one read instead of two)."""

    @staticmethod
    def forward(ctx, x, size, alpha, beta, k, groups):
        ctx.save_for_backward(x)
        ctx.args = (size, alpha, beta, k, groups)
        return lrn_shifted(x, size, alpha, beta, k, groups)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        size, alpha, beta, k, groups = ctx.args
        x32, g = x.to(_compute_dtype(x.dtype)), grad.to(_compute_dtype(x.dtype))
        d = _shifted_window_sum(x32 * x32, size, groups) * (alpha / size) + k
        gp = g * d.pow(-beta)
        back = _shifted_window_sum(gp * x32 / d, size, groups, transpose=True)
        return (gp - (2.0 * beta * alpha / size) * x32 * back).to(x.dtype), None, None, None, None, None


def _shifted_lrn(x, size, alpha, beta, k, groups):
    return _ShiftedLRN.apply(x, size, alpha, beta, k, groups)


@functools.cache
def _compiled_shifted_lrn():
    """The shifted LRN compiled on its own (its forward and backward kernels), for an eager model: compiled on
    first use, once per input shape until shapes are marked dynamic."""
    return torch.compile(_shifted_lrn, fullgraph=True)


class FastLocalResponseNorm(nn.Module):
    """Drop-in for ``nn.LocalResponseNorm(size, alpha, beta, k)`` on NCHW input (same alpha convention), plus
    ``groups``. Holds no state: one instance serves columns on different devices. Eager: the banded matrix product;
    compiled: the fused shifted form (both with the closed-form backward)."""

    fused = False

    def __init__(self, size, alpha=1e-4, beta=0.75, k=1.0, groups=1):
        super().__init__()
        if size < 1 or groups < 1:
            raise ValueError(f"LRN size and groups must be >= 1, got size={size}, groups={groups}")
        self.size, self.alpha, self.beta, self.k, self.groups = size, alpha, beta, k, groups

    def forward(self, x):
        if x.dim() != 4 or x.shape[1] % self.groups:
            raise ValueError(f"FastLocalResponseNorm needs NCHW input with channels divisible by groups="
                             f"{self.groups}, got shape {tuple(x.shape)}")
        args = (self.size, self.alpha, self.beta, self.k, self.groups)
        if torch.onnx.is_in_onnx_export() or torch.compiler.is_exporting():
            return lrn_shifted(x, *args)
        if torch.compiler.is_compiling():
            return _shifted_lrn(x, *args)
        if self.fused:
            return _compiled_shifted_lrn()(x, *args)
        channels_last = not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)
        if not channels_last:
            x = x.contiguous()
        band = _band(x.shape[1], self.groups, self.size, self.alpha / self.size, x.device, _compute_dtype(x.dtype))
        return _BandLRN.apply(x, band, self.beta, self.k, channels_last)

    def extra_repr(self):
        return f"{self.size}, alpha={self.alpha}, beta={self.beta}, k={self.k}, groups={self.groups}"


class GroupedLocalResponseNorm(nn.Module):
    """torch's LocalResponseNorm applied to each of `groups` channel blocks separately (chunk, normalise, cat):
    the reference the fast version is compared with."""

    def __init__(self, size, alpha=1e-4, beta=0.75, k=1.0, groups=1):
        super().__init__()
        self.groups = groups
        self.norm = nn.LocalResponseNorm(size, alpha, beta, k)

    def forward(self, x):
        if self.groups == 1:
            return self.norm(x)
        return torch.cat([self.norm(part) for part in x.chunk(self.groups, dim=1)], dim=1)


class FusedLocalResponseNorm(FastLocalResponseNorm):
    """FastLocalResponseNorm whose eager forward runs the compiled shifted form (fused kernels in an eager model;
    the first call per shape compiles)."""

    fused = True


LRN_IMPLS = {"fast": FastLocalResponseNorm, "fused": FusedLocalResponseNorm, "torch": GroupedLocalResponseNorm}


def make_lrn(impl, size, alpha, beta, k, groups=1):
    """The LRN module named by `impl` ("fast", "fused" or "torch"), alpha in torch's convention (divided by size)."""
    if impl not in LRN_IMPLS:
        raise ValueError(f"lrn_impl must be one of {sorted(LRN_IMPLS)}, got {impl!r}")
    return LRN_IMPLS[impl](size, alpha, beta, k, groups)
