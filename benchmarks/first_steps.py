"""Do the presets learn from their first steps? The targets of the demo job, the shapes set and the paper preset,
per seed, as measured numbers (docs/BENCHMARKS.md, "First steps").

    python -m benchmarks.first_steps demo --seeds 3 --epochs 5     # the demo job's recipe in one process
    python -m benchmarks.first_steps demo --launch --seeds 3       # the real job: cluster/launch.py --workers 4, timed
    python -m benchmarks.first_steps shapes --seeds 3               # the ablation's budget on the shapes set
    (the paper preset's first steps: python -m benchmarks.init_check --preset paper --steps 100;
     why the shapes set starts slowly: python -m benchmarks.shapes_start)

Targets: demo: the training loss below ln 10 - 0.1 within 5 steps, val top-1 error <= 0.5 after epoch 1
and <= 0.1 by epoch 5, the whole job <= 300 s on a quiet machine. shapes: leaves chance within 2 epochs of 25 steps.
"Leaves chance" is benchmarks/init_check.py's: the mean of the last 5 training losses below ln(classes) - 0.1.

In one process (default) the demo preset's 4 replicas x 32 are one batch of 128 at the preset's lr (the per-image
rule gives the same), on the same loader settings; what differs from the Ray job is only which images share a
replica's dropout masks and augmentation seeds. --launch runs the job itself and reads its metrics.jsonl (the first
steps' losses are then the launcher's running means of rank 0, printed every step).
"""
import argparse
import json
import math
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from benchmarks.init_check import left_chance
from cluster.build_model import build_model
from cluster.loop import evaluate, make_optimizer
from cluster.recipe import PRESETS, preset_config
from pipeline import build_shards
from pipeline import manifest as mf
from pipeline.loader import make_loader

ROOT = Path(__file__).resolve().parents[1]
# what each target trains: (data folder, shard builder flags, global batch, crop, resize built at)
SETS = {"demo": ("data/shards", [], 128, 112),
        "shapes": ("data/shapes-128", ["--demo-set", "shapes", "--size", "128", "--demo-train-per-class", "80",
                                       "--demo-val-per-class", "50"], 32, 112)}


def ensure(data, flags):
    if not mf.manifest_path(data).is_file():
        print(f"building {data} (python pipeline/build_shards.py --out {data} {' '.join(flags)})")
        if build_shards.main(["--out", str(data), *flags]) != 0:
            raise SystemExit(f"error: building {data} failed (see above)")


def train(data, seed, epochs, batch, crop, threads, lr, log=print):
    """The demo preset's recipe in one process; per-step losses and per-epoch val top-1 error."""
    preset = PRESETS["demo"]
    torch.manual_seed(seed)
    torch.set_num_threads(threads)
    common = dict(crop=crop, seed=seed, num_threads=threads, normalize=preset.normalize)
    train_loader = make_loader(data, "train", batch, train=True, central_square=preset.central_square, **common)
    val_loader = make_loader(data, "val", batch, train=False, **common)
    classes = len(train_loader.manifest["classes"])
    model = build_model(preset_config("demo", num_classes=classes)).place("cpu", "cpu")
    opt = make_optimizer(model, lr, 0.9, 5e-4, decay_biases=preset.decay_biases)
    losses, val_errors, start = [], [], time.time()
    for epoch in range(epochs):
        train_loader.set_epoch(epoch)
        model.train()
        for images, labels, _ in train_loader:
            loss = F.cross_entropy(model(images), labels)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(loss.item())
        val_errors.append(evaluate(model, val_loader, torch.device("cpu"))[0])
        log(f"  seed {seed} epoch {epoch + 1}/{epochs}: last loss {losses[-1]:.3f}, val top-1 error "
            f"{val_errors[-1]:.3f} ({time.time() - start:.0f}s)")
    train_loader.close()
    return {"seed": seed, "losses": losses, "val_top1_error": val_errors, "steps_per_epoch": len(train_loader),
            "classes": classes, "seconds": time.time() - start}


def launch(seed, epochs, log=print):
    """cluster/launch.py --workers 4 on the demo set, timed; its per-epoch val errors and rank 0's step losses."""
    with tempfile.TemporaryDirectory(prefix="first-steps-") as out:
        cmd = [sys.executable, str(ROOT / "cluster" / "launch.py"), "--workers", "4", "--seed", str(seed),
               "--output-dir", out, "--name", "run", "--print-freq", "1"]
        cmd += ["--epochs", str(epochs)] if epochs else []
        start = time.time()
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True,
                              env={**os.environ, "PYTHONUNBUFFERED": "1"})
        seconds = time.time() - start
        if proc.returncode:
            raise SystemExit(f"error: {' '.join(cmd)} exited {proc.returncode}:\n{proc.stderr[-3000:]}")
        metrics = [json.loads(line) for line in (Path(out) / "run" / "metrics.jsonl").read_text().splitlines()]
    means = [float(m.group(2)) for m in re.finditer(r"epoch 1/\d+ step (\d+)/\d+ loss ([\d.]+)",
                                                  proc.stdout + proc.stderr)]
    losses = [means[0]] + [(k + 1) * means[k] - k * means[k - 1] for k in range(1, len(means))]
    log(f"  seed {seed}: {seconds:.0f}s, val top-1 error by epoch {[round(m['val_top1_error'], 3) for m in metrics]}")
    return {"seed": seed, "losses": losses, "val_top1_error": [m["val_top1_error"] for m in metrics],
            "steps_per_epoch": len(means), "classes": 10, "seconds": seconds}


def verdict(target, runs):
    bar = math.log(runs[0]["classes"]) - 0.1
    lines = []
    for r in runs:
        first_below = next((i + 1 for i, v in enumerate(r["losses"]) if v < bar), None)
        errs = r["val_top1_error"]
        lines.append(f"seed {r['seed']}: first loss below ln C - 0.1 at step {first_below}, left chance (5-step mean) "
                     f"at step {left_chance(r['losses'], r['classes'])} ({r['steps_per_epoch']} steps/epoch); val "
                     f"top-1 error by epoch {', '.join(f'{e:.3f}' for e in errs)}; {r['seconds']:.0f}s")
    return lines


def get_args_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    a = p.add_argument
    a("target", choices=sorted(SETS), help="demo: the embedded set at the demo job's recipe; shapes: the ablation set")
    a("--seeds", type=int, default=3, help="seeds 0..N-1 (default: 3)")
    a("--epochs", type=int, default=None, help="epochs per run (default: demo 5, shapes 2; --launch: the preset's)")
    a("--lr", type=float, default=None,
      help="learning rate (default: demo: the demo preset's, at its global batch 4 x 32 = 128; shapes: 0.0025, the "
           "paper's 0.01 per 128 images at batch 32)")
    a("--launch", action="store_true", help="demo only: run cluster/launch.py --workers 4 itself (default: off)")
    a("-j", "--threads", type=int, default=2, help="CPU threads (default: 2)")
    a("--json", type=Path, default=None, help="also write every run's numbers here (default: none)")
    return p


def main(argv=None):
    args = get_args_parser().parse_args(argv)
    if args.launch and args.target != "demo":
        print("error: --launch runs the demo job; use it with target demo", file=sys.stderr)
        return 2
    data, flags, batch, crop = SETS[args.target]
    data = ROOT / data
    ensure(data, flags)
    epochs = args.epochs or (None if args.launch else {"demo": 5, "shapes": 2}[args.target])
    lr = args.lr or (PRESETS["demo"].base_lr if args.target == "demo" else 0.01 * batch / 128)
    load = os.getloadavg()
    print(f"{args.target}: {args.seeds} seed(s), lr {lr:g}, batch {batch}, load average {load[0]:.1f} {load[1]:.1f} "
          f"{load[2]:.1f} on {os.cpu_count()} CPUs at start")
    runs = [launch(seed, epochs) if args.launch else train(data, seed, epochs, batch, crop, args.threads, lr)
            for seed in range(args.seeds)]
    for line in verdict(args.target, runs):
        print(line)
    print(f"load average at the end {' '.join(f'{v:.1f}' for v in os.getloadavg())}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"target": args.target, "launch": args.launch, "load_start": load,
                                         "runs": runs}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
