"""Why AlexNet sits at chance on the shapes set before it learns: the same loader, batch and lr for AlexNet (as the
ablation trains it, with and without dropout) and for a control conv net with and without batch norm.

    python -m benchmarks.shapes_start                      # 300 steps of 32 at lr 0.0025, seed 0 (~7.5 min on 2 cores)
    python -m benchmarks.shapes_start --lr 0.01 --seeds 2

Printed per model: the step at which the training loss leaves chance (benchmarks/init_check.py's rule: the mean of the
last 5 losses below ln 10 - 0.1) and the mean loss of every 25 steps (one epoch of the ablation's 800 images).

The control net has AlexNet's five convolutions (kernel sizes, strides and pooling; half the channels) and a global
average pool into one linear layer; its inputs are the loader's divided by 58 (about the pixels' std), the unit
scale its Kaiming fan-in init assumes. "+bn" puts a BatchNorm after every convolution, the only difference between
the two controls. If the control with batch norm leaves chance within 2 epochs of 25 steps (the first steps' target)
and the one without does not, the plateau belongs to a network without normalisation layers on this set (which
AlexNet, from 2012, is), not to our start, data or loader.
"""
import argparse
import os
import sys
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from benchmarks.init_check import left_chance
from cluster.build_model import build_model
from cluster.loop import make_optimizer
from cluster.recipe import preset_config
from experiments.ablation import study as ablate
from pipeline import manifest as mf
from pipeline.loader import make_loader

MODELS = ["alexnet", "alexnet-no-dropout", "control", "control+bn"]
INPUT_STD = 58.0  # ~ the std of 0-255 pixels: brings the paper's inputs to the unit scale the control's init assumes


def control_net(num_classes, batch_norm):
    """AlexNet's five convolutions (half width), ReLU, max pooling where AlexNet pools, global average pool, linear."""
    layers, width = [], 3
    for out, k, stride, pool in [(48, 11, 4, True), (128, 5, 1, True), (192, 3, 1, False), (192, 3, 1, False),
                                 (128, 3, 1, False)]:
        layers += [nn.Conv2d(width, out, k, stride, 2 if k == 11 else k // 2)]
        layers += [nn.BatchNorm2d(out)] if batch_norm else []
        layers += [nn.ReLU()] + ([nn.MaxPool2d(3, 2)] if pool else [])
        width = out
    net = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, num_classes))
    for m in net.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
            nn.init.zeros_(m.bias)
    return net


def build(name, num_classes):
    """(model, input scale) for one of MODELS."""
    if name.startswith("alexnet"):
        dropout = 0.0 if name == "alexnet-no-dropout" else 0.5
        recipe = preset_config("demo", num_classes=num_classes, dropout=dropout)  # the ablation's: Kaiming init
        return build_model(recipe).place("cpu", "cpu"), 1.0
    return control_net(num_classes, batch_norm=name.endswith("+bn")), 1.0 / INPUT_STD


def run(name, data, seed, steps, batch, lr, crop, threads):
    torch.manual_seed(seed)
    torch.set_num_threads(threads)
    loader = make_loader(data, "train", batch, train=True, crop=crop, seed=seed, num_threads=threads, device="cpu",
                         normalize="paper")
    classes = len(loader.manifest["classes"])
    model, scale = build(name, classes)
    # weight decay on the weights only, as the ablation's budget
    opt = make_optimizer(model, lr, 0.9, 5e-4, decay_biases=False)
    model.train()
    losses, epoch, start = [], 0, time.time()
    while len(losses) < steps:
        loader.set_epoch(epoch)
        epoch += 1
        for images, labels, _ in loader:
            loss = F.cross_entropy(model(images * scale), labels)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(loss.item())
            if len(losses) == steps:
                break
    loader.close()
    return losses, left_chance(losses, classes), time.time() - start


def get_args_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    a = p.add_argument
    a("--data", type=Path, default=None,
      help="shapes shards at this crop; built there if missing, as the ablation builds them (default: the "
           "ablation's, data/shapes-73 at crop 64)")
    a("--models", default=",".join(MODELS), help=f"comma-separated subset of {', '.join(MODELS)} (default: all)")
    a("--steps", type=int, default=300, help="optimizer steps per run (default: 300)")
    a("-b", "--batch-size", type=int, default=32, help="batch size (default: 32)")
    a("--lr", type=float, default=0.0025, help="learning rate, SGD momentum 0.9, every model (default: 0.0025, the "
                                               "paper's 0.01 per 128 images)")
    a("--crop", type=int, default=64, help="crop size (default: 64, the ablation's)")
    a("--seeds", type=int, default=1, help="seeds 0..N-1 (default: 1)")
    a("-j", "--threads", type=int, default=2, help="CPU threads (default: 2)")
    return p


def main(argv=None):
    args = get_args_parser().parse_args(argv)
    names = [n.strip() for n in args.models.split(",") if n.strip()]
    unknown = sorted(set(names) - set(MODELS))
    if unknown:
        print(f"error: --models: unknown {', '.join(unknown)}; choose from {', '.join(MODELS)}", file=sys.stderr)
        return 2
    # The ablation's own set and checks (built if missing, refused if the folder holds another build).
    flags = ["--crop", str(args.crop), "-j", str(args.threads)] + (["--data", str(args.data)] if args.data else [])
    ablation = ablate.get_args_parser().parse_args(flags)
    try:
        ablate.resolve(ablation)
        ablate.ensure_data(ablation)
    except (ablate.AblateError, mf.ManifestError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    args.data = ablation.data
    print(f"{args.data}: batch {args.batch_size}, lr {args.lr:g}, crop {args.crop}, {args.steps} steps, load average "
          f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    for seed in range(args.seeds):
        for name in names:
            losses, left, seconds = run(name, args.data, seed, args.steps, args.batch_size, args.lr, args.crop,
                                        args.threads)
            means = " ".join(f"{sum(losses[i:i + 25]) / len(losses[i:i + 25]):.2f}" for i in range(0, len(losses), 25))
            print(f"{name:>18} seed {seed}: left chance at step {left}; mean loss per 25 steps {means} "
                  f"({seconds:.0f}s)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
