"""Ablation of every technique the paper names, on the embedded shapes set: one command, REPORT.md + figures.

    python -m experiments.ablation --plan         # what is left to train and how long it should take (trains nothing)
    python -m experiments.ablation                # the full run: 8 variants + the Figure 1 sweep, 4 seeds each
    python -m experiments.ablation --report-only  # REPORT.md from the runs committed in runs/
    python -m experiments.ablation --report-only --partial   # ... from the variants finished so far, naming the rest
    python -m experiments.ablation --quick        # a smoke version (minutes on 2 cores): tiny set, 2 epochs, 2 seeds

Each variant is the full recipe with one switch changed (tanh; no LRN; pooling z=2, s=2; no dropout; no crops/flips;
no PCA lighting; no weight decay), trained with the same seeds and budget, single-process on the DALI CPU loader,
with the step and evaluation of cluster/loop.py. The learning-rate rule: every ablation variant at the reference's
rate (--lr); Figure 1 (ReLU vs tanh, no dropout, no weight decay, no augmentation, as the paper ran it) sweeps
--fig1-lr-factors x --lr for each activation and shows each at its best. Each finished run is a small JSON in
--runs-dir (per-image results, the commit it ran at), reused when the settings match: an interrupted run, or one
on another machine, continues where it stopped (--fresh starts over).
"""
import argparse
import dataclasses
import sys
import time
from pathlib import Path

from cluster.setting import command_line
from experiments.ablation.plan import print_plan
from experiments.ablation.report import ReportContext, write_report
from experiments.ablation.saved_runs import (
    AblateError,
    budget_record,
    claim,
    data_key,
    finished_only,
    load_finished,
    load_run,
    release,
    run_key,
    run_path,
    save_run,
)
from experiments.ablation.train import Budgets, Variant, reference_config, train_variant
from pipeline import build_shards
from pipeline import manifest as mf

# The reference and one setting of cluster/recipe.py changed (`python cluster/launch.py` flags: --activation tanh,
# --no-lrn, --no-overlap, --dropout 0, --no-crop-flip, --lighting 0, --wd 0).
VARIANTS = [
    Variant("full", "full recipe"),
    Variant("tanh", "tanh instead of ReLU", {"activation": "tanh"}),
    Variant("no_lrn", "no LRN", {"lrn": False}),
    Variant("no_overlap", "pooling z=2, s=2 (no overlap)", {"overlapping_pool": False}),
    Variant("no_dropout", "no dropout", {"dropout": 0.0}),
    Variant("no_augment", "no crops/flips (centre crop)", {"crop_flip": False}),
    Variant("no_lighting", "no PCA lighting", {"lighting": 0.0}),
    Variant("no_wd", "no weight decay", {"wd": 0.0}),
]
FIGURE1_ERROR = 0.25  # the paper's Figure 1: steps to 25% training error
LOCAL = ("threads", "gpus_per_worker", "min_workers")  # how this machine runs it, not the recipe: the launcher picks
DEFAULT_LR = 0.0025  # the demo preset's (0.01 per 128 images was too high on the shapes set: docs/BENCHMARKS.md)
# (full, quick): the quick run is a smoke test of the whole path, not a measurement.
DEFAULTS = {"epochs": (144, 2), "fig1_epochs": (70, 2), "seeds": (4, 2), "train_per_class": (80, 10),
            "val_per_class": (100, 5),
            "out": ("experiments/ablation/REPORT.md", "runs/ablation-quick/REPORT.md"),
            "figures": ("experiments/ablation/figures", "runs/ablation-quick/figures"),
            "runs_dir": ("experiments/ablation/runs", "runs/ablation-quick/runs")}


def get_args_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    a = p.add_argument
    a("--quick", action="store_true", help="the smoke version (a few minutes on 2 cores); changes the defaults marked "
                                           "'quick' (default: off)")
    a("--plan", action="store_true", help="print what is left to train and its estimated time, from the measured "
                                          "per-image costs of finished runs; train nothing (default: off)")
    a("--report-only", action="store_true", help="write the report from the runs in --runs-dir alone: no data, no "
                                                 "training; fails naming the runs that are missing (default: off)")
    a("--variants", default=",".join(v.name for v in VARIANTS),
      help="comma-separated subset, trained in this order; 'full' (the reference) is always run, first unless "
           "listed (default: all)")
    a("--no-figure1", action="store_true", help="skip the Figure 1 sweep (default: off)")
    a("--partial", action="store_true",
      help="with --report-only: report the variants whose every seed has finished (the reference must have), and "
           "list the rest as not yet trained (default: off: fail naming the missing runs)")
    a("--epochs", type=int, default=None, help="epochs per ablation run (default: 144; quick 2)")
    a("--fig1-epochs", type=int, default=None,
      help="the cap of a Figure 1 run, which stops at 25%% training error; lr / 10 from 3/4 of it (default: 70, the "
           "budget its committed runs had; quick 2)")
    a("--seeds", type=int, default=None, help="seeds per variant, 0..N-1, the same for every variant (default: 4; "
                                              "quick 2)")
    a("--train-per-class", type=int, default=None, help="training images per class, 10 classes (default: 80; quick 10)")
    a("--val-per-class", type=int, default=None, help="validation images per class (default: 100; quick 5)")
    a("--crop", type=int, default=64, help="training and evaluation crop; the shards are built at round(crop * 256 / "
                                           "224) so the loader never resizes (default: 64)")
    a("-b", "--batch-size", type=int, default=32, help="batch size (default: 32)")
    a("--lr", type=float, default=DEFAULT_LR, help=f"the reference's learning rate, every ablation variant's "
                                                   f"(default: {DEFAULT_LR})")
    a("--fig1-lr-factors", default="0.2,0.5,1", help="Figure 1's sweep: these multiples of --lr for both ReLU and "
                                                     "tanh, each shown at its best (default: 0.2,0.5,1)")
    a("--lr-decay-epoch", type=int, default=None,
      help="the ablation variants' lr / 10 from this 0-based epoch on, 0 never; Figure 1's is 3/4 of --fig1-epochs "
           "(default: 90/144 x --epochs, rounded: 90)")
    a("--lr-decay2-epoch", type=int, default=None,
      help="the ablation variants' lr / 100 from this 0-based epoch on, 0 never; needs --lr-decay-epoch before it "
           "(default: 102/144 x --epochs, rounded: 102; 0 when that is not after the first drop)")
    a("-j", "--threads", type=int, default=2,
      help="torch and DALI threads; on 2 cores two processes with -j 1 train ~20%% faster together than one with "
           "-j 2, sharing --runs-dir (each claims the run it trains) (default: 2)")
    a("--data", type=Path, default=None,
      help="shapes shards for these settings; built there if missing (default: data/shapes-SIZE; quick "
           "data/shapes-quick-SIZE)")
    a("--out", type=Path, default=None,
      help="the markdown report (default: experiments/ablation/REPORT.md; quick runs/ablation-quick/REPORT.md)")
    a("--figures", type=Path, default=None,
      help="folder for the figures (default: experiments/ablation/figures; quick runs/ablation-quick/figures)")
    a("--runs-dir", type=Path, default=None,
      help="one JSON per finished run, reused when settings match; committed for the full run (default: "
           "experiments/ablation/runs; quick runs/ablation-quick/runs)")
    a("--fresh", action="store_true", help="ignore finished runs in --runs-dir (default: off)")
    return p


def figure1_variants(args):
    """The paper's Figure 1 setting (no dropout, no weight decay, no augmentation) for ReLU and tanh at each rate of
    the sweep; each stops at 25% training error, the point the figure measures."""
    out = []
    for act in ("relu", "tanh"):
        for f in args.fig1_lr_factors:
            lr = float(f"{f * args.lr:.6g}")
            out.append(Variant(f"fig1_{act}_lr{lr:g}", f"Figure 1: {act}, lr {lr:g}",
                               {"activation": act, "dropout": 0.0, "crop_flip": False, "lighting": 0.0, "wd": 0.0,
                                "base_lr": lr}, stop_at=FIGURE1_ERROR))
    return out


def resolve(args):
    for key, (full, quick) in DEFAULTS.items():
        if getattr(args, key) is None:
            value = quick if args.quick else full
            setattr(args, key, Path(value) if isinstance(value, str) else value)
    args.size = round(args.crop * 256 / 224)
    if args.data is None:
        args.data = Path(f"data/shapes-quick-{args.size}" if args.quick else f"data/shapes-{args.size}")
    # The paper's rule, lr / 10 when the validation error stops improving, read off one reference run and then
    # fixed for every variant, so that the reference converges by the report's rule; why these epochs, with the
    # measurements: docs/TRAINING.md ("The budget") and docs/BENCHMARKS.md ("A budget the reference converges in").
    if args.lr_decay_epoch is None:
        args.lr_decay_epoch = round(args.epochs * 90 / 144) if args.epochs > 2 else 0
    if args.lr_decay2_epoch is None:
        second = round(args.epochs * 102 / 144) if args.epochs > 2 else 0
        args.lr_decay2_epoch = second if second > args.lr_decay_epoch else 0  # too short a budget for two drops
    if args.partial and not args.report_only:
        raise AblateError("--partial only applies to --report-only (a report from what has finished); training "
                          "always resumes from the finished runs")
    for flag in ("epochs", "fig1_epochs", "seeds", "train_per_class", "val_per_class", "batch_size", "threads", "crop"):
        if getattr(args, flag) < 1:
            raise AblateError(f"--{flag.replace('_', '-')} must be >= 1, got {getattr(args, flag)}")
    for flag in ("lr_decay_epoch", "lr_decay2_epoch"):
        if not 0 <= getattr(args, flag) < args.epochs:
            raise AblateError(f"--{flag.replace('_', '-')} must be 0 (never) or below --epochs {args.epochs}, got "
                              f"{getattr(args, flag)}")
    if args.lr_decay2_epoch and not 0 < args.lr_decay_epoch < args.lr_decay2_epoch:
        raise AblateError(f"--lr-decay2-epoch {args.lr_decay2_epoch} must come after --lr-decay-epoch "
                          f"{args.lr_decay_epoch} (or be 0: no second drop)")
    try:
        args.fig1_lr_factors = [float(f) for f in args.fig1_lr_factors.split(",") if f.strip()]
    except ValueError:
        raise AblateError(f"--fig1-lr-factors: not a list of numbers: {args.fig1_lr_factors!r}") from None
    if not args.fig1_lr_factors or min(args.fig1_lr_factors) <= 0:
        raise AblateError("--fig1-lr-factors: give one or more positive multiples of --lr, e.g. 0.2,0.5,1")
    known = {v.name: v for v in VARIANTS}
    wanted = [n.strip() for n in args.variants.split(",") if n.strip()]
    unknown = [n for n in wanted if n not in known]
    if unknown:
        raise AblateError(f"--variants: unknown {', '.join(unknown)}; choose from {', '.join(known)}")
    wanted = list(dict.fromkeys(wanted))  # a repeat would count its seeds twice
    # Trained in the order given, the reference first unless listed (listing it last lets a second process, started
    # beside the first on a bigger machine, reuse the first one's reference runs); reported with the reference first.
    train_order = [known[n] for n in (wanted if "full" in wanted else ["full", *wanted])]
    fig1 = [] if args.no_figure1 else figure1_variants(args)
    return [known["full"]] + [v for v in train_order if v.name != "full"], train_order + fig1, fig1


def ensure_data(args):
    """The shapes shards for these settings: built if missing, refused if the folder holds something else."""
    want = data_key(args)
    if not mf.manifest_path(args.data).is_file():
        print(f"building the shapes set in {args.data}")
        cfg = build_shards.BuildConfig(demo_set="shapes", size=args.size, out=args.data, jobs=args.threads,
                                       demo_train_per_class=args.train_per_class,
                                       demo_val_per_class=args.val_per_class)
        try:
            build_shards.build(cfg)
        except build_shards.BuildError as e:
            raise AblateError(f"building the shapes set in {args.data} failed: {e}") from None
    man = mf.load(args.data)
    have = {k: man["build"].get(k) for k in want}
    if have != want:
        raise AblateError(f"--data {args.data} holds another build ({have}, need {want}): delete it, or pass "
                          "another --data.")
    if man["splits"]["train"]["num_samples"] < args.batch_size:
        raise AblateError(f"-b/--batch-size {args.batch_size} is larger than the training set "
                          f"({man['splits']['train']['num_samples']} images).")
    return man


def make_budgets(args):
    """The references (TrainConfigs) of the variants and of Figure 1: the same recipe, with their own budgets."""
    variants = reference_config(epochs=args.epochs, batch_size=args.batch_size, base_lr=args.lr,
                                milestones=[e for e in (args.lr_decay_epoch, args.lr_decay2_epoch) if e],
                                crop=args.crop, threads=args.threads, data=args.data)
    fig1_decay = max(1, round(0.75 * args.fig1_epochs)) if args.fig1_epochs > 2 else 0  # the rule its runs had
    return Budgets(variants, dataclasses.replace(variants, epochs=args.fig1_epochs,
                                                 lr_milestones=(fig1_decay,) if fig1_decay else ()))


def run_all(args, variants, budgets, fingerprint):
    """{variant name: [RunResult per seed]}, training what --runs-dir does not already hold; None when another
    process sharing --runs-dir is still training some of them (the last one to finish writes the report)."""
    args.runs_dir.mkdir(parents=True, exist_ok=True)
    results, todo = load_finished(args, variants, budgets)
    print(f"{sum(map(len, results.values()))} finished runs reused from {args.runs_dir}, {len(todo)} to train")
    others = []
    for k, (variant, seed) in enumerate(todo, 1):
        budget = budgets.of(variant)
        path, key = run_path(args, variant, seed), run_key(variant, budget, args)
        if not claim(path):
            print(f"[{k}/{len(todo)}] {variant.name} seed {seed}: being trained by another process "
                  f"({path.with_suffix('.claim')}), skipped")
            others.append((variant, seed))
            continue
        try:
            # Finished by another process since the list above was made: reuse it.
            done = load_run(path, key, quiet=True) if path.is_file() and not args.fresh else None
            if done is None:
                cfg = dataclasses.replace(variant.config(budget), seed=seed)
                print(f"[{k}/{len(todo)}] {variant.name} seed {seed}: training ({variant.label}; on a cluster: "
                      f"python cluster/launch.py {' '.join(command_line(cfg, skip=LOCAL))})", flush=True)
                done = train_variant(cfg, seed, variant=variant.name, stop_at=variant.stop_at,
                                     budget=budget_record(budget, threads=True), log=lambda m: print(m, flush=True))
                save_run(path, {"key": key, "val_shards_sha256": fingerprint, "result": done.to_json()})
            results.setdefault(variant.name, []).append(done)
        finally:
            release(path)
    if others:
        results, todo = load_finished(args, variants, budgets)
        if todo:
            print(f"{len(todo)} runs are still being trained by other processes (e.g. {todo[0][0].name} seed "
                  f"{todo[0][1]}): no report now; the last process to finish writes it, or run this command again "
                  "with --report-only once they are done.")
            return None
    for runs in results.values():
        runs.sort(key=lambda r: r.seed)  # paired by seed in the report
    return results


def main(argv=None):
    command = sys.argv[1:] if argv is None else list(argv)
    args = get_args_parser().parse_args(command)
    try:
        variants, train_order, fig1 = resolve(args)
        budgets = make_budgets(args)
        if args.plan:
            print_plan(args, *load_finished(args, train_order, budgets))
            return 0
        not_trained, untested = [], 0
        if args.report_only:
            results, todo = load_finished(args, train_order, budgets)
            if todo and args.partial:
                variants, fig1, results, not_trained, untested = finished_only(args, variants, fig1, results, todo)
            elif todo:
                raise AblateError(f"--report-only: {len(todo)} runs missing from {args.runs_dir}, e.g. "
                                  f"{', '.join(run_path(args, v, s).name for v, s in todo[:4])}: train them "
                                  "(the same command without --report-only), or pass the settings they ran with.")
            fingerprint = None
        else:
            man = ensure_data(args)
            fingerprint = [s["sha256"] for s in man["splits"]["val"]["shards"]]
    except (AblateError, mf.ManifestError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    start = time.time()
    if not args.report_only:
        results = run_all(args, train_order, budgets, fingerprint)
        if results is None:
            return 0
    minutes = (time.time() - start) / 60
    context = ReportContext(command="python -m experiments.ablation " + " ".join(command), budget=budgets.variants,
                            fig1_budget=budgets.figure1, seeds=args.seeds,
                            fig1=fig1, figure1_error=FIGURE1_ERROR, minutes=minutes, not_trained=not_trained,
                            untested_claims=untested)
    write_report(args.out, args.figures, variants, results, context=context)
    print(f"wrote {args.out} and {args.figures}/ ({minutes:.1f} min)")
    print(args.out.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
