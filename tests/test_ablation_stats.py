"""bench/ablation_stats.py on hand-made cases whose answers are known."""
import math

import numpy as np
import pytest
from scipy import stats

from bench.ablation_stats import (
    error_difference,
    gap_difference,
    holm,
    mcnemar_exact,
    mde_mcnemar,
    paired_bootstrap,
    speed_ratio,
)


@pytest.mark.parametrize("b, c, p", [
    (2, 10, 2 * (1 + 12 + 66) / 2 ** 12),  # 2 * P(X <= 2), X ~ Binomial(12, 1/2)
    (0, 5, 2 / 2 ** 5),
    (10, 2, 2 * (1 + 12 + 66) / 2 ** 12),  # symmetric
    (5, 5, 1.0),
    (0, 0, 1.0),  # no discordant pair: no evidence
])
def test_mcnemar_exact_p_values(b, c, p):
    assert mcnemar_exact(b, c) == pytest.approx(p, rel=1e-12)


def test_holm_multiplies_by_rank_and_keeps_the_order():
    assert holm({"a": 0.01, "b": 0.04, "c": 0.03}) == pytest.approx({"a": 0.03, "c": 0.06, "b": 0.06})
    # a later, smaller product never undercuts an earlier one (step-down: non-decreasing in the p order)
    assert holm({"x": 0.02, "y": 0.021, "z": 0.5}) == pytest.approx({"x": 0.06, "y": 0.06, "z": 0.5})
    assert holm({"one": 0.7, "two": 0.9}) == pytest.approx({"one": 1.0, "two": 1.0})  # capped at 1
    assert holm({"only": 0.03}) == {"only": 0.03}


def bits(wrong_at, n):
    return "".join("0" if i in wrong_at else "1" for i in range(n))


def test_error_difference_pools_the_discordant_pairs_over_seeds():
    n = 200
    # seed 0: the variant is wrong on 0..9 where the reference is right, right on 100..101 where it is wrong
    reference = [bits({100, 101, 150}, n), bits({100, 150}, n)]
    variant = [bits(set(range(10)) | {150}, n), bits(set(range(5)) | {100, 150}, n)]
    t = error_difference(variant, reference)
    assert t.p == pytest.approx(mcnemar_exact(15, 2))  # 10 + 5 worse, 2 + 0 better; the shared error 150 is concordant
    assert t.effect == pytest.approx((15 - 2) / (2 * n))
    assert t.low < t.effect < t.high and t.low > 0  # 13 of 400 pairs, all from discordant images: clearly positive
    assert t.mde == pytest.approx(mde_mcnemar(17, 2 * n))
    with pytest.raises(ValueError, match="same seeds and images"):
        error_difference(variant[:1], reference)


def test_no_difference_is_not_significant():
    same = [bits({1, 2, 3}, 50)] * 4
    t = error_difference(same, same)
    assert t.effect == 0 and t.p == 1.0 and t.low == 0 == t.high


def test_mde_shrinks_with_the_sample_and_grows_with_the_discordance():
    assert mde_mcnemar(40, 4000) < mde_mcnemar(40, 1000)
    assert mde_mcnemar(400, 4000) > mde_mcnemar(40, 4000)
    # 80% power at 0.05: (1.96 + 0.84) * sqrt(discordant) / pairs
    assert mde_mcnemar(100, 1000) == pytest.approx((1.959964 + 0.841621) * 10 / 1000, rel=1e-5)


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
