"""The demo preset learns from its first steps: on a tiny set the training loss falls clearly below where
it started within a dozen steps, in the same loop as the workers (the split model, the DALI loader, cluster/loop.py's
optimizer), with the preset's init and inputs at lr 0.01 per 40 images (above the preset's rate, so that a dozen steps
on 120 images show it). The speed targets themselves are measured by benchmarks/first_steps.py, not here."""
import math

import torch
import torch.nn.functional as F

from cluster.loop import make_optimizer
from cluster.recipe import PRESETS
from model import AlexNet
from pipeline.loader import make_loader


def first_losses(data, steps, normalize, seed=0):
    preset = PRESETS["demo"]
    torch.manual_seed(seed)
    loader = make_loader(data, "train", 40, crop=64, seed=seed, num_threads=1, normalize=normalize)
    model = AlexNet(10, init=preset.init).place("cpu", "cpu").train()
    opt = make_optimizer(model, 0.01, 0.9, 5e-4, decay_biases=preset.decay_biases)
    losses, epoch = [], 0
    while len(losses) < steps:
        loader.set_epoch(epoch)
        for images, labels, _ in loader:
            loss = F.cross_entropy(model(images), labels)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(loss.item())
        epoch += 1
    loader.close()
    return losses[:steps]


def test_the_demo_preset_leaves_chance_within_a_dozen_steps(demo_shards):
    losses = first_losses(demo_shards, 12, PRESETS["demo"].normalize)
    late = sum(losses[-3:]) / 3
    assert late < math.log(10) - 0.3 and late < losses[0] - 0.3, losses
