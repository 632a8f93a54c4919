"""bench/ablate.py: the verdict rule, the centre-crop training loader it needs, and the --quick run end to end."""
import json

import numpy as np
import pytest
import torch

from bench import ablate
from bench.ablation_report import CLAIMS, ReportContext, Summary, still_improving, summarise, verdict, write_report
from bench.ablation_train import EpochRecord, RunResult
from pipeline import manifest as mf
from pipeline.loader import make_loader


def summary(name, val, train=None, to25=None, val_images=500):
    n = len(val)
    return Summary(name, name, n, list(val), list(train or [0.0] * n), list(to25 or [1] * n), [1.0] * n, val_images,
                   800)


@pytest.mark.parametrize("val, expected", [
    ([0.40, 0.41], "reproduced"),  # LRN off: error clearly up, as the paper says
    ([0.20, 0.21], "contradicted"),  # clearly down
    ([0.305, 0.31], "not visible at this scale"),  # within noise
])
def test_verdict_on_validation_error(val, expected):
    full = summary("full", [0.30, 0.30])
    assert verdict(CLAIMS["no_lrn"], summary("no_lrn", val), full, epochs=30) == expected


def test_verdict_needs_more_than_the_validation_sets_own_noise():
    # Two seeds that agree exactly have no spread; 2 points on 100 images is still inside the binomial noise.
    full = summary("full", [0.30, 0.30], val_images=100)
    assert verdict(CLAIMS["no_lrn"], summary("no_lrn", [0.32, 0.32], val_images=100), full, 30) == \
        "not visible at this scale"
    full = summary("full", [0.30, 0.30], val_images=20000)
    assert verdict(CLAIMS["no_lrn"], summary("no_lrn", [0.32, 0.32], val_images=20000), full, 30) == "reproduced"


def test_verdict_on_overfitting_uses_the_train_val_gap():
    full = summary("full", [0.30, 0.30], train=[0.25, 0.25])
    overfit = summary("no_dropout", [0.30, 0.31], train=[0.0, 0.01])  # same val error, far larger gap
    assert verdict(CLAIMS["no_dropout"], overfit, full, 30) == "reproduced"


@pytest.mark.parametrize("relu, tanh, expected", [
    ([3, 4], [12, None], "reproduced"),  # tanh 4x slower or never
    ([3, 4], [5, 5], "not visible at this scale"),  # faster, but not 'several times'
    ([5, 5], [4, 5], "contradicted"),
    ([None, None], [None, None], "not visible at this scale"),  # neither gets there
    ([None, None], [5, 6], "contradicted"),  # only tanh gets there
])
def test_verdict_on_relu_speed(relu, tanh, expected):
    full = summary("full", [0.3, 0.3], to25=relu)
    assert verdict(CLAIMS["tanh"], summary("tanh", [0.3, 0.3], to25=tanh), full, epochs=20) == expected


def test_a_measured_zero_still_has_noise():
    # Weight decay's claim is on the clean training error, often 0%: a 3-image difference of 800 is not an effect.
    full = summary("full", [0.30, 0.30], train=[0.0, 0.0])
    assert verdict(CLAIMS["no_wd"], summary("no_wd", [0.3, 0.3], train=[0.004, 0.004]), full, 30) == \
        "not visible at this scale"


def run(name, seed, train_errors, val_errors, clean_train):
    history = [EpochRecord(e + 1, 1.0, t, v, 0.0, 0.01, 1.0) for e, (t, v) in enumerate(zip(train_errors, val_errors))]
    return RunResult(name, seed, {}, 25, history, clean_train, 60.0)


def test_report_table_figures_and_links(tmp_path):
    """write_report: a row per variant with mean ± spread and the effect with its noise, the Figure 1 line, and
    figure links that work from the report's folder even when the figures live elsewhere."""
    variants = [ablate.VARIANTS[0], ablate.VARIANTS[1], ablate.VARIANTS[4]]  # full, tanh, no dropout
    results = {"full": [run("full", s, [0.8, 0.2, 0.1], [0.8, 0.21, 0.2 + s / 100], 0.05) for s in (0, 1)],
               "tanh": [run("tanh", s, [0.9, 0.8, 0.7], [0.9, 0.8, 0.7], 0.6) for s in (0, 1)],
               "no_dropout": [run("no_dropout", s, [0.7, 0.1, 0.0], [0.7, 0.3, 0.3], 0.0) for s in (0, 1)]}
    context = ReportContext(header="# H", rule="RULE", footer="F", epochs=3, val_images=500, train_images=800,
                            steps_per_epoch=25)
    out = tmp_path / "doc" / "A.md"
    out.parent.mkdir()
    write_report(out, tmp_path / "figs", variants, results, context=context)
    text = out.read_text()
    assert "| full recipe | 20.5 ± 0.7 | 5.0 ± 0.0 | 15.5 ± 0.7 | 2, 2 |" in text
    assert "| tanh instead of ReLU (lr 0.002) | 70.0 ± 0.0 |" in text and ">1.5x the epochs" in text
    no_dropout = next(line for line in text.splitlines() if line.startswith("| no dropout |"))
    assert "+14.5 ± " in no_dropout and no_dropout.rstrip(" |").endswith("reproduced")
    assert "ReLU 2, 2, tanh >3, >3" in text
    assert "](../figs/curves.png)" in text and (tmp_path / "figs" / "figure1_relu_tanh.png").is_file()
    assert "Read with care" not in text  # the reference's val error fell under a point over its last epoch


def test_report_warns_when_the_reference_is_still_learning():
    still = [run("full", s, [0.9, 0.8, 0.6, 0.5], [0.9, 0.8, 0.7, 0.5], 0.4) for s in (0, 1)]
    assert "still falling at the end of the budget (20 points over the last 1 epochs" in still_improving(still, 4)
    done = [run("full", s, [0.9, 0.3, 0.2, 0.2], [0.9, 0.3, 0.3, 0.29], 0.1) for s in (0, 1)]
    assert still_improving(done, 4) == ""


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
def test_quick_run_writes_the_report_and_reuses_finished_runs(tmp_path, capsys):
    paths = ["--data", tmp_path / "data", "--out", tmp_path / "ABLATIONS.md", "--figures", tmp_path / "fig",
             "--runs-dir", tmp_path / "runs"]
    argv = ["--quick", *map(str, paths)]
    assert ablate.main(argv) == 0
    text = (tmp_path / "ABLATIONS.md").read_text()
    rows = {v.name: next(line for line in text.splitlines() if line.startswith(f"| {v.label} |"))
            for v in ablate.VARIANTS}
    assert rows["full"].endswith("| (the reference) |  |")
    # each row's verdict is the rule's on the runs saved for it, against the full recipe's runs
    man = mf.load(tmp_path / "data")
    results = {v.name: [RunResult.from_json(json.loads(p.read_text())["result"])
                        for p in sorted((tmp_path / "runs").glob(f"{v.name}-seed*.json"))] for v in ablate.VARIANTS}
    sums = {s.name: s for s in summarise(ablate.VARIANTS, results, man["splits"]["val"]["num_samples"],
                                         man["splits"]["train"]["num_samples"])}
    epochs = len(results["full"][0].history)
    for v in ablate.VARIANTS[1:]:
        shown = rows[v.name].rstrip(" |").rsplit("|", 1)[-1].strip()
        assert shown == verdict(CLAIMS[v.name], sums[v.name], sums["full"], epochs), v.name
    for png in ("curves.png", "figure1_relu_tanh.png"):
        assert (tmp_path / "fig" / png).stat().st_size > 10_000
    run = json.loads((tmp_path / "runs" / "tanh-seed0.json").read_text())["result"]
    assert run["variant"] == "tanh" and len(run["history"]) == 2
    assert all(0 <= h["val_top1_error"] <= 1 and np.isfinite(h["train_loss"]) for h in run["history"])
    capsys.readouterr()
    assert ablate.main(argv + ["--variants", "full,no_lrn"]) == 0  # finished runs are reused, not retrained
    out = capsys.readouterr().out
    assert out.count("reusing") == 2 and ": training (" not in out
