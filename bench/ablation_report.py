"""docs/ABLATIONS.md and its figures from the runs of bench/ablate.py: per variant, mean and spread over seeds, the
paper's claim beside it, and a verdict decided by one stated rule."""
import math
import os
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

FIGURE1_ERROR = 0.25  # the paper's Figure 1 threshold: epochs to 25% training error


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
                  "'several times faster' in general (sec. 3.1)", "speed"),
    "no_lrn": Claim("LRN lowers top-1 / top-5 error by 1.4% / 1.2% (sec. 3.3)", "val"),
    # At crop 112 this switch also changes pool5 from 2x2 to 3x3 (both are 6x6 at 224), which the adaptive pool
    # before fc6 then spreads to 6x6: fc6 sees more spatial detail without overlap. ABLATIONS.md says so.
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
    """What the report says about the run's settings (from bench/ablate.py)."""
    header: str
    rule: str
    footer: str
    epochs: int
    val_images: int
    train_images: int
    steps_per_epoch: int


@dataclass
class Summary:
    """One variant over its seeds."""
    name: str
    label: str
    seeds: int
    val: list  # final validation top-1 error per seed
    train: list  # final clean training error per seed
    to25: list  # epochs to 25% training error per seed (None: not within the budget)
    seconds: list
    val_images: int
    train_images: int

    @property
    def gap(self):
        return [v - t for v, t in zip(self.val, self.train)]


def mean(xs):
    return float(np.mean(xs))


def spread(xs):
    """Sample standard deviation over seeds (0 with one seed)."""
    return float(np.std(xs, ddof=1)) if len(xs) > 1 else 0.0


def _rate(p, images):
    """An error rate pulled off 0 and 1 by one pseudo-count each ((k+1)/(n+2)), so a measured 0% still has noise."""
    return (p * images + 1) / (images + 2)


def noise_of_difference(values_a, values_b, rates_a, rates_b, images):
    """Standard error of mean(values_a) - mean(values_b) over seeds: from the seeds' spreads, but never below what
    one finite evaluation set of `images` gives on its own (the binomial standard error of the error rates the values
    come from). Every seed is scored on the same images, so more seeds do not shrink that floor, and two seeds can
    agree by chance."""
    se_seeds = math.sqrt(spread(values_a) ** 2 / len(values_a) + spread(values_b) ** 2 / len(values_b))
    pa, pb = _rate(mean(rates_a), images), _rate(mean(rates_b), images)
    se_binomial = math.sqrt(pa * (1 - pa) / images + pb * (1 - pb) / images)
    return max(se_seeds, se_binomial)


def _speed_ratio(variant, full, epochs):
    """Mean epochs to 25% training error, variant / full recipe; a not-reached run counts as the whole budget
    (so the ratio is then a lower bound, marked '>')."""
    v = [e if e is not None else epochs for e in variant.to25]
    f = [e if e is not None else epochs for e in full.to25]
    return mean(v) / mean(f), any(e is None for e in variant.to25), any(e is None for e in full.to25)


def difference(claim, variant, full):
    """(mean of variant - mean of full recipe, its standard error) on the measure the claim is about."""
    if claim.measure == "train":
        a, b, rates, images = variant.train, full.train, (variant.train, full.train), full.train_images
    elif claim.measure == "gap":  # the gap's noise is dominated by the validation set's
        a, b, rates, images = variant.gap, full.gap, (variant.val, full.val), full.val_images
    else:
        a, b, rates, images = variant.val, full.val, (variant.val, full.val), full.val_images
    return mean(a) - mean(b), noise_of_difference(a, b, *rates, images)


def verdict(claim, variant, full, epochs):
    """The rule: the measured difference (variant - full recipe) must exceed twice its standard error
    (noise_of_difference) to count; in the paper's direction it is 'reproduced', against it 'contradicted', else
    'not visible at this scale'. For the speed claim: reproduced when the full recipe (ReLU) reaches 25% training
    error at least 2x sooner ('several times faster'), contradicted when not sooner at all."""
    if claim.measure == "speed":
        ratio, _, full_missing = _speed_ratio(variant, full, epochs)
        if full_missing:  # ReLU never got there: tanh doing so contradicts the claim, else nothing is shown
            return "contradicted" if all(e is not None for e in variant.to25) else "not visible at this scale"
        return "reproduced" if ratio >= 2 else ("contradicted" if ratio <= 1 else "not visible at this scale")
    diff, noise = difference(claim, variant, full)
    if abs(diff) <= 2 * noise:
        return "not visible at this scale"
    return "reproduced" if diff * claim.sign > 0 else "contradicted"


def _pct(x):
    return f"{100 * x:.1f}"


def _mean_pm(xs):
    return f"{_pct(mean(xs))} ± {_pct(spread(xs))}" if len(xs) > 1 else _pct(mean(xs))


def _epochs_to(summary, epochs):
    got = [str(e) if e is not None else f">{epochs}" for e in summary.to25]
    return ", ".join(got)


def measured(claim, variant, full, epochs):
    """The variant's effect on the measure its claim is about, as text."""
    if claim.measure == "speed":
        ratio, lower_bound, full_missing = _speed_ratio(variant, full, epochs)
        return "ReLU never reached 25%" if full_missing else f"{'>' if lower_bound else ''}{ratio:.1f}x the epochs"
    what = {"train": "train error", "gap": "gap"}.get(claim.measure, "val error")
    diff, noise = difference(claim, variant, full)
    return f"{100 * diff:+.1f} ± {200 * noise:.1f} {what}"


def still_improving(full_runs, epochs):
    """A warning when the reference's validation error was still falling steeply over the last quarter of the budget
    (by more than 5 points, mean over seeds): the verdicts then partly measure how fast each variant learns, not
    where it ends. '' otherwise."""
    back = max(1, epochs // 4)
    if any(len(r.history) <= back for r in full_runs):
        return ""
    fall = mean([r.history[-1 - back].val_top1_error - r.history[-1].val_top1_error for r in full_runs])
    if fall <= 0.05:
        return ""
    return (f"**Read with care:** the full recipe's validation error was still falling at the end of the budget "
            f"({100 * fall:.0f} points over the last {back} epochs, mean over seeds), so every row partly measures "
            "how soon a variant learns, not only where it would end.\n\n")


def _first_epochs(runs, train_error, epochs):
    """Per seed, the first epoch at or below `train_error` (as trained), as text."""
    return ", ".join(str(e) if e is not None else f">{epochs}" for e in (r.epochs_to(train_error) for r in runs))


def table(summaries, epochs):
    full = summaries[0]
    rows = ["| variant | val top-1 error % | final train error % | train-val gap % | epochs to 25% train error | "
            "time / run | effect vs full (± 2 SE) | the paper's claim | verdict |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for s in summaries:
        claim = CLAIMS.get(s.name)
        effect = measured(claim, s, full, epochs) if claim else ""
        rows.append(f"| {s.label} | {_mean_pm(s.val)} | {_mean_pm(s.train)} | {_mean_pm(s.gap)} | "
                    f"{_epochs_to(s, epochs)} | {mean(s.seconds) / 60:.1f} min | {effect} | "
                    f"{claim.text if claim else '(the reference)'} | "
                    f"{verdict(claim, s, full, epochs) if claim else ''} |")
    return "\n".join(rows)


def plot_curves(results_by_variant, labels, path):
    """One panel per variant: training error (as trained) and validation top-1 error vs epoch, every seed."""
    n = len(results_by_variant)
    cols = min(4, n)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3.2 * rows), squeeze=False, sharey=True)
    for ax, (name, runs) in zip(axes.flat, results_by_variant.items()):
        for i, r in enumerate(runs):
            epochs = [h.epoch for h in r.history]
            ax.plot(epochs, [h.train_error for h in r.history], color="tab:blue", alpha=0.8,
                    label="train (as trained)" if i == 0 else None)
            ax.plot(epochs, [h.val_top1_error for h in r.history], color="tab:red", alpha=0.8,
                    label="val top-1" if i == 0 else None)
        ax.set(title=labels[name], xlabel="epoch", ylim=(0, 1))
        ax.grid(alpha=0.3)
    for ax in axes.flat[n:]:
        ax.axis("off")
    axes[0, 0].set_ylabel("error")
    axes[0, 0].legend(loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def plot_figure1(relu_runs, tanh_runs, path):
    """The paper's Figure 1: training error vs epoch, ReLU solid, tanh dashed, the 25% line."""
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for runs, style, name in ((relu_runs, "-", "ReLU"), (tanh_runs, "--", "tanh")):
        for i, r in enumerate(runs):
            ax.plot([h.epoch for h in r.history], [h.train_error for h in r.history], style, color="k",
                    alpha=0.9 if i == 0 else 0.45, label=name if i == 0 else None)
    ax.axhline(FIGURE1_ERROR, color="tab:gray", lw=0.8)
    ax.set(xlabel="epoch", ylabel="training error rate (as trained)", ylim=(0, 1),
           title="ReLU (solid) vs tanh (dashed), as in the paper's Figure 1")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def summarise(variants, results, val_images, train_images):
    out = []
    for v in variants:
        runs = results[v.name]
        out.append(Summary(v.name, v.label, len(runs), [r.final_val_error for r in runs],
                           [r.final_train_error for r in runs], [r.epochs_to(FIGURE1_ERROR) for r in runs],
                           [r.seconds for r in runs], val_images, train_images))
    return out


def write_report(path, figures_dir, variants, results, *, context):
    """Write the markdown table and the figures; `context` (a ReportContext) gives the run's settings."""
    path, figures_dir = Path(path), Path(figures_dir)
    figures_dir.mkdir(parents=True, exist_ok=True)
    labels = {v.name: v.label for v in variants}
    summaries = summarise(variants, results, context.val_images, context.train_images)
    epochs = context.epochs
    plot_curves({v.name: results[v.name] for v in variants}, labels, figures_dir / "curves.png")
    figure1 = "tanh" in results
    if figure1:
        plot_figure1(results[variants[0].name], results["tanh"], figures_dir / "figure1_relu_tanh.png")
    rel = Path(os.path.relpath(figures_dir, path.parent))  # the markdown links work from the report's folder
    speed = ""
    if figure1:
        tanh = next(s for s in summaries if s.name == "tanh")
        ratio, lower_bound, full_missing = _speed_ratio(tanh, summaries[0], epochs)
        speed = (f"\nEpochs to 25% training error (as trained): ReLU {_epochs_to(summaries[0], epochs)}, tanh "
                 f"{_epochs_to(tanh, epochs)} (per seed); steps = epochs x {context.steps_per_epoch}. "
                 + ("ReLU did not reach 25% within the budget, so no ratio." if full_missing else
                    f"tanh / ReLU = {'>' if lower_bound else ''}{ratio:.1f}x (the paper: ~6x).")
                 + " To 50% (an earlier point of the same curves): ReLU "
                 f"{_first_epochs(results['full'], 0.5, epochs)}, tanh "
                 f"{_first_epochs(results['tanh'], 0.5, epochs)}.\n")
    text = context.header + "\n\n" + still_improving(results[variants[0].name], epochs) + table(summaries, epochs)
    text += "\n" + speed + "\n" + context.rule + "\n\n"
    text += f"![training curves per variant]({rel}/curves.png)\n"
    if figure1:
        text += f"\n![ReLU vs tanh, Figure 1 style]({rel}/figure1_relu_tanh.png)\n"
    text += "\n" + context.footer + "\n"
    path.write_text(text)
    return summaries
