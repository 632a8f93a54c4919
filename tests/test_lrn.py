"""The fast LRN has nn.LocalResponseNorm's math: forward and backward in fp32 to 1e-5, both layouts, per-column
groups, both model forms, bf16 autocast, and the slice-sum form torch.compile uses."""
import pytest
import torch
from torch import nn

from model import AlexNet, FastLocalResponseNorm, GroupedAlexNet, GroupedLocalResponseNorm
from model.alexnet import LRN_ALPHA, LRN_BETA, LRN_K, LRN_SIZE
from model.lrn import _shifted_lrn, lrn_shifted, make_lrn

PAPER = dict(size=LRN_SIZE, alpha=LRN_ALPHA * LRN_SIZE, beta=LRN_BETA, k=LRN_K)  # torch's alpha convention


def activations(shape, seed=0, dtype=torch.float32):
    """ReLU outputs at scales where the paper's LRN matters (k + 1e-4 * sum x^2 only departs from k = 2 once the
    window's squares reach ~1e4) and where it does not, mixed over the batch."""
    g = torch.Generator().manual_seed(seed)
    scale = torch.tensor([1.0, 30.0, 100.0, 300.0])[torch.arange(shape[0]) % 4].view(-1, 1, 1, 1)
    return (torch.randn(shape, generator=g) * scale).relu().to(dtype)


def value_and_grad(module, x, grad):
    x = x.detach().clone().requires_grad_(True)
    y = module(x)
    (gx,) = torch.autograd.grad(y, x, grad)
    return y.detach(), gx


def close(a, b):  # 1e-5 relative to the tensor's scale
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5 * b.abs().max().item())


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("groups", [1, 2])
@pytest.mark.parametrize("shape", [(8, 48, 27, 27), (4, 96, 13, 11)])
def test_matches_torch_forward_and_backward_fp32(shape, groups, channels_last):
    x = activations(shape)
    grad = torch.randn(shape, generator=torch.Generator().manual_seed(1))
    if channels_last:
        x, grad = (t.contiguous(memory_format=torch.channels_last) for t in (x, grad))
    ref_y, ref_g = value_and_grad(GroupedLocalResponseNorm(groups=groups, **PAPER), x, grad)
    y, g = value_and_grad(FastLocalResponseNorm(groups=groups, **PAPER), x, grad)
    assert not torch.allclose(ref_y, x / LRN_K ** LRN_BETA, rtol=1e-3)  # the normalisation term matters here
    close(y, ref_y)
    close(g, ref_g)
    assert y.is_contiguous(memory_format=torch.channels_last) == channels_last  # the layout is kept
    ys, gs = value_and_grad(lambda t: lrn_shifted(t, groups=groups, **PAPER), x, grad)  # the form compile uses
    close(ys, ref_y)
    close(gs, ref_g)


@pytest.mark.parametrize("size", [5, 4, 1])
def test_other_window_sizes_and_a_gradient_in_another_layout(size):
    kw = dict(size=size, alpha=0.3, beta=0.75, k=2.0)
    x = activations((3, 10, 5, 6))
    grad = torch.randn(3, 10, 5, 6).contiguous(memory_format=torch.channels_last)  # x is NCHW, its grad is not
    ref_y, ref_g = value_and_grad(nn.LocalResponseNorm(**kw), x, grad)
    y, g = value_and_grad(FastLocalResponseNorm(**kw), x, grad)
    close(y, ref_y)
    close(g, ref_g)


@pytest.mark.parametrize("channels_last", [False, True])
def test_gradcheck_float64(channels_last):
    # alpha large enough that the cross-channel term of the gradient is not negligible
    x = torch.rand(2, 8, 3, 4, dtype=torch.float64) * 3
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_(True)
    assert torch.autograd.gradcheck(FastLocalResponseNorm(5, alpha=2.0, beta=0.75, k=2.0, groups=2), (x,))
    y = FastLocalResponseNorm(5, alpha=2.0, beta=0.75, k=2.0)(x)
    (g,) = torch.autograd.grad(y.sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="once_differentiable|does not require grad"):  # refused, not wrong
        g.sum().backward()


@pytest.mark.parametrize("form", [AlexNet, GroupedAlexNet])
@pytest.mark.parametrize("channels_last", [False, True])
def test_both_model_forms_match_the_torch_lrn(form, channels_last):
    torch.manual_seed(0)
    fast = form(num_classes=10, dropout=0.0, init="kaiming")
    ref = form(num_classes=10, dropout=0.0, init="kaiming", lrn_impl="torch")
    ref.load_state_dict(fast.state_dict())
    x = torch.randn(2, 3, 64, 64) * 40  # large enough that LRN departs from x / k^beta
    if channels_last:
        fast, ref = (m.to(memory_format=torch.channels_last) for m in (fast, ref))
        x = x.contiguous(memory_format=torch.channels_last)
    y, y_ref = fast(x), ref(x)
    close(y, y_ref)
    y.square().sum().backward()
    y_ref.square().sum().backward()
    ref_grads = dict(ref.named_parameters())
    for name, p in fast.named_parameters():
        close(p.grad, ref_grads[name].grad)


def test_bf16_autocast_sums_in_fp32_and_returns_bf16():
    x = activations((4, 48, 13, 13))
    ref = nn.LocalResponseNorm(**PAPER)(x)
    xb = x.to(torch.bfloat16).requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # the band product would autocast to bf16 if allowed to
        y = FastLocalResponseNorm(**PAPER)(xb)
    assert y.dtype == torch.bfloat16
    torch.testing.assert_close(y.float(), ref, rtol=2e-2, atol=2e-2 * ref.abs().max().item())
    y.float().sum().backward()
    assert xb.grad.dtype == torch.bfloat16 and torch.isfinite(xb.grad.float()).all()


def test_training_after_a_first_call_in_inference_mode():
    """The band matrix is cached on first use; if that use was an evaluation under torch.inference_mode (Figure 4
    does that), a later training step must still be able to save it for backward."""
    shape = (2, 36, 7, 5)  # a channel count no other test uses, so the cache is cold here
    lrn = FastLocalResponseNorm(**PAPER)
    with torch.inference_mode():
        lrn(activations(shape))
    y, gx = value_and_grad(lrn, activations(shape), torch.ones(shape))
    ref_y, ref_gx = value_and_grad(nn.LocalResponseNorm(**PAPER), activations(shape), torch.ones(shape))
    close(y, ref_y)
    close(gx, ref_gx)


def test_bad_input_and_options_are_named():
    with pytest.raises(ValueError, match="NCHW"):
        FastLocalResponseNorm(5)(torch.randn(2, 4, 8))
    with pytest.raises(ValueError, match="groups=2"):
        FastLocalResponseNorm(5, groups=2)(torch.randn(1, 5, 2, 2))
    with pytest.raises(ValueError, match="lrn_impl"):
        make_lrn("triton", **PAPER)


@pytest.mark.slow
def test_inductor_compiles_the_fast_lrn_to_the_same_numbers():
    """Inductor's CPU backend (needs a C++ compiler; ~40 s on the 2-core box) compiles the slice-sum form."""
    x = activations((4, 16, 9, 9))
    grad = torch.randn(4, 16, 9, 9)
    ref_y, ref_g = value_and_grad(GroupedLocalResponseNorm(groups=2, **PAPER), x, grad)
    y, g = value_and_grad(torch.compile(FastLocalResponseNorm(groups=2, **PAPER)), x, grad)
    close(y, ref_y)
    close(g, ref_g)


@pytest.mark.parametrize("groups", [1, 2])
@pytest.mark.parametrize("size", [5, 4])
def test_shifted_form_closed_backward_equals_torch_in_float64(size, groups):
    """The form compiled models run (_ShiftedLRN: shifted-slice sums, the closed-form backward) against
    nn.LocalResponseNorm per group, in float64, where only rounding at 1e-12 may differ; gradcheck too. Size 4 makes
    the window asymmetric, so a backward that used the forward's window instead of its adjoint fails here."""
    kw = dict(size=size, alpha=2.0, beta=0.75, k=2.0)
    x = torch.rand(2, 8, 3, 4, dtype=torch.float64) * 3
    grad = torch.randn(2, 8, 3, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    ref_y, ref_g = value_and_grad(GroupedLocalResponseNorm(groups=groups, **kw), x, grad)
    y, g = value_and_grad(lambda t: _shifted_lrn(t, kw["size"], kw["alpha"], kw["beta"], kw["k"], groups), x, grad)
    torch.testing.assert_close(y, ref_y, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(g, ref_g, rtol=1e-12, atol=1e-12)
    xg = x.clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda t: _shifted_lrn(t, size, 2.0, 0.75, 2.0, groups), (xg,))


def test_compiled_model_uses_the_closed_form_backward_and_matches(monkeypatch):
    """Under torch.compile (aot_eager: the graph inductor would get, without its C++ compile) the LRN is the shifted
    Function with its closed-form backward (two window sums traced there: d again and the adjoint), not autograd's
    derivative of the slice form (a slice_backward per shift)."""
    import model.lrn as lrn
    sums = []
    original = lrn._shifted_window_sum
    monkeypatch.setattr(lrn, "_shifted_window_sum", lambda *a, **kw: sums.append(kw) or original(*a, **kw))
    x, grad = activations((4, 16, 9, 9)), torch.randn(4, 16, 9, 9)
    ref_y, ref_g = value_and_grad(GroupedLocalResponseNorm(groups=2, **PAPER), x, grad)
    y, g = value_and_grad(torch.compile(FastLocalResponseNorm(groups=2, **PAPER), backend="aot_eager"), x, grad)
    close(y, ref_y)
    close(g, ref_g)
    assert {"transpose": True} in sums and len(sums) >= 3


def test_onnx_export_computes_the_same_lrn(tmp_path):
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    module = FastLocalResponseNorm(groups=2, **PAPER).eval()
    x = activations((2, 16, 7, 7))
    path = tmp_path / "lrn.onnx"
    torch.onnx.export(module, (x,), path, dynamo=True, verbose=False)
    ops = {n.op_type for n in onnx.load(path).graph.node}
    assert "MatMul" not in ops and "Pow" in ops  # the plain slice form, not the eager band product
    (y,) = ort.InferenceSession(str(path)).run(None, {ort.InferenceSession(str(path)).get_inputs()[0].name: x.numpy()})
    close(torch.from_numpy(y), GroupedLocalResponseNorm(groups=2, **PAPER)(x))
