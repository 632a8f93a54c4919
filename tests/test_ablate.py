"""The ablation study: the verdict rule, the centre-crop training loader it needs, and the --quick run end to end."""
import dataclasses
import json

import numpy as np
import pytest
import torch

from experiments.ablation import study as ablate
from experiments.ablation.report import ReportContext, claim_tests, convergence, figure1, write_report
from experiments.ablation.stats import error_difference
from experiments.ablation.train import Budgets, EpochRecord, RunResult, reference_config
from pipeline.loader import make_loader


def budget(epochs, *milestones, threads=2, lr=0.0025, crop=64):
    """An ablation reference (a TrainConfig) with this budget: lr / 10 after each of `milestones` epochs."""
    return reference_config(epochs=epochs, batch_size=32, base_lr=lr, milestones=milestones, crop=crop,
                            threads=threads)


def bits(n, wrong):
    return "".join("0" if i in wrong else "1" for i in range(n))


def run(name, seed, train_errors, val_errors, clean_train, *, val_wrong=(), train_wrong=(), n_val=500, n_train=800):
    history = [EpochRecord(e + 1, 1.0, t, v, 0.0, 0.01, 1.0, 0.8)
               for e, (t, v) in enumerate(zip(train_errors, val_errors))]
    return RunResult(name, seed, {}, 25, history, clean_train, 60.0, bits(n_val, set(val_wrong)),
                     bits(n_train, set(train_wrong)))


def context(seeds=2, fig1=(), epochs=3):
    return ReportContext(command="python -m experiments.ablation", budget=budget(epochs), seeds=seeds,
                         fig1=list(fig1), figure1_error=0.25, minutes=0.0)


def variant(name):
    return next(v for v in ablate.VARIANTS if v.name == name)


def test_verdicts_follow_the_holm_corrected_paired_test_alone():
    """no_lrn: wrong on 30 more images per seed (of 500): reproduced. no_wd: right on 40 more training images:
    contradicted. no_lighting and no_overlap: 4 more per seed, bootstrap p ~0.03 each, which would pass alone;
    Holm's third and fourth ranks multiply by 2 and 1, made non-decreasing: ~0.06 both, not visible."""
    full = [run("full", s, [0.3], [0.3], 0.1, val_wrong=range(100), train_wrong=range(80)) for s in (0, 1)]
    results = {"full": full,
               "no_lrn": [run("no_lrn", s, [0.3], [0.3], 0.1, val_wrong=range(130), train_wrong=range(80))
                          for s in (0, 1)],
               "no_lighting": [run("no_lighting", s, [0.3], [0.3], 0.1, val_wrong=range(104), train_wrong=range(80))
                               for s in (0, 1)],
               "no_overlap": [run("no_overlap", s, [0.3], [0.3], 0.1, val_wrong=range(104), train_wrong=range(80))
                              for s in (0, 1)],
               "no_wd": [run("no_wd", s, [0.3], [0.3], 0.1, val_wrong=range(100), train_wrong=range(40))
                         for s in (0, 1)]}
    rows = claim_tests([variant(n) for n in results], results, context())
    assert rows["no_lrn"].verdict == "reproduced" and rows["no_lrn"].test.effect == pytest.approx(30 / 500)
    alone = error_difference([r.val_correct for r in results["no_lighting"]], [r.val_correct for r in full])
    assert rows["no_lighting"].test.p == alone.p and 0.025 < alone.p < 0.05  # would pass alone
    assert rows["no_lighting"].p_holm == pytest.approx(2 * alone.p)
    assert rows["no_overlap"].p_holm == rows["no_lighting"].p_holm
    assert rows["no_lighting"].verdict == "not visible at this scale"  # ... not after Holm over 4 claims
    assert rows["no_wd"].verdict == "contradicted"  # lower training error without weight decay


def test_speed_claim_is_tested_on_the_figure1_sweep_at_each_best_rate():
    """No bypass: tanh's claim gets the same Holm-corrected rule, on steps to 25% at each activation's best rate."""
    args = ablate.get_args_parser().parse_args(["--quick"])
    args.fig1_lr_factors, args.lr = [0.5, 1.0], 0.01
    fig1 = ablate.figure1_variants(args)
    curves = {"relu": {0.005: [0.5, 0.2], 0.01: [0.2, 0.1]},  # best: 0.01, 25% after epoch 1
              "tanh": {0.005: [0.6, 0.5, 0.4, 0.2], 0.01: [0.9, 0.9, 0.9, 0.9]}}  # best 0.005, after epoch 4
    results = {"full": [run("full", s, [0.3], [0.3], 0.1) for s in range(4)],
               "tanh": [run("tanh", s, [0.3], [0.3], 0.1) for s in range(4)]}
    for v in fig1:
        errs = curves[v.changes["activation"]][v.changes["base_lr"]]
        results[v.name] = [run(v.name, s, errs[:len(errs) - (s % 2 and v.changes["activation"] == "tanh")] + [0.2],
                               errs, 0.1)
                           for s in range(4)]
    rows = claim_tests([variant("full"), variant("tanh")], results, context(seeds=4, fig1=fig1, epochs=5))
    t = rows["tanh"].test
    assert t.effect > 3 and rows["tanh"].verdict == "reproduced" and "t-test" in t.method
    best, table_rows = figure1(results, fig1, 0.25, 5 * 25)
    assert best["relu"][0].changes["base_lr"] == 0.01 and best["tanh"][0].changes["base_lr"] == 0.005
    assert len(table_rows) == 4


def test_figure1_runs_that_never_get_there_count_at_figure1s_own_cap():
    """Figure 1 keeps its own budget (train.Budgets): a run that never reached 25% counts at its cap
    (5 epochs of 25 steps here), not at the variants' 84 epochs."""
    args = ablate.get_args_parser().parse_args(["--quick"])
    args.fig1_lr_factors, args.lr = [1.0], 0.01
    fig1 = ablate.figure1_variants(args)
    results = {"full": [run("full", s, [0.3], [0.3], 0.1) for s in range(4)]}
    for v in fig1:  # ReLU gets there after 2 epochs, tanh never in its 5
        errs = [0.5, 0.2] if v.changes["activation"] == "relu" else [0.9, 0.8, 0.7, 0.6, 0.5]
        results[v.name] = [run(v.name, s, errs, errs, 0.1) for s in range(4)]
    ctx = dataclasses.replace(context(seeds=4, fig1=fig1, epochs=84), fig1_budget=budget(5))
    rows = claim_tests([variant("full"), variant("tanh")], results, ctx)
    t = rows["tanh"].test
    assert t.effect == pytest.approx(125 / 50) and "4 runs never reached 25%" in t.method


def test_partial_report_tests_figure1_before_the_tanh_variant_has_run():
    """The speed claim is tested on the Figure 1 sweep alone: a partial report with the sweep but not the tanh
    variant tests it (its own row), and counts only the other six claims as untested."""
    from experiments.ablation.report import table, testable_claims
    args = ablate.get_args_parser().parse_args(["--quick"])
    args.fig1_lr_factors, args.lr = [1.0], 0.01
    fig1 = ablate.figure1_variants(args)
    results = {"full": [run("full", s, [0.3], [0.3], 0.1) for s in range(4)]}
    for v in fig1:  # ReLU at 25% after 1 or 2 epochs, tanh after 4 or 5
        errs = [0.2] if v.changes["activation"] == "relu" else [0.9, 0.8, 0.5, 0.2]
        results[v.name] = [run(v.name, s, [0.9] * (s % 2) + errs, [0.9] * (s % 2) + errs, 0.1) for s in range(4)]
    assert testable_claims([variant("full")], fig1) == ["tanh"] and testable_claims([variant("full")], []) == []
    assert len(testable_claims(ablate.VARIANTS, fig1)) == 7
    ctx = dataclasses.replace(context(seeds=4, fig1=fig1, epochs=5), untested_claims=6)
    rows = claim_tests([variant("full")], results, ctx)
    assert list(rows) == ["tanh"] and rows["tanh"].test.effect > 2.5 and "never reached" not in rows["tanh"].test.method
    assert "| ReLU vs tanh (the Figure 1 sweep; the tanh variant not trained yet) |" in table([variant("full")],
                                                                                               results, rows)


def test_schedule_text_and_default_drops():
    from experiments.ablation.report import schedule_text
    assert schedule_text(budget(84, 52, 60)) == "0.0025 / 10 from epoch 53, / 100 from epoch 61"
    assert schedule_text(budget(70, 52), lr=False) == ", lr / 10 from epoch 53"
    assert schedule_text(budget(2)) == "0.0025" and schedule_text(budget(2), lr=False) == ""
    for epochs, drops in [(144, (90, 102)), (84, (52, 60)), (6, (4, 0)), (3, (2, 0)), (2, (0, 0))]:
        args = ablate.get_args_parser().parse_args(["--epochs", str(epochs)])
        ablate.resolve(args)  # a budget too short for two drops gets one, not an error about flags never passed
        assert (args.lr_decay_epoch, args.lr_decay2_epoch) == drops
    args = ablate.get_args_parser().parse_args(["--lr-decay-epoch", "0", "--lr-decay2-epoch", "60"])
    with pytest.raises(ablate.AblateError, match="--lr-decay2-epoch 60 must come after --lr-decay-epoch 0"):
        ablate.resolve(args)


def test_report_table_figures_and_links(tmp_path):
    """write_report: a row per variant with mean ± spread, the effect with its interval, MDE, p and Holm p, and
    figure links that work from the report's folder even when the figures live elsewhere."""
    variants = [variant("full"), variant("no_dropout")]
    results = {"full": [run("full", s, [0.8, 0.2, 0.1], [0.8, 0.21, 0.2 + s / 100], 0.05,
                            val_wrong=range(100 + 5 * s), train_wrong=range(40)) for s in (0, 1)],
               "no_dropout": [run("no_dropout", s, [0.7, 0.1, 0.0], [0.7, 0.3, 0.3], 0.0,
                                  val_wrong=range(150), train_wrong=()) for s in (0, 1)]}
    out = tmp_path / "doc" / "A.md"
    out.parent.mkdir()
    write_report(out, tmp_path / "figs", variants, results, context=context())
    text = out.read_text()
    assert "| full recipe | 20.5 ± 0.7 | 5.0 ± 0.0 | 15.5 ± 0.7 | 0 | (the reference) |" in text
    row = next(line for line in text.splitlines() if line.startswith("| no dropout |"))
    assert "gap" in row and "paired bootstrap" in row and row.rstrip(" |").endswith("reproduced")
    assert "](../figs/curves.png)" in text and (tmp_path / "figs" / "curves.png").is_file()
    assert "**Crop 64**" in text and "0.0 points" not in text


def test_a_claim_where_no_image_differs_has_no_minimum_detectable_effect(tmp_path):
    """Weight decay's claim is read off clean training error; when both arms fit every training image (as at a
    converged budget) the test is empty: the report says so instead of an MDE of 0, which would claim full power."""
    variants = [variant("full"), variant("no_wd")]
    results = {name: [run(name, s, [0.5, 0.0], [0.5, 0.2], 0.0, val_wrong=range(100 + s)) for s in (0, 1)]
               for name in ("full", "no_wd")}
    write_report(tmp_path / "A.md", tmp_path / "figs", variants, results, context=context(epochs=2))
    row = next(line for line in (tmp_path / "A.md").read_text().splitlines() if line.startswith("| no weight decay"))
    assert "| +0.0 [+0.0, +0.0] train error | none: no image differs |" in row
    assert "0 vs 0 discordant" in row and row.rstrip(" |").endswith("not visible at this scale")


def test_convergence_is_checked_over_the_last_quarter():
    still = [run("full", s, [0.9, 0.8, 0.6, 0.5], [0.9, 0.8, 0.7, 0.5], 0.4) for s in (0, 1)]
    text, ok = convergence(still, 4)
    assert not ok and "moved by 20.0 points, **not converged**" in text
    done = [run("full", s, [0.9, 0.3, 0.2, 0.2], [0.9, 0.3, 0.3, 0.295], 0.1) for s in (0, 1)]
    text, ok = convergence(done, 4)
    assert ok and "moved by 0.50 points, less than 1, **converged**" in text
    # 84 epochs: the window is epoch 63 against 84, so the drop between 62 and 63 is outside it
    long = [run("full", s, [0.1] * 84, [0.3] * 62 + [0.2] * 21 + [0.195], 0.01) for s in (0, 1)]
    text, ok = convergence(long, 84)
    assert ok and "from 20.0% after epoch 63 to 19.5% after epoch 84" in text
    at_chance = [run("full", s, [0.9] * 4, [0.91, 0.9, 0.9, 0.895], 0.9) for s in (0, 1)]
    text, ok = convergence(at_chance, 4)
    assert not ok and "within 10 points of chance" in text


@pytest.mark.parametrize("crop", [112, 224])  # the demo shards are at 256: resize-then-crop, and crop-on-decode
def test_centre_crop_training_loader_matches_evaluation(demo_shards, crop):
    """crop_flip=False (and no lighting): every training image is the evaluation's centre crop, never flipped,
    while the order is still shuffled."""
    kw = dict(crop=crop, seed=3, num_threads=1)
    evaluation = {}
    for images, _, idx in make_loader(demo_shards, "train", 20, train=False, **kw):
        evaluation.update({int(i): img for i, img in zip(idx, images)})
    order = []
    for images, _, idx in make_loader(demo_shards, "train", 20, train=True, crop_flip=False, lighting=0.0, **kw):
        for i, img in zip(idx, images):
            assert torch.equal(img, evaluation[int(i)]), f"sample {int(i)} differs from its centre crop"
            order.append(int(i))
    assert len(order) == 120 and order != sorted(order)


def test_random_resized_crop_cannot_be_centre_cropped(demo_shards):
    with pytest.raises(ValueError, match="crop_flip"):
        make_loader(demo_shards, "train", 8, random_resized_crop=True, crop_flip=False)


def test_bad_variant_name_is_a_clear_error(capsys):
    assert ablate.main(["--quick", "--variants", "full,dropout"]) == 2
    assert "--variants: unknown dropout" in capsys.readouterr().err


@pytest.mark.slow
def test_quick_run_writes_the_report_and_rebuilds_it_from_the_runs_alone(tmp_path, capsys):
    paths = ["--data", tmp_path / "data", "--out", tmp_path / "REPORT.md", "--figures", tmp_path / "fig",
             "--runs-dir", tmp_path / "runs"]
    argv = ["--quick", "--variants", "full,tanh,no_dropout", "--fig1-lr-factors", "0.5,1", *map(str, paths)]
    assert ablate.main(argv) == 0
    text = (tmp_path / "REPORT.md").read_text()
    # each verdict is the rule's on the runs saved for it: reload them and test again
    variants, train_order, fig1 = ablate.resolve(ablate.get_args_parser().parse_args(argv))
    results = {v.name: [RunResult.from_json(json.loads((tmp_path / "runs" / f"{v.name}-seed{s}.json").read_text())
                                            ["result"]) for s in (0, 1)] for v in train_order}
    rows = claim_tests(variants, results, context(seeds=2, fig1=fig1, epochs=2))
    for v in variants[1:]:
        line = next(line for line in text.splitlines() if line.startswith(f"| {v.label} |"))
        assert line.rstrip(" |").rsplit("|", 1)[-1].strip() == rows[v.name].verdict, v.name
    for png in ("curves.png", "figure1_relu_tanh.png"):
        assert (tmp_path / "fig" / png).stat().st_size > 10_000
    saved = json.loads((tmp_path / "runs" / "tanh-seed0.json").read_text())
    run = saved["result"]
    assert run["variant"] == "tanh" and len(run["history"]) == 2 and run["commit"]
    assert len(run["val_correct"]) == 50 and set(run["val_correct"]) <= {"0", "1"} and len(run["train_correct"]) == 100
    assert 1 - run["val_correct"].count("1") / 50 == pytest.approx(run["history"][-1]["val_top1_error"])
    assert all(0 <= h["val_top1_error"] <= 1 and np.isfinite(h["train_loss"]) for h in run["history"])
    # the report from the runs alone (no data): the same tables
    (tmp_path / "data" / "manifest.json").unlink()
    capsys.readouterr()
    assert ablate.main(argv + ["--report-only"]) == 0
    assert ": training (" not in capsys.readouterr().out
    tables = [line for line in text.splitlines() if line.startswith("|")]
    assert [line for line in (tmp_path / "REPORT.md").read_text().splitlines() if line.startswith("|")] == tables
    assert ablate.main(argv + ["--plan"]) == 0
    out = capsys.readouterr().out
    assert "0 to train" in out and "ms per training image" in out
    assert ablate.main(argv + ["--report-only", "--seeds", "3"]) == 2  # a missing run is named, not trained
    assert "runs missing" in capsys.readouterr().err


def test_finished_runs_are_reused_whatever_their_thread_count(tmp_path):
    """A run trained with -j 1 (two processes side by side) is the same experiment for a -j 2 report; another lr is
    not, and neither is a file that is not a run."""
    args = ablate.get_args_parser().parse_args(["--quick", "--runs-dir", str(tmp_path)])
    ablate.resolve(args)
    full = ablate.VARIANTS[0]
    one, two = budget(2, threads=1), budget(2, threads=2)
    saved = run("full", 0, [0.3, 0.2], [0.3, 0.2], 0.1)
    path = ablate.run_path(args, full, 0)
    old_style = ablate.run_key(full, one, args)
    old_style["budget"]["threads"] = 1  # as runs saved before the key left threads out name it
    path.write_text(json.dumps({"key": old_style, "result": saved.to_json()}))
    assert ablate.load_run(path, ablate.run_key(full, two, args)).final_val_error == 0.2
    assert ablate.load_run(path, ablate.run_key(full, budget(2, lr=0.01), args)) is None
    path.write_text("{not json")
    assert ablate.load_run(path, ablate.run_key(full, two, args)) is None


def test_runs_saved_before_the_second_lr_drop_existed_keep_their_meaning(tmp_path):
    """A run whose budget has no lr_decay2_epoch ran without a second drop: reused where the budget has none (Figure
    1's own budget), not where it has one; the schedule drops / 10 then / 100."""
    from cluster.loop import LrSchedule
    args = ablate.get_args_parser().parse_args(["--runs-dir", str(tmp_path)])
    ablate.resolve(args)
    budgets = ablate.make_budgets(args)
    fig1, full = ablate.figure1_variants(args)[0], ablate.VARIANTS[0]
    assert budgets.of(fig1).lr_milestones == (52,) and budgets.of(full).lr_milestones == (90, 102)
    assert (budgets.of(fig1).epochs, budgets.of(full).epochs) == (70, 144)
    old = ablate.run_key(fig1, budgets.of(fig1), args)
    del old["budget"]["lr_decay2_epoch"]
    path = ablate.run_path(args, fig1, 0)
    path.write_text(json.dumps({"key": old, "result": run(fig1.name, 0, [0.2], [0.3], 0.1).to_json()}))
    assert ablate.load_run(path, ablate.run_key(fig1, budgets.of(fig1), args)) is not None
    with_drop = dataclasses.replace(budgets.of(fig1), lr_milestones=(52, 60))
    assert ablate.load_run(path, ablate.run_key(fig1, with_drop, args)) is None
    schedule = LrSchedule.from_config(with_drop, steps_per_epoch=25)
    assert [schedule.lr(1.0, e, p) for e in (51, 52, 59, 60) for p in (0.0, 0.5)] == \
        [1.0, 1.0, 0.1, 0.1, 0.1, 0.1, 0.1 ** 2, 0.1 ** 2]


def test_a_run_finished_by_another_process_is_not_trained_again(tmp_path, monkeypatch):
    """Two processes share --runs-dir: a run that appeared after this one listed its work is reused, not retrained."""
    args = ablate.get_args_parser().parse_args(["--quick", "--runs-dir", str(tmp_path)])
    ablate.resolve(args)
    full, reference = ablate.VARIANTS[0], budget(2)
    listed = ({}, [(full, 0)])  # what load_finished saw at the start: nothing finished
    monkeypatch.setattr(ablate, "load_finished", lambda *a: listed)
    monkeypatch.setattr(ablate, "train_variant", lambda *a, **k: pytest.fail("trained a finished run again"))
    saved = run("full", 0, [0.3, 0.2], [0.3, 0.2], 0.1)
    ablate.run_path(args, full, 0).write_text(json.dumps({"key": ablate.run_key(full, reference, args),
                                                          "result": saved.to_json()}))
    results = ablate.run_all(args, [full], Budgets(reference), fingerprint=None)
    assert [r.final_val_error for r in results["full"]] == [0.2]


def test_partial_report_names_what_is_not_trained(tmp_path, capsys):
    """--report-only --partial: the variants with every seed finished are reported and tested, the rest listed with
    their finished seeds; without the reference it refuses, naming it."""
    runs_dir = tmp_path / "runs"
    flags = ["--quick", "--no-figure1", "--runs-dir", str(runs_dir), "--out", str(tmp_path / "A.md"),
             "--figures", str(tmp_path / "figs"), "--report-only", "--partial"]
    args = ablate.get_args_parser().parse_args(flags)
    ablate.resolve(args)
    reference = ablate.make_budgets(args).variants
    runs_dir.mkdir()
    assert ablate.main(flags) == 2 and "the reference ('full') has 0 of 2 seeds" in capsys.readouterr().err
    assert ablate.main([f for f in flags if f != "--report-only"]) == 2
    assert "--partial only applies to --report-only" in capsys.readouterr().err
    known = {v.name: v for v in ablate.VARIANTS}
    for name, seeds, wrong in [("full", (0, 1), 100), ("no_lrn", (0, 1), 140), ("tanh", (0,), 100)]:
        for s in seeds:
            r = run(name, s, [0.5, 0.3], [0.5, 0.3], 0.1, val_wrong=range(wrong))
            ablate.run_path(args, known[name], s).write_text(json.dumps(
                {"key": ablate.run_key(known[name], reference, args), "result": r.to_json()}))
    assert ablate.main(flags) == 0
    text = (tmp_path / "A.md").read_text()
    assert "**Not in this report**" in text and "tanh instead of ReLU (1 of 2 seeds)" in text
    assert "no dropout (0 of 2 seeds)" in text
    row = next(line for line in text.splitlines() if line.startswith("| no LRN |"))
    # 40 more wrong of 500 on both seeds: reproduced even with the 5 untested claims in Holm's correction at p = 1
    assert row.rstrip(" |").endswith("reproduced") and "Holm" in text
    assert not any(line.startswith("| tanh instead of ReLU |") for line in text.splitlines())


def test_claims_let_processes_share_the_runs_folder(tmp_path, monkeypatch):
    """A run claimed by a live process is skipped (and no report is written while it is missing); a claim left by a
    process that is gone is taken over; a finished run releases its claim."""
    from experiments.ablation import saved_runs as ablation_runs
    args = ablate.get_args_parser().parse_args(["--quick", "--runs-dir", str(tmp_path)])
    ablate.resolve(args)
    full, reference = ablate.VARIANTS[0], budget(2)
    path = ablate.run_path(args, full, 0)
    assert ablation_runs.claim(path) and not ablation_runs.claim(path)  # held by this (live) process
    monkeypatch.setattr(ablate, "load_finished", lambda *a: ({}, [(full, 0)]))
    monkeypatch.setattr(ablate, "train_variant", lambda *a, **k: pytest.fail("trained a claimed run"))
    assert ablate.run_all(args, [full], Budgets(reference), fingerprint=None) is None
    host = path.with_suffix(".claim").read_text().partition(":")[0]
    path.with_suffix(".claim").write_text(f"{host}:999999999")  # no such pid: the claimant is gone
    monkeypatch.setattr(ablate, "train_variant", lambda *a, **k: run("full", 0, [0.3, 0.2], [0.3, 0.2], 0.1))
    results = ablate.run_all(args, [full], Budgets(reference), fingerprint=None)
    assert [r.final_val_error for r in results["full"]] == [0.2]
    assert path.is_file() and not path.with_suffix(".claim").exists() and not list(tmp_path.glob("*.tmp"))


def test_untested_claims_count_in_holms_correction():
    """A partial report's 'reproduced' must stand when the other claims arrive: p ~0.03 passes as the only claim,
    not with one more claim still to test (Holm: 2 x 0.03 > 0.05)."""
    import dataclasses
    full = [run("full", s, [0.3], [0.3], 0.1, val_wrong=range(100)) for s in (0, 1)]
    results = {"full": full, "no_lighting": [run("no_lighting", s, [0.3], [0.3], 0.1, val_wrong=range(104))
                                             for s in (0, 1)]}
    alone = claim_tests([variant("no_lighting")], results, context())["no_lighting"]
    assert alone.verdict == "reproduced" and 0.025 < alone.p_holm == alone.test.p < 0.05
    padded = claim_tests([variant("no_lighting")], results, dataclasses.replace(context(), untested_claims=1))
    assert padded["no_lighting"].verdict == "not visible at this scale"
    assert padded["no_lighting"].test.mde > alone.test.mde  # the MDE at the stricter alpha
