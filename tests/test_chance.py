"""The plateau rule spends no lr decay before the validation error first leaves chance, and says so when it does not."""
import math

import pytest

from cluster.chance import NOISE_SIGMAS, STUCK_AFTER_EPOCHS, ChanceLevel, stuck_message
from cluster.loop import LrSchedule


def test_chance_level_is_the_binomial_noise_of_a_guessing_net():
    level = ChanceLevel(num_classes=1000, val_images=50_000)
    assert level.error == pytest.approx(0.999)
    assert level.noise == pytest.approx(math.sqrt(0.999 * 0.001 / 50_000))
    assert level.threshold == pytest.approx(0.999 - NOISE_SIGMAS * level.noise)
    assert not level.left(0.9989)  # within the noise: a guessing net measures this
    assert level.left(0.998)
    small = ChanceLevel(num_classes=10, val_images=100)  # a small set's noise is wide: 0.9 +- 0.03
    assert not small.left(0.85) and small.left(0.80)


def test_a_run_stuck_at_chance_spends_no_decay():
    """1,000 classes, the error at chance for 12 epochs after a 1-epoch warmup: torch's rule alone divides the lr
    three times (patience 2) and the run is over; with the chance rule the lr stays."""
    stuck = [0.9992, 0.9990, 0.9991, 0.9990, 0.9990, 0.9993, 0.9990, 0.9991, 0.9990, 0.9992, 0.9990, 0.9991]
    old = LrSchedule(base_lr=0.01, warmup_epochs=1, patience=2)
    assert sum(old.end_epoch(e, err, 50_000) for e, err in enumerate(stuck)) == 3  # the old rule's silent end
    s = LrSchedule(base_lr=0.01, warmup_epochs=1, patience=2, num_classes=1000)
    assert not any(s.end_epoch(e, err, 50_000) for e, err in enumerate(stuck))
    assert s.decays == 0 and not s.left_chance
    assert s.epochs_at_chance == len(stuck) - 1  # the warmup epoch is not counted
    assert s.lr(0.01, len(stuck)) == pytest.approx(0.01)


def test_the_plateau_rule_counts_from_the_first_real_improvement():
    s = LrSchedule(base_lr=0.01, warmup_epochs=0, patience=2, num_classes=10)
    errors = [0.90, 0.89, 0.88, 0.70, 0.70, 0.70, 0.70]  # chance 0.9 +- 0.03 on 100 images: 0.70 is the first
    decays = [s.end_epoch(e, err, 100) for e, err in enumerate(errors)]
    assert decays == [False, False, False, False, False, False, True]
    assert s.left_chance and s.epochs_at_chance == 3 and s.best == pytest.approx(0.70)


def test_the_chance_state_survives_a_checkpoint():
    s = LrSchedule(base_lr=0.01, warmup_epochs=0, patience=0, num_classes=10)
    for e in range(4):
        s.end_epoch(e, 0.9, 100)
    resumed = LrSchedule(base_lr=0.01, warmup_epochs=0, patience=0, num_classes=10)
    resumed.load_state_dict(s.state_dict())
    assert resumed.epochs_at_chance == 4 and not resumed.left_chance
    assert not resumed.end_epoch(4, 0.9, 100)  # still at chance: still no decay
    old_checkpoint = {k: v for k, v in s.state_dict().items() if k not in ("left_chance", "epochs_at_chance")}
    LrSchedule(base_lr=0.01, warmup_epochs=0, num_classes=10).load_state_dict(old_checkpoint)  # loads


def test_without_the_set_size_the_rule_is_torchs():
    s = LrSchedule(base_lr=0.01, warmup_epochs=0, patience=0, num_classes=1000)
    s.end_epoch(0, 0.999)
    assert s.end_epoch(1, 0.999)  # no val_images: every epoch counts, as before


def test_the_stuck_message_says_what_it_means_and_what_to_try():
    level = ChanceLevel(1000, 50_000)
    paper = stuck_message(STUCK_AFTER_EPOCHS, 0.999, level, "paper")
    assert "0.9990" in paper and "not started to learn" in paper and "--preset demo" in paper
    assert "1 - 1/1000" in paper and "50,000 images" in paper
    assert "--lr" in stuck_message(STUCK_AFTER_EPOCHS, 0.9, ChanceLevel(10, 100), "demo")
