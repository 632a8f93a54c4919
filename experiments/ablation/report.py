"""REPORT.md and its figures from the runs of study.py: per variant, mean and spread over seeds, the
paper's claim beside it, a paired test against the reference (experiments/ablation/stats.py) and the verdict its
Holm-corrected p gives."""
import dataclasses
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from experiments.ablation.figures import plot_curves, plot_figure1
from experiments.ablation.stats import ALPHA, BOOTSTRAP_DRAWS, Test, error_difference, gap_difference, holm, speed_ratio


@dataclass(frozen=True)
class Claim:
    """What the paper says about switching a technique off. sign: +1 when the paper says the error rises without
    it; `measure` is what the verdict looks at."""
    text: str
    measure: str  # "val" (validation top-1 error), "train" (clean training error), "gap" (train-val gap),
    #               "speed" (epochs to 25% training error)
    sign: int = 1


CLAIMS = {
    "tanh": Claim("ReLU reaches 25% training error ~6x faster than tanh (Fig. 1: a 4-layer net on CIFAR-10); "
                  "'several times faster' in general (sec. 3.1); tested on the Figure 1 sweep below", "speed"),
    "no_lrn": Claim("LRN lowers top-1 / top-5 error by 1.4% / 1.2% (sec. 3.3)", "val"),
    # At crop 112 this switch also changes pool5 from 2x2 to 3x3 (both are 6x6 at 224), which the adaptive pool
    # before fc6 then spreads to 6x6: fc6 sees more spatial detail without overlap. The report says so.
    "no_overlap": Claim("overlapping pooling lowers top-1 / top-5 error by 0.4% / 0.3%, and overlapping models "
                        "overfit slightly less (sec. 3.4)", "val"),
    "no_dropout": Claim("without dropout the net 'exhibits substantial overfitting'; dropout roughly doubles the "
                        "iterations needed to converge (sec. 4.2)", "gap"),
    "no_augment": Claim("without the crops and flips the net 'suffers from substantial overfitting' (sec. 4.1)", "gap"),
    "no_lighting": Claim("PCA lighting lowers top-1 error by over 1% (sec. 4.1)", "val"),
    "no_wd": Claim("weight decay 'was important for the model to learn': it lowers the training error, not only "
                   "the validation error (sec. 5)", "train"),
}


@dataclass(frozen=True)
class ReportContext:
    """What the report says about the run's settings (from experiments/ablation/study.py)."""
    command: str
    budget: object  # the variants' reference, a cluster.recipe.TrainConfig (its epochs, batch, lr, schedule, ...)
    seeds: int
    fig1: list  # the Figure 1 sweep's Variants ([] when skipped)
    figure1_error: float
    minutes: float  # trained in this invocation
    not_trained: list = dataclasses.field(default_factory=list)  # what --partial left out, as text
    untested_claims: int = 0  # claims --partial left out: each counts in Holm's correction as p = 1
    fig1_budget: object = None  # Figure 1's reference (its epochs cap a run); None: the same as `budget`

    @property
    def figure1_budget(self):
        return self.fig1_budget or self.budget


@dataclass(frozen=True)
class Row:
    """One claim tested: the variant's effect against the reference, its Holm-adjusted p and the verdict."""
    name: str
    claim: Claim
    test: Test
    p_holm: float
    verdict: str


def mean(xs):
    return float(np.mean(xs))


def spread(xs):
    """Sample standard deviation over seeds (0 with one seed)."""
    return float(np.std(xs, ddof=1)) if len(xs) > 1 else 0.0


def steps_to(run, error, budget_steps):
    """Steps to `error` training error (as trained, at epoch ends); the whole budget if never (a lower bound)."""
    e = run.epochs_to(error)
    return (e * run.steps_per_epoch if e is not None else budget_steps), e is not None


def figure1(results, fig1, error, budget_steps):
    """Per activation: (best variant, its mean steps to `error`) over the sweep, best = fewest mean steps (a run that
    never got there counts as the whole budget); and the per-rate table rows."""
    best, rows = {}, []
    for v in fig1:
        runs = results.get(v.name, [])
        steps = [steps_to(r, error, budget_steps) for r in runs]
        m = mean([s for s, _ in steps])
        act, lr = v.changes["activation"], v.changes["base_lr"]
        rows.append(f"| {act} | {lr:g} | {', '.join(str(s) if ok else f'>{s}' for s, ok in steps)} | "
                    f"{m:.0f} | {sum(r.diverged for r in runs)} |")
        if act not in best or m < best[act][1]:
            best[act] = (v, m)
    return best, rows


def claim_test(claim, variant_runs, full_runs, alpha):
    if claim.measure == "val":
        return error_difference([r.val_correct for r in variant_runs], [r.val_correct for r in full_runs], alpha=alpha)
    if claim.measure == "train":
        return error_difference([r.train_correct for r in variant_runs], [r.train_correct for r in full_runs],
                                alpha=alpha)
    return gap_difference(([r.val_correct for r in variant_runs], [r.train_correct for r in variant_runs]),
                          ([r.val_correct for r in full_runs], [r.train_correct for r in full_runs]), alpha=alpha)


def verdict(effect_sign, p_holm):
    """The rule, alone: significant after Holm's correction at ALPHA -> 'reproduced' in the paper's direction,
    'contradicted' against it; otherwise 'not visible at this scale'."""
    if p_holm > ALPHA:
        return "not visible at this scale"
    return "reproduced" if effect_sign > 0 else "contradicted"


def testable_claims(variants, fig1):
    """The claims a report over `variants` tests: every variant's with a claim; tanh's (speed) whenever the Figure 1
    sweep it is tested on is there, whether or not the tanh variant's own runs are (a partial report)."""
    names = [v.name for v in variants if v.name in CLAIMS and CLAIMS[v.name].measure != "speed"]
    return names + ([n for n, c in CLAIMS.items() if c.measure == "speed"] if fig1 else [])


def claim_tests(variants, results, context):
    """Every claim's test, Holm-corrected together: {variant name: Row}. tanh's claim (speed) is tested on the
    Figure 1 sweep, ReLU and tanh each at its best rate (tanh / ReLU steps, paired by seed)."""
    full = results["full"]
    claims = testable_claims(variants, context.fig1)
    speed = "tanh" in claims
    names = [n for n in claims if CLAIMS[n].measure != "speed"]
    # The MDE at Holm's strictest step: detected whatever its rank, among every claim planned (a partial report's
    # untested claims included, so the MDE still holds when the rest arrive).
    alpha = ALPHA / max(1, len(claims) + context.untested_claims)
    tests = {name: claim_test(CLAIMS[name], results[name], full, alpha) for name in names}
    if speed:
        cap = context.figure1_budget.epochs
        best, _ = figure1(results, context.fig1, context.figure1_error, cap * full[0].steps_per_epoch)
        steps = {a: [steps_to(r, context.figure1_error, cap * r.steps_per_epoch)[0]
                     for r in results[best[a][0].name]] for a in ("relu", "tanh")}
        tests["tanh"] = speed_ratio(steps["tanh"], steps["relu"], alpha=alpha)
        censored = sum(not steps_to(r, context.figure1_error, 0)[1] for a in ("relu", "tanh")
                       for r in results[best[a][0].name])
        if censored:  # counted at the whole budget: the ratio is then only a bound
            tests["tanh"] = dataclasses.replace(tests["tanh"], method=tests["tanh"].method + f"; {censored} runs never "
                                                "reached 25%, counted at the whole budget")
    # An untested claim enters as p = 1, the most it can be: Holm's adjusted p never rises when another p falls, so
    # today's adjusted p is an upper bound. "Reproduced" or "contradicted" now stays so as the rest arrive; "not
    # visible" may yet turn when its raw p is below 0.05.
    adjusted = holm({**{k: t.p for k, t in tests.items()},
                     **{f"(untested {i})": 1.0 for i in range(context.untested_claims)}})
    rows = {}
    for name, t in tests.items():
        effect_sign = (t.effect - 1) if CLAIMS[name].measure == "speed" else t.effect
        rows[name] = Row(name, CLAIMS[name], t, adjusted[name], verdict(effect_sign, adjusted[name]))
    return rows


def _pct(x):
    return f"{100 * x:.1f}"


def _mean_pm(xs):
    return f"{_pct(mean(xs))} ± {_pct(spread(xs))}" if len(xs) > 1 else _pct(mean(xs))


def _effect(row):
    t = row.test
    if row.claim.measure == "speed":
        return f"tanh/ReLU steps {t.effect:.2f}x [{t.low:.2f}, {t.high:.2f}]", f"{t.mde:.2f}x"
    unit = {"train": "train error", "gap": "gap"}.get(row.claim.measure, "val error")
    mde = "none: no image differs" if math.isnan(t.mde) else f"{100 * t.mde:.1f}"
    return f"{100 * t.effect:+.1f} [{100 * t.low:+.1f}, {100 * t.high:+.1f}] {unit}", mde


def schedule_text(budget, lr=True):
    """'0.0025 / 10 from epoch N, / 100 from epoch M' (1-based epochs); without `lr`, the clause ', lr / 10 from
    epoch N...' to append to a sentence, or '' when there is no drop."""
    drops = ", ".join(f"/ {10 ** (k + 1)} from epoch {e + 1}" for k, e in enumerate(budget.lr_milestones))
    if lr:
        return f"{budget.base_lr:g} {drops}".rstrip()
    return f", lr {drops}" if drops else ""


def convergence(full_runs, epochs, chance=0.9):
    """(text, converged): the reference's validation error (mean over seeds) at the start and the end of the last
    quarter of the budget; converged when it moved by less than 1 point and ended more than 10 points below chance
    (`chance`: the error of a guess)."""
    back = max(1, epochs // 4)
    if any(len(r.history) <= back for r in full_runs):
        return f"The reference ran {len(full_runs[0].history)} epochs: too few to check convergence.", False
    start = mean([r.history[-1 - back].val_top1_error for r in full_runs])
    end = mean([r.history[-1].val_top1_error for r in full_runs])
    tail = max(2, epochs // 8)  # for the reader, beside the rule: how flat the very end is
    last = [mean([r.history[-k].val_top1_error for r in full_runs]) for k in range(1, tail + 1)]
    text = (f"**Convergence:** the reference's validation error (mean over seeds) went from {_pct(start)}% after "
            f"epoch {epochs - back} to {_pct(end)}% after epoch {epochs}, the last quarter of the budget (over its "
            f"last {tail} epochs it stayed within {_pct(max(last) - min(last))} points): ")
    if end > chance - 0.1:
        # flat at chance is a plateau, not convergence (the shapes set starts with one: docs/BENCHMARKS.md)
        return text + "still within 10 points of chance, **not converged**: it has not yet learnt.", False
    moved = 100 * abs(end - start)  # points
    ok = moved < 1
    # two decimals when converged: a rounded "11.1% to 11.0%" would read as 0.1 where the move was 0.18
    return text + (f"moved by {moved:.2f} points, less than 1, **converged** by the rule." if ok else
                   f"moved by {moved:.1f} points, **not converged**: every row partly measures how "
                   "soon a variant learns, not where it would end."), ok


def table(variants, results, rows):
    out = ["| variant | val top-1 error % | clean train error % | train-val gap % | diverged | the paper's claim | "
           "effect vs full [95% CI], points | MDE | test | p | Holm p | verdict |",
           "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for v in variants:
        runs = results[v.name]
        val = [r.final_val_error for r in runs]
        train = [r.final_train_error for r in runs]
        cells = [v.label, _mean_pm(val), _mean_pm(train), _mean_pm([a - b for a, b in zip(val, train)]),
                 str(sum(r.diverged for r in runs))]
        row = rows.get(v.name)
        if row is None:
            untested = "waits for the Figure 1 sweep" if CLAIMS.get(v.name, Claim("", "")).measure == "speed" else \
                "not tested"
            cells += [CLAIMS[v.name].text if v.name in CLAIMS else "(the reference)", "", "", "", "", "",
                      untested if v.name in CLAIMS else ""]
        else:
            effect, mde = _effect(row)
            cells += [row.claim.text, effect, mde, row.test.method, f"{row.test.p:.2g}", f"{row.p_holm:.2g}",
                      row.verdict]
        out.append("| " + " | ".join(cells) + " |")
    for name in [n for n in rows if n not in {v.name for v in variants}]:  # tested on Figure 1 alone, so far
        row = rows[name]
        effect, mde = _effect(row)
        out.append("| " + " | ".join(["ReLU vs tanh (the Figure 1 sweep; the tanh variant not trained yet)", "", "", "",
                                      "", row.claim.text, effect, mde, row.test.method, f"{row.test.p:.2g}",
                                      f"{row.p_holm:.2g}", row.verdict]) + " |")
    return "\n".join(out)


RULE = ("**Verdict rule.** Each claim is one test of the variant against the reference on the same images with the "
        "same seeds: the validation (or, for weight decay, clean training) error and the train-val gap (the two "
        "overfitting claims) by a paired bootstrap over seeds and images, which counts how much another seed "
        "changes the result as well as which images were drawn (McNemar's test pooled over seeds does not: it "
        f"called differences between seeds significant) ({BOOTSTRAP_DRAWS} draws: its p is never reported below "
        f"1/{BOOTSTRAP_DRAWS} = {1 / BOOTSTRAP_DRAWS:g}, the resolution); ReLU vs tanh by a paired t-test over "
        "seeds on log(tanh steps / ReLU steps) to 25% training error, each activation at its best rate of the "
        "Figure 1 sweep. The p-values are Holm-corrected across the claims (any not yet tested count at p = 1); "
        "Holm p <= 0.05 in the paper's direction is **reproduced**, against it **contradicted**, otherwise **not "
        "visible at this scale**, nothing else decides. Intervals: 95% paired bootstrap over seeds and images "
        "(speed: the t-interval of the geometric mean ratio). MDE: the smallest effect the test would detect with "
        "80% power at 0.05 / (claims), the strictest Holm step, at this sample size (from the bootstrap's standard "
        "error; with 4 seeds that error is itself rough).")


def write_report(path, figures_dir, variants, results, *, context):
    """Write the markdown report and the figures; `context` (a ReportContext) gives the run's settings."""
    path, figures_dir = Path(path), Path(figures_dir)
    figures_dir.mkdir(parents=True, exist_ok=True)
    b, full = context.budget, results["full"]
    n_val, n_train = len(full[0].val_correct), len(full[0].train_correct)
    steps = full[0].steps_per_epoch
    rows = claim_tests(variants, results, context)
    plot_curves({v.name: results[v.name] for v in variants}, {v.name: v.label for v in variants},
                figures_dir / "curves.png")
    rel = Path(os.path.relpath(figures_dir, path.parent))  # the markdown links work from the report's folder
    text = (f"# Ablations: the paper's techniques, one at a time\n\nMade by `{context.command}` on the embedded shapes "
            f"set ({n_train} training and {n_val} validation images, 10 classes, chance = 90% error). "
            f"{len(variants)} variants x {context.seeds} seeds (0..{context.seeds - 1}, the same for every variant), "
            f"{b.epochs} epochs each ({steps} steps of {b.batch_size}), lr "
            + schedule_text(b)
            + f" for every variant (the lr rule: the reference's rate for all; only Figure 1 sweeps), momentum "
            f"{b.momentum}, {b.init} init, input normalisation '{b.normalize}' (pipeline/stats.py), weight decay on "
            "weights only. "
            f"**Crop {b.crop}** of {round(b.crop * 256 / 224)} (the paper: 224 of 256), smaller to afford the seeds "
            "and a converged reference on 2 cores. Errors are top-1, in %, mean ± sample std over seeds, after the "
            "last epoch; clean train error: centre crop, dropout off, every training image once.\n\n")
    if context.not_trained:
        text += (f"**Not in this report**, not every seed trained yet: {'; '.join(context.not_trained)}. The same "
                 "command without `--report-only --partial` trains them, resuming from the runs folder. Holm's "
                 "correction counts each claim not tested yet at p = 1, the most it can be, so a Holm p below can only "
                 "fall as the rest arrive: a claim reproduced or contradicted here stays so, one not visible with a "
                 "raw p below 0.05 may yet turn.\n\n")
    text += convergence(full, b.epochs)[0] + "\n\n" + table(variants, results, rows) + "\n\n" + RULE + "\n\n"
    text += f"![training curves per variant]({rel}/curves.png)\n\n"
    if context.fig1:
        budget_steps = context.figure1_budget.epochs * steps
        best, fig_rows = figure1(results, context.fig1, context.figure1_error, budget_steps)
        rates = ", ".join(f"{v.changes['base_lr']:g}" for v in context.fig1 if v.changes["activation"] == "relu")
        plot_figure1(results[best["relu"][0].name], results[best["tanh"][0].name],
                     figures_dir / "figure1_relu_tanh.png", context.figure1_error)
        text += ("## Figure 1 as the paper ran it\n\nNo dropout, no weight decay, no augmentation (centre crops, "
                 "no lighting); ReLU and tanh each at the rates "
                 f"{rates}; a run stops at "
                 f"{100 * context.figure1_error:.0f}% training error (as trained, measured at epoch ends, so steps "
                 f"are multiples of {steps}), at most {context.figure1_budget.epochs} epochs"
                 + schedule_text(context.figure1_budget, lr=False)
                 + ". Best rate: fewest mean steps.\n\n"
                 "| activation | lr | steps to 25% per seed | mean | diverged |\n| --- | --- | --- | --- | --- |\n"
                 + "\n".join(fig_rows) + "\n\n"
                 f"Best: ReLU at lr {best['relu'][0].changes['base_lr']:g} ({best['relu'][1]:.0f} steps), tanh at lr "
                 f"{best['tanh'][0].changes['base_lr']:g} ({best['tanh'][1]:.0f} steps)"
                 + (f"; the test is in the tanh row above ({rows['tanh'].verdict})." if "tanh" in rows else ".")
                 + " A best rate at the edge of the sweep means a wider sweep could find a faster one. Choosing the "
                 "best rate and testing on the same runs favours each arm a little, both alike.\n\n"
                 f"![ReLU vs tanh, Figure 1 style]({rel}/figure1_relu_tanh.png)\n\n")
    every = [r for runs in results.values() for r in runs]
    commits = sorted({r.commit or "unknown" for r in every})
    text += (f"Training time of all {len(every)} runs: {sum(r.seconds for r in every) / 60:.0f} min (trained in this "
             f"invocation: {context.minutes:.0f} min), made at commit(s) {', '.join(commits)}. Per-run results "
             "(per-image correctness included) are in the runs folder (experiments/ablation/runs/ for the full run, "
             "committed); the same command with `--report-only` rebuilds this page from them alone.\n\n"
             "What differs from the paper besides the scale: a small "
             "crop with an adaptive 6x6 pool before fc6, so the no-overlap row also changes pool5's input and gives "
             "fc6 more spatial detail; Kaiming (fan-out) convolutions instead of N(0, 0.01); 10 classes of shapes, "
             "not 1000 of photographs; Figure 1 on this AlexNet, not the paper's 4-layer CIFAR-10 net.\n")
    path.write_text(text)
    return rows
