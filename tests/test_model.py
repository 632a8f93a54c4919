"""The paper's AlexNet: shapes, parameter count, split == grouped, column isolation, init, switches, placement,
dropout on the outputs of fc6 and fc7."""
import copy

import pytest
import torch
from torch import nn

from model import AlexNet, FastLocalResponseNorm, GroupedAlexNet, GroupedLocalResponseNorm, kaiming_init_

PAPER_SHAPES = {"conv1": (96, 55, 55), "pool1": (96, 27, 27), "conv2": (256, 27, 27), "pool2": (256, 13, 13),
                "conv3": (384, 13, 13), "conv4": (384, 13, 13), "conv5": (256, 13, 13), "pool5": (256, 6, 6),
                "fc6": (4096,), "fc7": (4096,), "fc8": (1000,)}


def grouped_shapes(model, x):
    shapes = {}
    for name in ("conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7", "fc8"):
        getattr(model, name).register_forward_hook(lambda m, i, o, n=name: shapes.__setitem__(n, tuple(o.shape[1:])))
    pools = []
    model.pool.register_forward_hook(lambda m, i, o: pools.append(tuple(o.shape[1:])))
    model(x)
    shapes.update(zip(("pool1", "pool2", "pool5"), pools))
    return shapes


def pair(seed=0, **kw):
    torch.manual_seed(seed)
    split = AlexNet(**kw)
    grouped = GroupedAlexNet(**kw)
    grouped.load_state_dict(split.state_dict())
    return split, grouped


def meta(form, **kw):
    """A net on the meta device: its structure and shapes without allocating or initialising 61M weights (the
    forward needs real tensors: the LRN's autocast guard has no meta device)."""
    with torch.device("meta"):
        return form(**kw)


def test_parameter_count_and_every_shape():
    for net in (meta(AlexNet), meta(GroupedAlexNet)):
        assert sum(p.numel() for p in net.parameters()) == 60_965_224
    assert grouped_shapes(GroupedAlexNet().eval(), torch.randn(1, 3, 224, 224)) == PAPER_SHAPES


def test_state_dicts_have_one_layout():
    a, b = meta(AlexNet, num_classes=10).state_dict(), meta(GroupedAlexNet, num_classes=10).state_dict()
    assert {k: v.shape for k, v in a.items()} == {k: v.shape for k, v in b.items()}
    assert a["conv1.weight"].shape == (96, 3, 11, 11) and a["conv4.weight"].shape == (384, 192, 3, 3)
    grouped = GroupedAlexNet(num_classes=10)
    split2 = AlexNet(num_classes=10)
    split2.load_state_dict(grouped.state_dict())
    assert all(torch.equal(v, grouped.state_dict()[k]) for k, v in split2.state_dict().items())


@pytest.mark.parametrize("kw", [{}, {"activation": "tanh", "lrn": False, "overlapping_pool": False}])
def test_split_equals_grouped_forward_and_gradients(kw):
    # In float64: the two forms sum in different orders, and in fp32 that alone moved conv1's gradients by 2.5-3%
    # on an AMD EPYC (the paper's init puts them near cancellation); in float64 they agree to ~1e-15, so a real
    # wiring difference (a wrong half, a missed crossing) still fails by orders of magnitude.
    split, grouped = pair(num_classes=20, dropout=0.0, **kw)
    split, grouped = split.double(), grouped.double()
    split.place("cpu", "cpu")
    x = torch.randn(2, 3, 112, 112, dtype=torch.float64)  # the wiring is the same at any size: 4x fewer MACs
    ys, yg = split(x), grouped(x)
    assert torch.allclose(ys, yg, rtol=1e-10, atol=1e-12)
    ys.square().sum().backward()
    yg.square().sum().backward()
    gs = {k: v.grad for k, v in split.named_parameters()}
    for layer in ("conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7"):
        for p in ("weight", "bias"):
            merged = torch.cat([gs[f"columns.0.{layer}.{p}"], gs[f"columns.1.{layer}.{p}"]])
            ref = dict(grouped.named_parameters())[f"{layer}.{p}"].grad
            assert torch.allclose(merged, ref, rtol=1e-8, atol=1e-10 * ref.abs().max()), layer
    assert torch.allclose(gs["fc8.weight"], grouped.fc8.weight.grad, rtol=1e-8, atol=1e-12)


def test_columns_talk_only_at_conv3_and_the_fc_layers():
    torch.manual_seed(0)
    net = AlexNet(num_classes=10, dropout=0.0).eval()
    x = torch.randn(2, 3, 224, 224)
    outputs = {}

    def record(name):
        return lambda m, i, o: outputs.__setitem__(name, o.detach().clone())

    for c in (0, 1):
        for layer in ("conv2", "conv3", "conv4", "conv5"):
            getattr(net.columns[c], layer).register_forward_hook(record(f"{c}.{layer}"))
    net(x)
    clean = dict(outputs)
    net.columns[0].conv2.register_forward_pre_hook(lambda m, i: (i[0] + torch.randn_like(i[0]),))
    net(x)
    assert torch.equal(outputs["1.conv2"], clean["1.conv2"])  # column 1's conv2 never sees column 0
    assert not torch.equal(outputs["0.conv2"], clean["0.conv2"])
    for layer in ("conv3", "conv4", "conv5"):  # conv3 reads both columns, and column 1 carries that on
        assert not torch.equal(outputs[f"1.{layer}"], clean[f"1.{layer}"]), layer
    # and the other way round: perturbing column 1 after conv3 leaves column 0's conv4 and conv5 alone
    net2 = AlexNet(num_classes=10, dropout=0.0).eval()
    net2.load_state_dict(net.state_dict())
    for layer in ("conv4", "conv5"):
        getattr(net2.columns[0], layer).register_forward_hook(record(f"n0.{layer}"))
    net2(x)
    before = {k: v for k, v in outputs.items() if k.startswith("n0")}
    net2.columns[1].conv4.register_forward_pre_hook(lambda m, i: (i[0] * 3,))
    net2(x)
    assert all(torch.equal(outputs[k], before[k]) for k in before)


def test_paper_initialisation():
    net = GroupedAlexNet()
    for name in ("conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7", "fc8"):
        layer = getattr(net, name)
        assert abs(layer.weight.mean().item()) < 1e-3 and abs(layer.weight.std().item() - 0.01) < 1e-3, name
        expected = 1.0 if name in ("conv2", "conv4", "conv5", "fc6", "fc7") else 0.0
        assert torch.all(layer.bias == expected), name
    k = GroupedAlexNet(init="kaiming")
    assert torch.all(k.conv2.bias == 0)
    he = (2 / (96 * 11 * 11)) ** 0.5  # fan-out of the whole layer, in both forms
    assert k.conv1.weight.std().item() == pytest.approx(he, rel=0.05)
    assert AlexNet(init="kaiming").columns[1].conv1.weight.std().item() == pytest.approx(he, rel=0.05)
    with pytest.raises(ValueError, match="init"):
        GroupedAlexNet(init="xavier")
    kaiming_init_(k, "fan_in")  # benchmarks/init_check.py's comparison: the fan of one output's inputs, 3 x 11 x 11
    assert k.conv1.weight.std().item() == pytest.approx((2 / (3 * 11 * 11)) ** 0.5, rel=0.05)
    with pytest.raises(ValueError, match="fan_out"):
        kaiming_init_(k, "fan_both")


def test_each_switch_changes_only_its_part():
    base = meta(GroupedAlexNet)
    kinds = lambda net: [type(m).__name__ for m in net.modules()]  # noqa: E731
    tanh = meta(GroupedAlexNet, activation="tanh")
    assert "Tanh" in kinds(tanh) and "ReLU" not in kinds(tanh)
    assert isinstance(meta(GroupedAlexNet, lrn=False).lrn, nn.Identity) and isinstance(base.lrn, FastLocalResponseNorm)
    assert base.lrn.alpha == pytest.approx(1e-4 * 5) and base.lrn.k == 2 and base.lrn.beta == 0.75
    assert base.lrn.size == 5 and base.lrn.groups == 2 and meta(AlexNet).lrn.groups == 1  # per column in both forms
    assert not list(base.buffers()) and not list(meta(AlexNet).buffers())  # nothing for DDP to broadcast every step
    reference = meta(GroupedAlexNet, lrn_impl="torch").lrn
    assert isinstance(reference, GroupedLocalResponseNorm) and reference.groups == 2
    assert reference.norm.alpha == pytest.approx(1e-4 * 5) and reference.norm.k == 2 and reference.norm.size == 5
    with pytest.raises(ValueError, match="lrn_impl"):
        meta(AlexNet, lrn_impl="cuda")
    assert (base.pool.kernel_size, base.pool.stride) == (3, 2)
    no_overlap = GroupedAlexNet(overlapping_pool=False)
    assert (no_overlap.pool.kernel_size, no_overlap.pool.stride) == (2, 2)
    assert grouped_shapes(no_overlap.eval(), torch.randn(1, 3, 224, 224)) == PAPER_SHAPES
    for kw in ({"activation": "tanh"}, {"lrn": False}, {"overlapping_pool": False}, {"dropout": 0.0}):
        other = meta(GroupedAlexNet, **kw)
        assert {k: v.shape for k, v in other.state_dict().items()} == {k: v.shape for k, v in base.state_dict().items()}
    x = torch.randn(2, 3, 224, 224)
    nodrop = GroupedAlexNet(num_classes=10, dropout=0.0).train()
    assert torch.equal(nodrop(x), nodrop(x))
    drop = GroupedAlexNet(num_classes=10).train()
    assert not torch.equal(drop(x), drop(x))


def test_smaller_crops_run():
    assert GroupedAlexNet(num_classes=10)(torch.randn(2, 3, 112, 112)).shape == (2, 10)


def test_channels_last_matches():
    split, grouped = pair(num_classes=10, dropout=0.0)
    x = torch.randn(2, 3, 224, 224)
    ref = grouped(x)
    out = grouped.to(memory_format=torch.channels_last)(x.to(memory_format=torch.channels_last))
    assert torch.allclose(out, ref, rtol=1e-4, atol=1e-5)


def test_ddp_wraps_the_split_model_on_cpu(tmp_path):
    import torch.distributed as dist
    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/pg", rank=0, world_size=1)
    try:
        torch.manual_seed(0)
        net = AlexNet(num_classes=10, dropout=0.0, init="kaiming").place("cpu", "cpu")
        ref = copy.deepcopy(net)
        ddp = nn.parallel.DistributedDataParallel(net, device_ids=None)
        x = torch.randn(2, 3, 64, 64)
        ddp(x).square().sum().backward()
        ref(x).square().sum().backward()
        # one rank: DDP's all-reduced average is the gradient itself, in every parameter of both columns (the same
        # computation in the same order, so fp32 agrees to rounding)
        want = dict(ref.named_parameters())
        for k, p in net.named_parameters():
            assert torch.allclose(p.grad, want[k].grad, rtol=1e-6, atol=1e-7 * want[k].grad.abs().max()), k
    finally:
        dist.destroy_process_group()


@pytest.mark.gpu
def test_columns_on_cuda_and_cpu_match_grouped():
    split, grouped = pair(num_classes=10, dropout=0.0)
    x = torch.randn(2, 3, 224, 224)
    ref = grouped(x)
    split.place("cuda:0", "cpu", output_device="cuda:0")
    assert split.columns[0].conv1.weight.is_cuda and not split.columns[1].conv1.weight.is_cuda
    out = split(x.cuda())
    assert out.is_cuda and torch.allclose(out.cpu(), ref, rtol=1e-3, atol=1e-4)
    if torch.cuda.device_count() >= 2:
        split.place("cuda:0", "cuda:1")
        assert torch.allclose(split(x.cuda()).cpu(), ref, rtol=1e-3, atol=1e-4)


class ScriptedDropout(nn.Module):
    """Stands in for nn.Dropout: each call multiplies by the next given mask, so two forms can draw the same masks."""

    def __init__(self, masks):
        super().__init__()
        self.masks = list(masks)

    def forward(self, x):
        return x * self.masks.pop(0)


def inputs_of(module, store, key):
    return module.register_forward_pre_hook(lambda m, i: store.__setitem__(key, i[0].detach().clone()))


def test_dropout_spares_the_pool5_features_feeding_fc6():
    torch.manual_seed(0)
    x = torch.randn(4, 3, 112, 112)
    for net in (AlexNet(num_classes=10), GroupedAlexNet(num_classes=10)):
        fc6s = [net.fc6] if isinstance(net, GroupedAlexNet) else [c.fc6 for c in net.columns]
        seen = {}
        for i, fc6 in enumerate(fc6s):
            inputs_of(fc6, seen, f"train{i}")
        net.train()(x)
        train = dict(seen)
        net.eval()(x)
        for i in range(len(fc6s)):
            assert torch.equal(train[f"train{i}"], seen[f"train{i}"]), type(net).__name__


def test_both_columns_see_one_dropout_mask_per_neuron():
    torch.manual_seed(0)
    net = AlexNet(num_classes=10).train()
    seen = {}
    for c in (0, 1):
        inputs_of(net.columns[c].fc7, seen, f"fc7.{c}")
        net.columns[c].fc7.register_forward_hook(lambda m, i, o, c=c: seen.__setitem__(f"fc7out.{c}", o.detach()))
    inputs_of(net.fc8, seen, "fc8")
    net(torch.randn(8, 3, 112, 112))
    a, b = seen["fc7.0"], seen["fc7.1"]
    assert torch.equal(a == 0, b == 0)  # the same fc6 neurons are dropped for both columns
    # fc8 reads fc7's outputs after ReLU and dropout: each either dropped or kept (scaled by 1 / (1 - p) = 2)
    active = torch.cat([seen["fc7out.0"], seen["fc7out.1"]], dim=1).relu()
    kept = seen["fc8"] != 0
    assert torch.allclose(seen["fc8"][kept], 2 * active[kept])
    assert 0.4 < 1 - kept[active > 0].float().mean() < 0.6  # about half of the active neurons dropped (p = 0.5)


def test_split_equals_grouped_with_dropout_when_both_draw_the_same_masks():
    split, grouped = pair(num_classes=10)
    batch, half = 3, 2048
    torch.manual_seed(1)
    m6, m7 = [torch.bernoulli(torch.full((batch, 2 * half), 0.5)) * 2 for _ in range(2)]  # one mask per neuron
    grouped.drop = ScriptedDropout([m6, m7])
    # the split form drops column 0's then column 1's outputs of fc6, then of fc7: the halves of the same masks
    split.drop = ScriptedDropout([m6[:, :half], m6[:, half:], m7[:, :half], m7[:, half:]])
    x = torch.randn(batch, 3, 112, 112)
    ys, yg = split.train()(x), grouped.train()(x)
    assert split.drop.masks == [] and grouped.drop.masks == []  # dropout ran exactly where expected, no more
    assert torch.allclose(ys, yg, rtol=1e-5, atol=1e-6)
    ys.square().sum().backward()
    yg.square().sum().backward()
    merged = torch.cat([split.columns[0].fc6.weight.grad, split.columns[1].fc6.weight.grad])
    ref = grouped.fc6.weight.grad
    assert torch.allclose(merged, ref, rtol=1e-4, atol=1e-7 + 1e-5 * ref.abs().max())
    assert (ref.abs().sum(1) == 0).any()  # the dropped fc6 neurons got no gradient in this batch of 3 (1/8 each)
