"""cluster/loop.py's evaluation on hand-made logits: what counts as a top-1 and a top-5 hit, and the paper's ten-patch
prediction (the softmax of the ten patches averaged, section 4.1)."""
import pytest
import torch
from torch import nn

from cluster.loop import evaluate

CLASSES = 6
BIG = 30.0  # a logit this far above the others: that crop's softmax is one-hot to 1e-12


class LogitsAreTheInput(nn.Module):
    """A 'model' whose logits are its input, so a test writes each crop's logits by hand."""

    def forward(self, x):
        return x.flatten(1)


def crops(*classes, logit=BIG):
    """Ten crops' logits (10, CLASSES, 1, 1), crop k voting for classes[k] with `logit`."""
    out = torch.zeros(len(classes), CLASSES)
    out[torch.arange(len(classes)), torch.tensor(classes)] = logit
    return out[:, :, None, None]


def batch(images, labels):
    return torch.stack(images), torch.tensor(labels), torch.arange(len(labels))


def test_single_crop_top1_and_top5():
    logits = torch.tensor([[6.0, 5, 4, 3, 2, 1]] * 3)[:, :, None, None]  # classes ranked 0, 1, ..., 5
    loader = [batch(list(logits[:2]), [0, 4]), batch([logits[2]], [5])]  # rank 1 (hit), rank 5, rank 6
    top1, top5, n = evaluate(LogitsAreTheInput(), loader, torch.device("cpu"))
    assert (top1, top5, n) == (pytest.approx(2 / 3), pytest.approx(1 / 3), 3)


def test_ten_crop_averages_the_softmax_of_the_patches():
    # image A (label 2): crop 0 and three others say 0, five say 2, one says 5 with a huge logit. The averaged
    # softmax gives 2 (0.5 against 0.4 and 0.1); averaged logits would give 5, and the first crop alone 0.
    a = torch.cat([crops(0, 0, 0, 0, 2, 2, 2, 2, 2), crops(5, logit=1000.0)])
    # image B (label 3): 0 and 1 get 0.3 each, 2 and 3 get 0.2: a top-5 hit only
    b = crops(0, 0, 0, 1, 1, 1, 2, 2, 3, 3)
    # image C (label 5): classes 0-4 get 0.2 each, 5 nothing: a miss in both
    c = crops(0, 0, 1, 1, 2, 2, 3, 3, 4, 4)
    loader = [batch([a, b], [2, 3]), batch([c], [5])]
    top1, top5, n = evaluate(LogitsAreTheInput(), loader, torch.device("cpu"), ten_crop=True)
    assert (top1, top5, n) == (pytest.approx(2 / 3), pytest.approx(1 / 3), 3)
