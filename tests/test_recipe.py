"""The recipe per image at any replica count: lr scaling with the global batch, warmup, plateau decay on the scaled
rate, and the schedule state that survives a restart with another world size."""
import pytest

from cluster.config import PRESETS, default_warmup_epochs, scaled_lr
from cluster.loop import LrSchedule


@pytest.mark.parametrize("replicas, batch, expected", [(1, 128, 0.01), (4, 128, 0.04), (16, 128, 0.16),
                                                       (4, 32, 0.01), (2, 8, 0.00125)])
def test_linear_scaling_follows_the_global_batch(replicas, batch, expected):
    assert scaled_lr(0.01, replicas * batch, "linear") == pytest.approx(expected)
    assert scaled_lr(0.01, replicas * batch, "none") == 0.01


def test_warmup_only_when_the_scaled_rate_is_larger():
    assert default_warmup_epochs(0.01, 0.04) == 5
    assert default_warmup_epochs(0.01, 0.01) == 0 and default_warmup_epochs(0.01, 0.0025) == 0


def test_warmup_ramps_linearly_from_base_to_peak_then_holds():
    s = LrSchedule(base_lr=0.01, warmup_epochs=5)
    assert s.lr(0.04, 0, 0.0) == pytest.approx(0.01)
    assert s.lr(0.04, 2, 0.5) == pytest.approx(0.01 + 0.03 * 2.5 / 5)
    assert s.lr(0.04, 4, 0.999) < 0.04
    assert s.lr(0.04, 5, 0.0) == pytest.approx(0.04) and s.lr(0.04, 30, 0.3) == pytest.approx(0.04)


def test_plateau_divides_the_scaled_rate_at_most_three_times_and_never_during_warmup():
    s = LrSchedule(base_lr=0.01, warmup_epochs=3, patience=1)
    decays = [s.end_epoch(e, 0.5) for e in range(3)]  # flat error during warmup: not counted
    assert decays == [False] * 3 and s.decays == 0
    events = [s.end_epoch(e, 0.5) for e in range(3, 20)]
    assert s.decays == 3 and sum(events) == 3
    assert s.lr(0.04, 20) == pytest.approx(0.04e-3)
    improving = LrSchedule(base_lr=0.01, warmup_epochs=0, patience=1)
    assert not any(improving.end_epoch(e, 1.0 / (e + 1)) for e in range(10))


def test_schedule_state_restores_and_the_peak_follows_the_world_size():
    s = LrSchedule(base_lr=0.01, warmup_epochs=0, patience=0)
    s.end_epoch(0, 0.5)
    s.end_epoch(1, 0.5)
    assert s.decays == 1
    t = LrSchedule(base_lr=0.01, warmup_epochs=0, patience=0)
    t.load_state_dict(s.state_dict())
    assert (t.decays, t.best, t.bad_epochs) == (s.decays, s.best, s.bad_epochs)
    # 4 replicas of 128 -> 3 after a lost node: the decayed rate is re-derived from the new peak
    assert t.lr(scaled_lr(0.01, 4 * 128, "linear"), 5) == pytest.approx(0.004)
    assert t.lr(scaled_lr(0.01, 3 * 128, "linear"), 5) == pytest.approx(0.003)


def test_step_schedule():
    s = LrSchedule(base_lr=0.1, warmup_epochs=0, schedule="step", step_size=30)
    assert [s.lr(0.1, e) for e in (0, 29, 30, 60)] == pytest.approx([0.1, 0.1, 0.01, 0.001])
    assert not s.end_epoch(40, 0.9)


def test_presets_are_the_paper_and_the_demo():
    assert PRESETS["paper"].batch_size == 128 and PRESETS["paper"].epochs == 90 and PRESETS["paper"].crop == 224
    assert PRESETS["demo"].crop == 112 and PRESETS["demo"].init == "kaiming"
    assert PRESETS["paper"].lr_patience == 2 and PRESETS["demo"].lr_patience == 10


def test_warmup_steps_ramp_the_first_steps_of_the_run_only():
    s = LrSchedule(base_lr=0.01, warmup_epochs=0, warmup_steps=50, steps_per_epoch=10)
    assert s.lr(0.01, 0, 0.0) == pytest.approx(0.01 / 50)
    assert s.lr(0.01, 2, 0.5) == pytest.approx(0.01 * 26 / 50)  # step 25
    assert s.lr(0.01, 4, 0.9) == pytest.approx(0.01) and s.lr(0.01, 7, 0.0) == pytest.approx(0.01)
    assert LrSchedule(base_lr=0.01, warmup_epochs=0).lr(0.01, 0, 0.0) == pytest.approx(0.01)


def test_presets_declare_the_inputs_and_preprocessing():
    paper, demo = PRESETS["paper"], PRESETS["demo"]
    assert paper.normalize == demo.normalize == "paper"
    assert paper.central_square and not demo.central_square
    assert not paper.decay_biases and not demo.decay_biases
    assert paper.warmup_steps > 0 and demo.warmup_steps == 0


@pytest.mark.parametrize("decay_biases, bias_after", [(False, 1.0), (True, 0.95)])
def test_weight_decay_on_the_weights_only_unless_asked(decay_biases, bias_after):
    import torch

    from cluster.loop import make_optimizer

    layer = torch.nn.Linear(3, 2)
    torch.nn.init.ones_(layer.weight)
    torch.nn.init.ones_(layer.bias)
    opt = make_optimizer(layer, 0.1, 0.0, 0.5, decay_biases=decay_biases)
    layer.weight.grad, layer.bias.grad = torch.zeros_like(layer.weight), torch.zeros_like(layer.bias)
    opt.step()  # no gradient: only the decay moves a parameter, by lr * wd = 5%
    assert torch.allclose(layer.weight, torch.full_like(layer.weight, 0.95))
    assert torch.allclose(layer.bias, torch.full_like(layer.bias, bias_after))
