"""The recipe per image at any replica count: lr scaling with the global batch, warmup, plateau decay on the scaled
rate, and the schedule state that survives a restart with another world size."""
import pytest
import torch

from cluster.loop import LrSchedule
from cluster.recipe import PRESETS, default_warmup_epochs, scaled_lr


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


def test_plateau_patience_is_torchs_the_next_bad_epoch_after_patience_decays():
    # patience 2: two epochs without improvement are allowed, the third divides the rate (at index 3 here)
    s = LrSchedule(base_lr=0.01, warmup_epochs=0, patience=2)
    assert [s.end_epoch(e, err) for e, err in enumerate([0.5, 0.6, 0.6, 0.6])] == [False, False, False, True]


@pytest.mark.parametrize("patience", [0, 1, 2, 3])
@pytest.mark.parametrize("errors", [
    [0.5, 0.6, 0.6, 0.6, 0.6, 0.6, 0.6, 0.6],
    [0.9, 0.8, 0.8, 0.79999, 0.7, 0.7, 0.7, 0.6, 0.6, 0.6, 0.6, 0.6],  # 0.79999: below torch's 1e-4 threshold
    [0.9, 0.85, 0.86, 0.84, 0.84, 0.83, 0.9, 0.9, 0.9, 0.9],
])
def test_plateau_decays_on_the_same_epochs_as_torchs_reduce_lr_on_plateau(patience, errors):
    ours = LrSchedule(base_lr=1.0, warmup_epochs=0, patience=patience)
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    theirs = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="min", factor=0.1, patience=patience,
                                                         threshold=1e-4, threshold_mode="rel")
    got, want = [], []
    for epoch, err in enumerate(errors):
        got.append(ours.end_epoch(epoch, err))
        before = opt.param_groups[0]["lr"]
        theirs.step(err)
        want.append(opt.param_groups[0]["lr"] < before)
        if sum(want) == 3:  # ours stops at MAX_LR_DECAYS
            break
    assert got == want and any(want)


def run_epochs(schedule, peak, epochs, start=0, error=None):
    """Train epochs start..start+epochs-1 at `peak` (validation error improving unless `error` is given)."""
    schedule.start(peak, start, 5)
    for e in range(start, start + epochs):
        schedule.end_epoch(e, error if error is not None else 1.0 / (e + 2))


def test_resume_with_more_replicas_warms_up_from_the_current_rate_to_the_new_peak():
    # 1 x 128 (peak 0.01, no warmup) for 10 epochs, then resumed with --workers 16 (peak 0.16)
    first = LrSchedule(base_lr=0.01, warmup_epochs=0)
    run_epochs(first, 0.01, 10)
    resumed = LrSchedule(base_lr=0.01, warmup_epochs=0)
    resumed.load_state_dict(first.state_dict())
    said = resumed.start(0.16, 10, 5)
    assert "warming up from 0.01 to 0.16 over epochs 11-15" in said
    assert resumed.lr(0.16, 10, 0.0) == pytest.approx(0.01)  # no jump
    assert resumed.lr(0.16, 12, 0.5) == pytest.approx(0.01 + 0.15 * 2.5 / 5)
    assert resumed.lr(0.16, 15, 0.0) == pytest.approx(0.16)
    # flat error during the new ramp is not counted towards a decay; after it, it is
    assert not any(resumed.end_epoch(e, 0.99) for e in range(10, 15))
    assert [resumed.end_epoch(e, 0.99) for e in range(15, 18)] == [False, False, True]


def test_a_decayed_run_warms_up_to_the_decayed_new_rate():
    s = LrSchedule(base_lr=0.01, warmup_epochs=0, patience=0)
    run_epochs(s, 0.01, 3, error=0.5)  # decays after epoch 1 and epoch 2: rate 1e-4
    assert s.decays == 2 and s.lr(0.01, 3) == pytest.approx(1e-4)
    s.start(0.04, 3, 5)
    assert s.lr(0.04, 3) == pytest.approx(1e-4) and s.lr(0.04, 8) == pytest.approx(4e-4)


def test_fewer_replicas_lower_the_rate_at_once_and_the_same_world_changes_nothing():
    s = LrSchedule(base_lr=0.01, warmup_epochs=5)
    run_epochs(s, 0.16, 20)
    assert s.start(0.16, 20, 5) is None and s.lr(0.16, 20) == pytest.approx(0.16)
    assert "from 0.16 to 0.08" in s.start(0.08, 20, 5)
    assert s.lr(0.08, 20, 0.0) == pytest.approx(0.08)


def test_growing_inside_the_first_warmup_heads_for_the_new_peak_from_where_it_is():
    s = LrSchedule(base_lr=0.01, warmup_epochs=5)
    run_epochs(s, 0.04, 2)
    now = 0.01 + 0.03 * 2 / 5
    s.start(0.08, 2, 5)
    assert s.lr(0.08, 2) == pytest.approx(now) and s.lr(0.08, 7) == pytest.approx(0.08)
    assert s.lr(0.08, 4) == pytest.approx(now + (0.08 - now) * 2 / 5)


def test_a_checkpoint_from_before_the_ramp_state_still_loads():
    s = LrSchedule(base_lr=0.01, warmup_epochs=0)
    s.load_state_dict({"decays": 1, "best": 0.4, "bad_epochs": 0})
    assert s.start(0.04, 10, 5) is None and s.lr(0.04, 10) == pytest.approx(0.004)


def test_a_preset_fills_only_the_flags_left_out(demo_shards, tmp_path):
    from cluster import launch
    from cluster.resolve import new_config

    def resolved(*flags):
        args = launch.get_args_parser().parse_args(["--data", str(demo_shards), "--output-dir", str(tmp_path),
                                                    "--name", "t", "--workers", "1", *flags])
        return new_config(args, demo_shards)
    paper = resolved("--preset", "paper", "-b", "8")
    assert (paper.batch_size, paper.epochs, paper.crop, paper.init, paper.lr_patience) == (8, 90, 224, "paper", 2)
    demo = resolved("--epochs", "3")  # no --preset: demo, as the demo set was built without --src
    assert (demo.preset, demo.batch_size, demo.epochs, demo.crop, demo.init, demo.lr_patience) == \
        ("demo", 32, 3, 112, "kaiming", 10)


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
