"""gpu_check/check.py --smoke runs every step on CPU at tiny sizes, so the GPU script cannot rot unnoticed."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_check_smoke_runs_every_step(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "gpu_check", "--smoke", "--out", str(tmp_path), "-j", "2"],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert report["smoke"] is True
    assert set(report["steps"]) == {"shards", "loader", "model", "model_variants", "compiled_variants", "profile",
                                    "training", "fed_profile", "correctness", "lrn_numerics", "launch", "handoff",
                                    "lrn_step", "hw_decoder", "long_epochs"}
    assert report["skipped"] == {} and report["budget_s"] is None  # no budget in a smoke run
    assert all("error" not in step for step in report["steps"].values())
    variants = report["steps"]["model_variants"]
    assert all(variants[f"{v}_img_s"] > 0 for v in ("torch_lrn", "fast_lrn"))
    assert variants["best_variant"] in ("torch_lrn", "fast_lrn") and variants["batch"] == 4
    assert report["steps"]["compiled_variants"]["compiled_img_s"] > 0
    assert report["steps"]["model"]["split_same_device_batch4_img_s"] > 0
    top = report["steps"]["profile"]["torch_lrn_top_kernels"]
    assert 0 < len(top) <= 15 and top[0]["ms_per_step"] >= top[-1]["ms_per_step"] > 0
    numerics = report["steps"]["lrn_numerics"]
    assert numerics["fast_fp32_fwd_max_rel_diff"] < 1e-5 and numerics["compiled_fp32_bwd_max_rel_diff"] < 1e-5
    assert report["steps"]["loader"]["cpu_train_img_s"] > 0
    training = report["steps"]["training"]  # cluster/loop.py's step, 2 epochs of the smoke set
    assert training["steps_per_epoch"] > 0 and training["train_img_s"] > 0 and training["epoch2_loss"] > 0
    fed = report["steps"]["fed_profile"]  # the same replica, timed per part (no GPU: no busy share, no sync count)
    assert fed["b40.steps_per_epoch"] == 1 and not fed["b40.diverged"]  # the smoke set's 40 images, one batch
    assert all(fed[f"b40.{k}_img_s"] > 0 for k in ("loader", "step", "fed", "decoupled"))
    assert fed["b40.fed_over_min"] > 0 and fed["b40.host_syncs_in_fed_epoch"] is None and fed["top_kernels"]
    assert 0 <= fed["profiled_batch_wait_ms_per_step"] < fed["profiled_wall_ms_per_step"]
    handoff = report["steps"]["handoff"]
    assert all(handoff[f"{h}.fed_img_s"] > 0 for h in ("stream_prefetch2", "stream_prefetch4", "host_prefetch2"))
    lrn_step = report["steps"]["lrn_step"]
    assert lrn_step["eager.none_img_s"] > 0 and lrn_step["eager.fast_over_no_lrn"] > 0
    assert lrn_step["compiled.fast_img_s"] > 0 and lrn_step["eager.fast_fused_sgd_img_s"] > 0
    assert report["steps"]["hw_decoder"]["load0.65.fed_img_s"] > 0
    long = report["steps"]["long_epochs"]
    assert long["long.steps_per_epoch"] == 2 * long["short.steps_per_epoch"] and long["long.fed_img_s"] > 0
    assert report["steps"]["correctness"]["split_vs_single_max_rel_diff"] < 1e-4
    launch = report["steps"]["launch"]  # the real launcher, end to end (one CPU replica in the smoke run)
    assert launch["exit_code"] == 0 and launch["cpu.replicas_per_epoch"] == [1, 1]
    assert launch["cpu.images_per_second"] > 0 and 0 <= launch["cpu.val_top1_error_10crop"] <= 1
    table = (tmp_path / "gpu_check.md").read_text()
    assert "| model | single_device_img_s |" in table and table in proc.stdout
    assert "**profile: torch_lrn_top_kernels**" in table and "| 1 | `aten::" in table  # CPU ops on a CPU


def test_steps_flag_adds_the_shards_a_step_needs():
    from gpu_check.check import chosen_steps
    assert [s.name for s in chosen_steps("profile,model")] == ["model", "profile"]
    assert [s.name for s in chosen_steps("training")] == ["shards", "training"]
    with pytest.raises(SystemExit, match="--steps: unknown step"):
        chosen_steps("model,lanch")


def _est(**seconds):
    from gpu_check.plan import Estimate
    return {name: Estimate(s, "test") for name, s in seconds.items()}


def test_plan_runs_in_priority_order_and_skips_what_does_not_fit():
    from gpu_check.plan import plan
    steps = [("shards", ()), ("launch", ("shards",)), ("model", ()), ("compiled", ()), ("lrn", ())]
    decisions = plan(steps, _est(shards=20, launch=150, model=15, compiled=200, lrn=30), budget_s=230)
    assert [(d.step, d.run) for d in decisions] == [("shards", True), ("launch", True), ("model", True),
                                                    ("compiled", False), ("lrn", True)]  # a later, smaller one fits
    assert "does not fit in the 45 s left of --budget-s 230" in decisions[3].reason
    assert all(d.run for d in plan(steps, _est(shards=20, launch=150, model=15, compiled=200, lrn=30), None))


def test_plan_skips_a_step_whose_shards_did_not_run():
    from gpu_check.plan import plan
    decisions = plan([("shards", ()), ("launch", ("shards",)), ("model", ())], _est(shards=50, launch=1, model=1),
                     budget_s=10)
    assert [d.run for d in decisions] == [False, False, True]
    assert decisions[1].reason == "needs shards, which did not run"


def test_decide_uses_the_time_really_spent():
    from gpu_check.plan import Estimate, decide
    est = Estimate(60, "test")
    assert decide("profile", est, budget_s=270, spent_s=200).run
    assert not decide("profile", est, budget_s=270, spent_s=211).run


def test_estimates_take_the_slowest_recorded_run_and_name_guesses():
    from gpu_check.plan import ADDED_SINCE_RECORDS_S, UNMEASURED_GUESS_S, estimates
    records = [{"smoke": False, "steps": {"loader": {"seconds": 8.6}, "launch": {"error": "x", "seconds": 2.0}}},
               {"smoke": False, "steps": {"loader": {"seconds": 15.3}}},
               {"smoke": True, "steps": {"loader": {"seconds": 99.0}}}]  # a smoke run's time says nothing
    est = estimates(["loader", "launch", "model"], records + [{"steps": {"model": {"seconds": 7.0}}}])
    assert est["loader"].seconds == 15.3 and est["loader"].source == "recorded (2 runs)"
    assert est["launch"].seconds == UNMEASURED_GUESS_S["launch"] and est["launch"].source == "guess"  # failed: no
    assert est["model"].seconds == 7.0 + ADDED_SINCE_RECORDS_S["model"]
    with pytest.raises(ValueError, match="no recorded time and no guess for step 'new_step'"):
        estimates(["new_step"], records)


def test_every_step_has_an_estimate_from_the_kept_records():
    from gpu_check.check import STEPS
    from gpu_check.plan import estimates, load_records
    est = estimates([s.name for s in STEPS], load_records())
    assert est["shards"].source.startswith("recorded") and est["shards"].seconds > 0


def test_plan_only_prints_the_plan_and_what_it_skips(capsys):
    from gpu_check.check import main
    assert main(["--plan-only", "--budget-s", "60"]) == 0
    out = capsys.readouterr().out
    assert "plan (--budget-s 60.0):" in out and "SKIP launch" in out and "does not fit" in out


def test_skipped_in_runs_what_the_first_run_skipped(tmp_path):
    from gpu_check.check import skipped_in
    report = tmp_path / "gpu_check.json"
    report.write_text(json.dumps({"steps": {"shards": {"data": "/x/shards"}},
                                  "skipped": {"profile": "...", "compiled_variants": "..."}}))
    assert skipped_in(report, None) == ("profile,compiled_variants", Path("/x/shards"))
    assert skipped_in(report, Path("/other"))[1] == Path("/other")
    with pytest.raises(SystemExit, match="--skipped-in .*: not a gpu_check.json"):
        skipped_in(tmp_path / "missing.json", None)


def test_launch_cases_past_the_budget_are_skipped_not_run(tmp_path):
    import argparse
    import time

    from gpu_check.launch_step import step_launch
    from gpu_check.steps import SMOKE, Context
    ctx = Context(argparse.Namespace(out=tmp_path, workers=1), SMOKE, gpu=False, data=str(tmp_path / "none"),
                  deadline=time.time() + 5)  # under the 10 s a case needs at least
    assert step_launch(ctx) == {"cpu.skipped": "--budget-s ran out before this case", "exit_code": 0}


def test_busy_time_is_the_union_of_overlapping_intervals():
    from gpu_check.fed import busy_us
    # DALI's kernels on their own stream overlap the model's: counted once, and gaps not at all
    assert busy_us([(0, 10), (5, 12), (20, 25), (21, 22)]) == 17
    assert busy_us([(3, 4), (0, 1)]) == 2
    assert busy_us([]) == 0


def test_wait_timer_counts_the_time_blocked_in_the_loader():
    import time

    from gpu_check.fed import WaitTimer

    def slow_loader():
        for i in range(3):
            time.sleep(0.05)
            yield i

    class Loader(list):
        def __iter__(self):
            return slow_loader()

    timed = WaitTimer(Loader([0, 1, 2]))
    assert list(timed) == [0, 1, 2] and len(timed) == 3
    assert 0.14 <= timed.wait_s < 1.0


def test_fixed_batches_give_one_batch_and_the_control_still_pulls_the_loader():
    from gpu_check.fed import FixedBatches, counting_host_syncs
    pulled = []

    class Loader:
        def __iter__(self):
            for i in range(3):
                pulled.append(i)
                yield i

    assert list(FixedBatches("b", 2)) == ["b", "b"] and len(FixedBatches("b", 2)) == 2
    assert list(FixedBatches("b", 3, Loader())) == ["b"] * 3 and pulled == [0, 1, 2]
    assert counting_host_syncs(lambda: 7, gpu=False) == (7, None)  # nothing to count on a CPU
