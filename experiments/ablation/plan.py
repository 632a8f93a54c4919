"""python -m experiments.ablation --plan: what is left to train and how long it should take, from the per-epoch
costs measured by finished runs (of this run, else of any run at the same crop and batch size: a --quick run is
enough)."""
import json
import os
from pathlib import Path

import numpy as np

QUICK_RUNS = Path("runs/ablation-quick/runs")


def measured_costs(dirs, crop, batch_size):
    """(seconds per training image, per validation image, fixed seconds per epoch (the pipelines' first batches),
    seconds per run outside the epochs, load averages at the runs' starts, runs) over every finished run in `dirs`
    at this crop and batch size; medians over epochs. The per-image costs leave the first batches out."""
    train, val, fixed, extra, loads, n = [], [], [], [], [], 0
    for d in dict.fromkeys(Path(d).resolve() for d in dirs):
        for path in sorted(Path(d).glob("*.json")) if Path(d).is_dir() else []:
            try:
                r = json.loads(path.read_text())["result"]
                b = r["budget"]
                if b.get("crop") != crop or b.get("batch_size") != batch_size or not r.get("val_correct"):
                    continue
                n_train, n_val = len(r["train_correct"]), len(r["val_correct"])
                for h in r["history"]:
                    t_first, v_first = h["train_first_batch_seconds"], h["val_first_batch_seconds"]
                    train.append((h["train_seconds"] - t_first) / max(1, n_train - batch_size))
                    val.append((h["seconds"] - h["train_seconds"] - v_first) / max(1, n_val - batch_size))
                    fixed.append(t_first + v_first)
                extra.append(r["seconds"] - sum(h["seconds"] for h in r["history"]))
                loads.append(r.get("load_average", float("nan")))
                n += 1
            except (ValueError, KeyError, TypeError, ZeroDivisionError):
                continue  # not a run of this harness: nothing to learn from it
    if not n:
        return None
    return (float(np.median(train)), float(np.median(val)), float(np.median(fixed)), float(np.median(extra)), loads,
            n)


def print_plan(args, results, todo):
    done = sum(map(len, results.values()))
    print(f"{args.runs_dir}: {done} finished runs for these settings, {len(todo)} to train "
          f"({args.seeds} seeds; {args.epochs} epochs, Figure 1 at most {args.fig1_epochs}; crop {args.crop}; "
          f"{10 * args.train_per_class} training and "
          f"{10 * args.val_per_class} validation images)")
    costs = measured_costs([args.runs_dir, QUICK_RUNS], args.crop, args.batch_size)
    if costs is None:
        print(f"no finished run at crop {args.crop} and batch size {args.batch_size} to measure costs from: run "
              f"`python -m experiments.ablation --quick --crop {args.crop}` first (a few minutes), then --plan again.")
        return
    per_train, per_val, fixed, extra, loads, n = costs
    epoch = fixed + 10 * args.train_per_class * per_train + 10 * args.val_per_class * per_val
    # A Figure 1 run stops at 25% training error: the budget's epochs are its upper bound.
    fig1 = sum(1 for v, _ in todo if v.stop_at)
    total = sum((args.fig1_epochs if v.stop_at else args.epochs) * epoch + extra for v, _ in todo)
    print(f"measured over {n} finished runs (medians; load average at their starts "
          f"{min(loads):.1f} to {max(loads):.1f}): "
          f"{1000 * per_train:.1f} ms per training image, {1000 * per_val:.1f} ms per validation image, {fixed:.1f} s "
          f"fixed per epoch (the pipelines' first batches), {extra:.0f} s per run besides its epochs")
    print(f"estimate: {epoch:.1f} s per epoch, {args.epochs * epoch / 60 + extra / 60:.1f} min per run; "
          f"{len(todo)} runs ({fig1} of them Figure 1 runs, which stop at 25% training error: counted at the whole "
          f"budget) = at most {total / 3600:.1f} h on this machine (load average now "
          f"{os.getloadavg()[0]:.1f}); the per-image costs are measured on what has run (a tiny --quick "
          "set: few batches, so rough); after the first full runs, --plan again measures on them.")
