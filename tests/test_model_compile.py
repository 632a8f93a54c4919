"""compile_for_speed: one graph per forward, the same numbers and state_dict keys, and DDP around the compiled module.

Inductor on this 2-core CPU takes minutes for the whole net, so these tests compile with "aot_eager" (dynamo's
tracing and AOTAutograd's forward/backward split, without generated kernels); tests/test_lrn.py runs inductor on
the LRN, and gpu_check/check.py on the whole net on a GPU."""
import pytest
import torch
from torch import nn

from model import AlexNet, GroupedAlexNet, compile_for_speed


def pair(form, **kw):
    torch.manual_seed(0)
    eager = form(num_classes=10, dropout=0.0, init="kaiming", **kw)
    compiled = form(num_classes=10, dropout=0.0, init="kaiming", **kw)
    compiled.load_state_dict(eager.state_dict())
    return eager, compiled


def grads(model):
    return {k: p.grad for k, p in model.named_parameters()}


@pytest.mark.parametrize("form", [AlexNet, GroupedAlexNet])
def test_whole_forward_is_one_graph(form):
    model = form(num_classes=10)
    if form is AlexNet:
        model.place("cpu", "cpu")
    explained = torch._dynamo.explain(model)(torch.randn(2, 3, 64, 64))
    assert (explained.graph_count, explained.graph_break_count) == (1, 0), explained.break_reasons


@pytest.mark.parametrize("form", [AlexNet, GroupedAlexNet])
def test_compiled_model_matches_eager_and_keeps_its_state_dict(form):
    eager, compiled = pair(form)
    keys = list(compiled.state_dict())
    assert compile_for_speed(compiled, backend="aot_eager") is compiled
    assert list(compiled.state_dict()) == keys and type(compiled) is form  # checkpoints still load across forms
    x = torch.randn(2, 3, 64, 64) * 20
    y, y_ref = compiled(x), eager(x)
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-6)
    y.square().sum().backward()
    y_ref.square().sum().backward()
    ref = grads(eager)
    for k, g in grads(compiled).items():
        torch.testing.assert_close(g, ref[k], rtol=1e-4, atol=1e-5 * ref[k].abs().max().item())
    with torch.no_grad():  # eval mode (no dropout) recompiles once and still matches
        torch.testing.assert_close(compiled.eval()(x), eager.eval()(x), rtol=1e-5, atol=1e-6)


def test_ddp_wraps_the_compiled_split_model(tmp_path):
    import torch.distributed as dist
    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/pg", rank=0, world_size=1)
    try:
        eager, compiled = pair(AlexNet)
        compiled.place("cpu", "cpu")
        ddp = nn.parallel.DistributedDataParallel(compile_for_speed(compiled, backend="aot_eager"), device_ids=None)
        x = torch.randn(2, 3, 64, 64)
        ddp(x).sum().backward()
        eager(x).sum().backward()
        ref = grads(eager)
        for k, g in grads(compiled).items():
            torch.testing.assert_close(g, ref[k], rtol=1e-4, atol=1e-5 * ref[k].abs().max().item())
        with pytest.raises(TypeError, match="inside DDP"):
            compile_for_speed(ddp)
    finally:
        dist.destroy_process_group()


def test_bad_options_are_named():
    with pytest.raises(ValueError, match="backend"):
        compile_for_speed(GroupedAlexNet(num_classes=10), backend="tensorrt")
    two_devices = AlexNet(num_classes=10).place("cpu", "meta")  # any two devices; meta holds no memory
    with pytest.raises(ValueError, match="reduce-overhead"):
        compile_for_speed(two_devices, mode="reduce-overhead")
