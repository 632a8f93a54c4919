"""The paired statistics of the ablation report: every variant is scored on the same images as the reference, with
the same seeds, so the tests compare them image by image (a paired bootstrap over seeds and images; a paired t-test
over seeds for speed), with Holm's correction across the paper's claims and the minimum detectable effect."""
import math
from dataclasses import dataclass

import numpy as np
from scipy import stats

ALPHA = 0.05
POWER = 0.8
BOOTSTRAP_DRAWS = 4000  # a bootstrap p is never reported below 1 / draws, its resolution


def wrong(bits):
    """A '0'/'1' correctness string (experiments/ablation/train.py) as a 0/1 array of errors."""
    return np.frombuffer(bits.encode(), dtype=np.uint8) == ord("0")


def holm(pvalues):
    """Holm's step-down adjusted p-values ({name: p} -> {name: adjusted p}): the k-th smallest is multiplied by
    (m - k + 1), then made non-decreasing in that order and capped at 1. Reject where adjusted p <= alpha."""
    order = sorted(pvalues, key=pvalues.get)
    m, running, out = len(order), 0.0, {}
    for k, name in enumerate(order):
        running = max(running, min(1.0, (m - k) * pvalues[name]))
        out[name] = running
    return out


def paired_bootstrap(parts, *, draws=BOOTSTRAP_DRAWS, seed=0):
    """Bootstrap over seeds and images of an effect that is a signed sum of mean paired differences.

    parts: [(sign, D)], D a (seeds x images) array of variant-minus-reference per-image errors (-1, 0, 1), all with
    the same seeds in the same order (row s of every D is seed s); each part's images are resampled on their own
    (a validation and a training set), the seeds together. Returns (effect, low, high, p, se): the 95% percentile
    interval, and the two-sided p of the interval that just touches 0 (never below 1 / draws: the resolution)."""
    rng = np.random.default_rng(seed)
    n_seeds = parts[0][1].shape[0]
    effect = sum(sign * d.mean() for sign, d in parts)
    samples = np.zeros(draws)
    for sign, d in parts:
        # Seeds and images resampled independently: a row is one run (seed), a column one test image.
        s = rng.integers(0, n_seeds, size=(draws, n_seeds))
        per_seed_image = rng.integers(0, d.shape[1], size=(draws, d.shape[1]))
        for k in range(draws):
            samples[k] += sign * d[s[k]][:, per_seed_image[k]].mean()
    low, high = np.quantile(samples, [ALPHA / 2, 1 - ALPHA / 2])
    p = min(1.0, max(1 / draws, 2 * min(np.mean(samples <= 0), np.mean(samples >= 0))))
    return float(effect), float(low), float(high), float(p), float(samples.std(ddof=1))


def mde_normal(se, alpha=ALPHA):
    """Smallest effect a two-sided test at `alpha` detects with 80% power when the estimate's standard error is se.
    nan where se is 0: every bootstrap draw gave the same effect because no image differed between the arms (both
    fit the training set, say), which says nothing of the test's power; an MDE of 0 would claim perfect power."""
    if se == 0:
        return math.nan
    return float((stats.norm.ppf(1 - alpha / 2) + stats.norm.ppf(POWER)) * se)


@dataclass(frozen=True)
class Test:
    """One claim's effect (variant minus reference, in the measure's units), its 95% interval, raw p and the MDE."""
    effect: float
    low: float
    high: float
    p: float
    mde: float
    method: str


def error_difference(variant_bits, reference_bits, *, alpha=ALPHA):
    """Paired comparison of error rates on one image set, seeds paired by index: the paired bootstrap over seeds
    and images gives the interval and the p. Not McNemar's test pooled over seeds: it takes the four trained nets
    as given and ignores how much another seed changes them, so it called no LRN's +2.8 points (per seed +5.8,
    -4.8, +1.8, +8.5) significant at p = 3e-5 while the bootstrap's 95% interval was [-2.4, +7.7]."""
    v = np.array([wrong(b) for b in variant_bits], dtype=np.int8)
    r = np.array([wrong(b) for b in reference_bits], dtype=np.int8)
    if v.shape != r.shape:
        raise ValueError(f"paired runs need the same seeds and images: {v.shape} vs {r.shape}")
    worse = int(((v == 1) & (r == 0)).sum())  # the variant wrong where the reference was right
    better = int(((v == 0) & (r == 1)).sum())
    effect, low, high, p, se = paired_bootstrap([(1, v - r)])
    return Test(effect, low, high, p, mde_normal(se, alpha),
                f"paired bootstrap (seeds, images); {worse} vs {better} discordant of {v.size} pairs")


def gap_difference(variant, reference, *, alpha=ALPHA):
    """Paired comparison of the train-val gap (val error - clean train error): variant and reference are
    ([val bits per seed], [train bits per seed]); the paired bootstrap gives the interval and the p."""
    parts = []
    for sign, k in ((1, 0), (-1, 1)):
        v = np.array([wrong(b) for b in variant[k]], dtype=np.int8)
        r = np.array([wrong(b) for b in reference[k]], dtype=np.int8)
        if v.shape != r.shape:
            raise ValueError(f"paired runs need the same seeds and images: {v.shape} vs {r.shape}")
        parts.append((sign, v - r))
    effect, low, high, p, se = paired_bootstrap(parts)
    return Test(effect, low, high, p, mde_normal(se, alpha), "paired bootstrap (seeds, images)")


def speed_ratio(slow_steps, fast_steps, *, alpha=ALPHA):
    """Steps to a training error, one arm over the other, paired by seed: a t-test on the log ratios (H0: ratio 1).
    Effect, interval and MDE are ratios (the geometric mean and its 95% t-interval)."""
    logs = np.log(np.asarray(slow_steps, float) / np.asarray(fast_steps, float))
    n = len(logs)
    if n < 2:
        return Test(float(np.exp(logs.mean())), math.nan, math.nan, 1.0, math.nan, "t-test on log ratios (1 seed)")
    se = logs.std(ddof=1) / math.sqrt(n)
    t = stats.t.ppf(1 - ALPHA / 2, n - 1)
    p = 1.0 if se == 0 and logs.mean() == 0 else (0.0 if se == 0 else float(2 * stats.t.sf(abs(logs.mean() / se),
                                                                                             n - 1)))
    mde = (stats.t.ppf(1 - alpha / 2, n - 1) + stats.t.ppf(POWER, n - 1)) * se
    return Test(float(np.exp(logs.mean())), float(np.exp(logs.mean() - t * se)), float(np.exp(logs.mean() + t * se)),
                p, float(np.exp(mde)), f"paired t-test on log ratios, {n} seeds")
