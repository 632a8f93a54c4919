"""experiments/ablation/stats.py on hand-made cases whose answers are known."""
import math

import numpy as np
import pytest
from scipy import stats

from experiments.ablation.stats import (
    error_difference,
    gap_difference,
    holm,
    mde_normal,
    paired_bootstrap,
    speed_ratio,
)


def test_holm_multiplies_by_rank_and_keeps_the_order():
    assert holm({"a": 0.01, "b": 0.04, "c": 0.03}) == pytest.approx({"a": 0.03, "c": 0.06, "b": 0.06})
    # a later, smaller product never undercuts an earlier one (step-down: non-decreasing in the p order)
    assert holm({"x": 0.02, "y": 0.021, "z": 0.5}) == pytest.approx({"x": 0.06, "y": 0.06, "z": 0.5})
    assert holm({"one": 0.7, "two": 0.9}) == pytest.approx({"one": 1.0, "two": 1.0})  # capped at 1
    assert holm({"only": 0.03}) == {"only": 0.03}


def bits(wrong_at, n):
    return "".join("0" if i in wrong_at else "1" for i in range(n))


def test_error_difference_is_the_paired_bootstrap_of_the_per_image_differences():
    n = 200
    # seed 0: the variant is wrong on 0..9 where the reference is right, right on 100..101 where it is wrong
    reference = [bits({100, 101, 150}, n), bits({100, 150}, n)]
    variant = [bits(set(range(10)) | {150}, n), bits(set(range(5)) | {100, 150}, n)]
    t = error_difference(variant, reference)
    assert t.effect == pytest.approx((15 - 2) / (2 * n))  # 10 + 5 worse, 2 + 0 better; the shared error 150 is not
    assert "15 vs 2 discordant of 400 pairs" in t.method
    assert t.low < t.effect < t.high and t.low > 0 and t.p < 0.05  # both seeds worse: the interval excludes 0
    diffs = np.array([[int(a == "0") - int(b == "0") for a, b in zip(v, r)] for v, r in zip(variant, reference)])
    _, low, high, p, se = paired_bootstrap([(1, diffs)])
    assert (t.low, t.high, t.p) == (low, high, p) and t.mde == pytest.approx(mde_normal(se))
    with pytest.raises(ValueError, match="same seeds and images"):
        error_difference(variant[:1], reference)


def test_seeds_that_disagree_are_not_a_significant_difference():
    """The case that retired McNemar's test pooled over seeds: per seed the variant is 60, -50, 20 and 90 images
    worse of 1000. Pooled, 170 worse vs 50 better pairs is p ~ 1e-16; but another seed could as well go the other
    way, and the bootstrap over seeds says so."""
    reference = [bits(set(range(200)), 1000)] * 4
    variant = [bits(set(range(200 + d)), 1000) for d in (60, -50, 20, 90)]
    t = error_difference(variant, reference)
    assert t.effect == pytest.approx(0.03) and t.low < 0 < t.high and t.p > 0.1


def test_no_difference_is_not_significant():
    same = [bits({1, 2, 3}, 50)] * 4
    t = error_difference(same, same)
    assert t.effect == 0 and t.p == 1.0 and t.low == 0 == t.high
    assert math.isnan(t.mde)  # no image differs: the bootstrap's zero spread says nothing of the test's power


def test_mde_is_the_80_percent_power_distance_in_standard_errors():
    # 80% power at 0.05: (1.96 + 0.84) standard errors; a stricter alpha (Holm's first step) asks for more
    assert mde_normal(0.01) == pytest.approx((1.959964 + 0.841621) * 0.01, rel=1e-5)
    assert mde_normal(0.01, alpha=0.05 / 7) > mde_normal(0.01)


def test_gap_difference_is_the_val_change_minus_the_train_change():
    n = 100
    ref = ([bits(set(range(20)), n)] * 2, [bits(set(range(10)), n)] * 2)  # val 20%, train 10%: gap 10
    var = ([bits(set(range(25)), n)] * 2, [bits(set(), n)] * 2)  # val 25%, train 0%: gap 25
    t = gap_difference(var, ref)
    assert t.effect == pytest.approx(0.15) and t.low > 0 and t.p < 0.01


def test_bootstrap_interval_covers_the_mean_difference():
    rng = np.random.default_rng(1)
    d = (rng.random((4, 500)) < 0.1).astype(np.int8) - (rng.random((4, 500)) < 0.1).astype(np.int8)
    effect, low, high, p, se = paired_bootstrap([(1, d)])
    assert effect == pytest.approx(d.mean()) and low < effect < high and se > 0 and 0 < p <= 1


def test_speed_ratio_is_a_paired_t_test_on_log_ratios():
    tanh, relu = [400, 500, 600, 800], [100, 100, 100, 100]
    t = speed_ratio(tanh, relu)
    logs = np.log(np.array(tanh) / relu)
    assert t.p == pytest.approx(stats.ttest_1samp(logs, 0).pvalue)
    assert t.effect == pytest.approx(math.exp(logs.mean())) and t.low < t.effect < t.high
    assert speed_ratio([100], [100]).p == 1.0  # one seed: no test
