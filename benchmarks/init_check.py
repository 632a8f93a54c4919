"""Does a preset learn from its first steps? Per-layer scales at initialisation and over the first N steps, and the
step at which the training loss leaves chance.

    python -m benchmarks.init_check --preset demo                 # the demo preset on the embedded set (data/shards)
    python -m benchmarks.init_check --preset paper --steps 100    # the paper preset at crop 224
    python -m benchmarks.init_check --preset demo --normalize std --kaiming-mode fan_in   # compare

One process, no Ray: the GroupedAlexNet form (the same init and numbers as the split form), the DALI CPU loader with
the preset's crop and input normalisation, SGD with momentum and weight decay as cluster/loop.py makes it, at batch
128 (the demo main job's global batch, 4 x 32, and the paper's batch) and the preset's lr.

Printed per layer (conv1 ... fc8), at init and every --every steps, the outputs from the step's batch in eval mode
(no dropout), the gradients from the training step:
  out rms    the root mean square of the layer's output (before its ReLU)
  spread     how much of that output depends on the image: the std across the batch, averaged over units, / rms
             (0: every image gives the same output)
  grad       mean |dL/dW| of its weights
  upd/w      lr * rms(dL/dW) / rms(W): the relative size of one plain SGD step on the layer
  dead       the share of channels (conv) or units (fc) whose output is <= 0 for every image and position: dead
             ReLUs, which pass no gradient (fc8 has no ReLU; its figure is only for symmetry)
Leaving chance: the first step at which the mean training loss of the last 5 steps is below ln(classes) - 0.1.
"""
import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from cluster.build_model import build_model
from cluster.loop import make_optimizer, set_lr
from cluster.recipe import PRESETS, preset_config
from model import INITS, kaiming_init_
from pipeline.loader import make_loader
from pipeline.stats import NORMALIZE

LAYERS = ["conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7", "fc8"]
WINDOW, MARGIN = 5, 0.1  # "left chance": mean of the last WINDOW losses below ln(C) - MARGIN


def left_chance(losses, num_classes):
    """1-based step at which the mean of the last WINDOW losses first falls below ln(C) - MARGIN; None if never."""
    bar = math.log(num_classes) - MARGIN
    for i in range(WINDOW, len(losses) + 1):
        if sum(losses[i - WINDOW:i]) / WINDOW < bar:
            return i
    return None


def layer_stats(model, outputs, lr):
    """{layer: {out_rms, spread, grad, upd_w}} from the outputs caught in the last forward and the grads now."""
    rows = {}
    for name in LAYERS:
        out = outputs[name].detach().double()
        y = out.flatten(1)
        rms = y.pow(2).mean().sqrt().item()
        # a channel (conv) or unit (fc) whose ReLU input is <= 0 for every image and position passes no gradient
        dead = (out.transpose(0, 1).flatten(1) <= 0).all(1).double().mean().item()
        w, g = getattr(model, name).weight, getattr(model, name).weight.grad
        rows[name] = {"out_rms": rms, "spread": y.std(0).mean().item() / max(rms, 1e-30),
                      "grad": g.abs().mean().item(),
                      "upd_w": lr * g.pow(2).mean().sqrt().item() / w.detach().pow(2).mean().sqrt().item(),
                      "dead": dead}
    return rows


def print_stats(step, rows, logits, log):
    spread = logits.detach().double().std(0).mean().item()
    log(f"  step {step}: logits' std across images {spread:.3g}")
    log("    " + "  ".join(f"{n:>22}" for n in ("layer: out rms", "spread", "grad", "upd/w", "dead")))
    for name, r in rows.items():
        log(f"    {name:>6}: {r['out_rms']:14.3g}  {r['spread']:22.3g}  {r['grad']:22.3g}  {r['upd_w']:22.3g}  "
            f"{r['dead']:22.3g}")


def run(args, log=print):
    """Train for args.steps steps; returns a dict of what was measured (losses, layer stats, leaving chance)."""
    preset = PRESETS[args.preset]
    crop, init = args.crop or preset.crop, args.init or preset.init
    normalize = args.normalize or preset.normalize
    args.lr = args.lr if args.lr is not None else preset.base_lr
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    loader = make_loader(args.data, "train", args.batch_size, train=True, crop=crop, seed=args.seed,
                         num_threads=args.threads, normalize=normalize, central_square=preset.central_square)
    classes = len(loader.manifest["classes"])
    recipe = preset_config(args.preset, num_classes=classes, crop=crop, init=init, normalize=normalize,
                           dropout=args.dropout)
    model = build_model(recipe, grouped=True).train()
    if init == "kaiming" and args.kaiming_mode != "fan_out":
        kaiming_init_(model, args.kaiming_mode)
        init = f"kaiming ({args.kaiming_mode})"
    outputs = {}
    for name in LAYERS:
        getattr(model, name).register_forward_hook(lambda m, i, o, name=name: outputs.__setitem__(name, o))
    opt = make_optimizer(model, args.lr, args.momentum, args.wd, decay_biases=preset.decay_biases)
    warmup = args.warmup_steps if args.warmup_steps is not None else preset.warmup_steps
    log(f"preset {args.preset}: crop {crop}, {init} init, inputs {normalize}, batch {args.batch_size}, lr {args.lr:g}"
        f" (warmup {warmup} steps), momentum {args.momentum:g}, wd {args.wd:g}, dropout {args.dropout:g}, {classes} "
        f"classes, chance ln {classes} = {math.log(classes):.3f}, seed {args.seed}")
    losses, snapshots, step, start = [], {}, 0, time.time()
    while step < args.steps:
        for images, labels, _ in loader:
            lr = args.lr * min(1.0, (step + 1) / warmup) if warmup else args.lr
            set_lr(opt, lr)
            snapshot = step == 0 or (step + 1) % args.every == 0
            if snapshot:  # the scales without dropout's noise, which alone would make fc7 and fc8 vary by image
                with torch.no_grad():
                    clean = model.eval()(images)
                    clean_outputs = dict(outputs)
                model.train()
            logits = model(images)
            loss = F.cross_entropy(logits, labels)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if snapshot:
                snapshots[step] = layer_stats(model, clean_outputs, lr)
                print_stats(step, snapshots[step], clean, log)
            opt.step()
            losses.append(loss.item())
            step += 1
            log(f"  step {step}: loss {losses[-1]:.4f} lr {lr:.2e} ({time.time() - start:.0f}s)")
            if step == args.steps:
                break
    loader.close()
    left = left_chance(losses, classes)
    peak = max(losses) / losses[0]
    log(f"left chance (mean of {WINDOW} losses < ln {classes} - {MARGIN}) at step {left}; highest loss "
        f"{max(losses):.3f} = {peak:.2f} x the first ({losses[0]:.3f})")
    return {"preset": args.preset, "crop": crop, "init": init, "normalize": normalize, "lr": args.lr,
            "warmup_steps": warmup, "dropout": args.dropout, "batch_size": args.batch_size, "seed": args.seed,
            "classes": classes,
            "losses": losses, "left_chance_step": left, "peak_over_first": peak, "layers": snapshots,
            "seconds": time.time() - start}


def get_args_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    a = p.add_argument
    a("--preset", choices=sorted(PRESETS), default="demo", help="the preset whose start is checked (default: demo)")
    a("--data", type=Path, default=Path("data/shards"), help="shard folder (default: data/shards)")
    a("--steps", type=int, default=30, help="optimizer steps to run (default: 30)")
    a("--every", type=int, default=10, help="per-layer table every N steps (default: 10)")
    a("-b", "--batch-size", type=int, default=128, help="images per step (default: 128)")
    a("--lr", type=float, default=None, help="peak learning rate (default: the preset's: 0.01 paper, 0.0025 demo)")
    a("--warmup-steps", type=int, default=None, help="linear warmup from lr / N (default: the preset's)")
    a("--momentum", type=float, default=0.9, help="SGD momentum (default: 0.9)")
    a("--wd", type=float, default=5e-4, help="weight decay (default: 5e-4)")
    a("--crop", type=int, default=None, help="crop size (default: the preset's)")
    a("--dropout", type=float, default=0.5, help="dropout on fc6's and fc7's outputs (default: 0.5, the paper's)")
    a("--init", choices=sorted(INITS), default=None, help="weight init (default: the preset's)")
    a("--kaiming-mode", choices=["fan_out", "fan_in"], default="fan_out",
      help="with --init kaiming: the convolutions' fan (default: fan_out, model.INITS's)")
    a("--normalize", choices=NORMALIZE, default=None, help="input normalisation (default: the preset's)")
    a("--seed", type=int, default=0, help="weights, data order and augmentation seed (default: 0)")
    a("-j", "--threads", type=int, default=2, help="CPU threads for DALI and torch (default: 2)")
    a("--json", type=Path, default=None, help="also write the measurements to this JSON file (default: none)")
    return p


def main(argv=None):
    args = get_args_parser().parse_args(argv)
    if args.steps < 1 or args.every < 1 or args.batch_size < 1:
        print("error: --steps, --every and --batch-size must be >= 1", file=sys.stderr)
        return 2
    result = run(args)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
