"""AlexNet as in Krizhevsky, Sutskever & Hinton (2012), section 3: two columns of half the kernels each.

Two forms of one network, sharing one state_dict layout (the merged, single-device layout):

- ``AlexNet``: the paper's split. Each column is its own set of modules; ``place(dev0, dev1)`` puts column 0 on
  one device and column 1 on another. Activations cross columns only where the paper's two GPUs talked: the
  input of conv3, fc6, fc7 and fc8.
- ``GroupedAlexNet``: the same net on one device, with grouped convolutions (groups=2) for the layers that stay
  inside a column. It is the fast path on one GPU and the reference the split is tested against.

Reconciling 224 with the paper's 55x55 conv1 output: (224 - 11) / 4 + 1 is not a whole number, so the paper's
numbers only work for a 227 input or with padding. We pad conv1 by 2: floor((224 + 4 - 11) / 4) + 1 = 55, and every
later shape matches the paper (27x27x256, 13x13x384, 13x13x384, 13x13x256, 6x6x256 = 9216).

Three details that are easy to get wrong:
- The paper's LRN is b = a / (k + alpha * sum a^2)^beta; torch's LocalResponseNorm divides alpha by the window
  size n, so we pass alpha * n to get the paper's alpha = 1e-4. ``lrn_impl="fast"`` (the default) is
  model/lrn.py's FastLocalResponseNorm, the same math in fewer passes; ``"fused"`` runs its compiled kernel in an
  eager model; ``"torch"`` is nn.LocalResponseNorm.
- Each GPU normalised over its own 48 kernel maps only, so the grouped form applies LRN per column as well.
- Dropout (section 4.2) zeroes the *outputs* of fc6 and fc7, one mask per neuron: in the split form each column
  drops its own fc6/fc7 outputs before they are exchanged, so both columns see the same neurons dropped. The
  pool5 features feeding fc6 are not dropped.

An adaptive average pool to 6x6 sits before fc6: at 224 it is the identity (pool5 is already 6x6), and it lets the
same weights run at smaller crops (the CPU demo trains at 112).
"""
import torch
import torch.nn.functional as F
from torch import nn

from model.lrn import make_lrn

# (name, in_channels of one column's input, out_channels per column, kernel, stride, padding, reads both columns)
CONV_LAYERS = [
    ("conv1", 3, 48, 11, 4, 2, False),  # both columns see the image, not each other
    ("conv2", 48, 128, 5, 1, 2, False),
    ("conv3", 256, 192, 3, 1, 1, True),
    ("conv4", 192, 192, 3, 1, 1, False),
    ("conv5", 192, 128, 3, 1, 1, False),
]
FC_WIDTH = 2048  # per column
POOL5 = 6  # pool5 is 6x6 at a 224 input
ONES_BIAS = {"conv2", "conv4", "conv5", "fc6", "fc7"}  # section 5: biases 1 here, 0 elsewhere
LRN_SIZE, LRN_ALPHA, LRN_BETA, LRN_K = 5, 1e-4, 0.75, 2.0
SPLIT_LAYERS = ["conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7"]  # layers with one half per column


def _activation(name):
    if name == "relu":
        return nn.ReLU(inplace=True)
    if name == "tanh":
        return nn.Tanh()
    raise ValueError(f"activation must be 'relu' or 'tanh', got {name!r}")


def _pool(overlapping):
    # Overlapping pooling (z=3, s=2) is what the paper uses; z=2, s=2 is the non-overlapping scheme it compares.
    return nn.MaxPool2d(3, 2) if overlapping else nn.MaxPool2d(2, 2)


def _lrn(enabled, impl, groups):
    module = make_lrn(impl, LRN_SIZE, alpha=LRN_ALPHA * LRN_SIZE, beta=LRN_BETA, k=LRN_K, groups=groups)
    return module if enabled else nn.Identity()


def paper_init_(module):
    """Section 5: weights ~ N(0, 0.01); biases 1 in conv2, conv4, conv5, fc6, fc7, 0 elsewhere."""
    for name, m in module.named_modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.normal_(m.weight, 0.0, 0.01)
            nn.init.constant_(m.bias, 1.0 if name.split(".")[-1] in ONES_BIAS else 0.0)


def kaiming_init_(module, mode="fan_out"):
    """He et al. (2015) normal init of the convolutions for their fan-out (or fan-in), N(0, 0.01) for the fully
    connected layers (torchvision's recipe), biases 0. The fan is the whole layer's (both columns), so the split and
    grouped forms draw from one distribution.

    Fan-out, for the paper's inputs (0-255 minus the mean, std ~60): conv1 has 32x more outputs than inputs per
    pixel, so fan-out weights are ~6x smaller than fan-in ones and the signal falls from ~10 after conv1 to ~1 by
    conv5, the logits depending on the image from the first step. Fan-in would carry the inputs' scale to the logits
    (a first loss of ~14 on 10 classes); inputs divided by the std with fan-out leave logits that hardly depend on
    the image (a plateau at chance). benchmarks/init_check.py measures all of these (docs/BENCHMARKS.md)."""
    if mode not in ("fan_out", "fan_in"):
        raise ValueError(f"mode must be 'fan_out' or 'fan_in', got {mode!r}")
    for name, m in module.named_modules():
        if isinstance(m, nn.Conv2d):
            halves = 2 if name.startswith("columns.") else 1
            fan = m.weight[0].numel() if mode == "fan_in" else halves * m.weight.shape[0] * m.weight[0, 0].numel()
            nn.init.normal_(m.weight, 0.0, (2.0 / fan) ** 0.5)
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0.0, 0.01)
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.zeros_(m.bias)


INITS = {"paper": paper_init_, "kaiming": kaiming_init_}  # the presets', the ablation's and the CLI's choices


def _init(module, init):
    if init not in INITS:
        raise ValueError(f"init must be one of {sorted(INITS)}, got {init!r}")
    INITS[init](module)


class _Trunk(nn.Module):
    """What the two forms share: options, activation, pooling, LRN (over `lrn_groups` channel blocks) and the
    dropout applied to the outputs of fc6 and fc7."""

    def __init__(self, num_classes, activation, lrn, overlapping_pool, dropout, lrn_impl, lrn_groups):
        super().__init__()
        self.num_classes = num_classes
        self.act = _activation(activation)
        self.lrn = _lrn(lrn, lrn_impl, lrn_groups)
        self.pool = _pool(overlapping_pool)
        self.drop = nn.Dropout(dropout)


class GroupedAlexNet(_Trunk):
    """Single-device AlexNet: both columns in one module, grouped convolutions where the columns do not talk."""

    def __init__(self, num_classes=1000, *, activation="relu", lrn=True, overlapping_pool=True, dropout=0.5,
                 init="paper", lrn_impl="fast"):
        # LRN over two channel blocks: each column's maps normalised on their own, as on the paper's two GPUs
        super().__init__(num_classes, activation, lrn, overlapping_pool, dropout, lrn_impl, lrn_groups=2)
        for name, cin, cout, k, s, p, crosses in CONV_LAYERS:
            groups = 1 if crosses or name == "conv1" else 2
            cin_total = cin if name == "conv1" else (cin if crosses else 2 * cin)
            setattr(self, name, nn.Conv2d(cin_total, 2 * cout, k, s, p, groups=groups))
        self.fc6 = nn.Linear(2 * 128 * POOL5 * POOL5, 2 * FC_WIDTH)
        self.fc7 = nn.Linear(2 * FC_WIDTH, 2 * FC_WIDTH)
        self.fc8 = nn.Linear(2 * FC_WIDTH, num_classes)
        _init(self, init)

    def features(self, x):
        x = self.pool(self.lrn(self.act(self.conv1(x))))
        x = self.pool(self.lrn(self.act(self.conv2(x))))
        x = self.act(self.conv3(x))
        x = self.act(self.conv4(x))
        x = self.pool(self.act(self.conv5(x)))
        return torch.flatten(F.adaptive_avg_pool2d(x, POOL5), 1)

    def forward(self, x):
        x = self.drop(self.act(self.fc6(self.features(x))))
        x = self.drop(self.act(self.fc7(x)))
        return self.fc8(x)


class Column(nn.Module):
    """One of the paper's two GPUs: half the kernels of every layer but fc8."""

    def __init__(self):
        super().__init__()
        for name, cin, cout, k, s, p, _ in CONV_LAYERS:
            setattr(self, name, nn.Conv2d(cin, cout, k, s, p))
        self.fc6 = nn.Linear(2 * 128 * POOL5 * POOL5, FC_WIDTH)
        self.fc7 = nn.Linear(2 * FC_WIDTH, FC_WIDTH)


class AlexNet(_Trunk):
    """The paper's two-column AlexNet. Call ``place(dev0, dev1)`` to put the columns on two devices.

    Its state_dict uses GroupedAlexNet's merged layout (conv1.weight is 96x3x11x11, ...), so checkpoints move freely
    between the two forms; the optimizer state belongs to the form that made it.
    """

    def __init__(self, num_classes=1000, *, activation="relu", lrn=True, overlapping_pool=True, dropout=0.5,
                 init="paper", lrn_impl="fast"):
        super().__init__(num_classes, activation, lrn, overlapping_pool, dropout, lrn_impl, lrn_groups=1)
        self.columns = nn.ModuleList([Column(), Column()])
        self.fc8 = nn.Linear(2 * FC_WIDTH, num_classes)
        _init(self, init)
        self.devices = (torch.device("cpu"), torch.device("cpu"))
        self.output_device = torch.device("cpu")
        self._register_state_dict_hook(_merge_columns)
        self._register_load_state_dict_pre_hook(_split_columns, with_module=True)

    def place(self, dev0, dev1=None, output_device=None):
        """Column 0 on dev0, column 1 on dev1 (default dev0); fc8 and the output on output_device (default dev0)."""
        dev0 = torch.device(dev0)
        dev1 = torch.device(dev1) if dev1 is not None else dev0
        self.devices = (dev0, dev1)
        self.output_device = torch.device(output_device) if output_device is not None else dev0
        self.columns[0].to(dev0)
        self.columns[1].to(dev1)
        self.fc8.to(self.output_device)
        return self

    def _exchange(self, halves):
        """Where the paper's GPUs talked: each column gets both halves, concatenated on its own device."""
        return [torch.cat([h.to(dev, non_blocking=True) for h in halves], dim=1) for dev in self.devices]

    def forward(self, x):
        cols, devs = self.columns, self.devices
        h = [x.to(dev, non_blocking=True) for dev in devs]
        h = [self.pool(self.lrn(self.act(c.conv1(xi)))) for c, xi in zip(cols, h)]
        h = [self.pool(self.lrn(self.act(c.conv2(xi)))) for c, xi in zip(cols, h)]
        h = [self.act(c.conv3(xi)) for c, xi in zip(cols, self._exchange(h))]
        h = [self.act(c.conv4(xi)) for c, xi in zip(cols, h)]
        h = [self.pool(self.act(c.conv5(xi))) for c, xi in zip(cols, h)]
        h = [F.adaptive_avg_pool2d(xi, POOL5) for xi in h]
        # each column drops its own fc6/fc7 outputs *before* the exchange: one mask per neuron, seen by both columns
        h = [self.drop(self.act(c.fc6(torch.flatten(xi, 1)))) for c, xi in zip(cols, self._exchange(h))]
        h = [self.drop(self.act(c.fc7(xi))) for c, xi in zip(cols, self._exchange(h))]
        both = torch.cat([xi.to(self.output_device, non_blocking=True) for xi in h], dim=1)
        return self.fc8(both)


def _merge_columns(module, state_dict, prefix, local_metadata):
    """state_dict hook: columns.{0,1}.<layer>.<p> -> <layer>.<p>, halves concatenated along the output dim."""
    for layer in SPLIT_LAYERS:
        for p in ("weight", "bias"):
            k0, k1 = f"{prefix}columns.0.{layer}.{p}", f"{prefix}columns.1.{layer}.{p}"
            a, b = state_dict.pop(k0), state_dict.pop(k1)
            state_dict[f"{prefix}{layer}.{p}"] = torch.cat([a, b.to(a.device)], dim=0)
    return state_dict


def _split_columns(module, state_dict, prefix, *args, **kwargs):
    """load_state_dict pre-hook: the inverse of _merge_columns (merged tensors split in half, one per column)."""
    for layer in SPLIT_LAYERS:
        for p in ("weight", "bias"):
            key = f"{prefix}{layer}.{p}"
            if key in state_dict:
                a, b = state_dict.pop(key).chunk(2, dim=0)
                state_dict[f"{prefix}columns.0.{layer}.{p}"] = a
                state_dict[f"{prefix}columns.1.{layer}.{p}"] = b
