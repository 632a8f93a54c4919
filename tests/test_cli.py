"""cluster/launch.py's command line: the names users bring from torchvision's references and timm, --help's groups,
and --test-only (the 10-crop evaluation of a run's checkpoint, without Ray)."""
import argparse
import re
import shutil

import pytest
import torch

from cluster import launch
from cluster.resolve import new_config
from model import GroupedAlexNet
from pipeline.loader import make_loader


@pytest.mark.parametrize("canonical, alias, dest, value", [
    ("--replicas", "--workers", "workers", 3),
    ("--min-replicas", "--min-workers", "min_workers", 2),
    ("--warmup-epochs", "--lr-warmup-epochs", "warmup_epochs", 7),
])
def test_aliases_set_the_same_setting(canonical, alias, dest, value):
    parser = launch.get_args_parser()
    for flag in (canonical, alias):
        assert getattr(parser.parse_args([flag, str(value)]), dest) == value, flag
        assert launch.explicit_flags([flag, str(value)]) == {dest: flag}, flag  # --resume names it as typed


def test_data_path_is_data(tmp_path):
    # a str, not a Path: s3:// URIs must keep their "//"
    assert launch.get_args_parser().parse_args(["--data-path", str(tmp_path)]).data == str(tmp_path)


def test_every_flag_sits_in_a_named_group_of_help():
    parser = launch.get_args_parser()
    default_groups = {parser._optionals, parser._positionals}
    for group in parser._action_groups:
        for action in group._group_actions:
            if action.help == argparse.SUPPRESS or action.dest == "help":
                continue
            assert group not in default_groups, f"{action.option_strings} is outside the named groups"
    text = parser.format_help()
    for title in ("data:", "replicas and the Ray cluster:", "recipe:", "run, outputs and checkpoints:"):
        assert title in text


def test_resume_takes_no_path(capsys):
    with pytest.raises(SystemExit) as e:  # torchvision's --resume takes a checkpoint path; ours continues --name
        launch.get_args_parser().parse_args(["--resume", "runs/x/checkpoint.pt"])
    assert e.value.code == 2 and "unrecognized arguments: runs/x/checkpoint.pt" in capsys.readouterr().err


def _run_with_checkpoint(demo_shards, tmp_path, fc8_bias):
    """A run folder as launch.py leaves it (config.json, a checkpoint_* folder with its digest, Ray's list of it),
    holding a net whose fc8 ignores the image: the logits are fc8_bias for every input, so its errors are known from
    the labels alone."""
    from cluster import checkpoints
    from tests.test_faults import ray_snapshot
    args = launch.get_args_parser().parse_args(
        ["--data", str(demo_shards), "--output-dir", str(tmp_path), "--name", "done", "--crop", "64", "-b", "20"])
    cfg = new_config(args, None)
    run_dir = tmp_path / "done"
    (run_dir / "checkpoint_2026-01-01_00-00-00.000000").mkdir(parents=True)
    cfg.save(run_dir)
    model = GroupedAlexNet(cfg.num_classes)
    with torch.no_grad():
        model.fc8.weight.zero_()
        model.fc8.bias.copy_(fc8_bias)
    checkpoints.write({"model": model.state_dict(), "epoch": 0}, run_dir / "checkpoint_2026-01-01_00-00-00.000000")
    ray_snapshot(run_dir, ["checkpoint_2026-01-01_00-00-00.000000"])
    return cfg


def test_test_only_evaluates_the_runs_checkpoint(demo_shards, tmp_path, capsys):
    bias = torch.arange(10, 0, -1, dtype=torch.float32)  # class 0 first, then 1, 2, ...: top-5 = classes 0-4
    cfg = _run_with_checkpoint(demo_shards, tmp_path, bias)
    labels = torch.cat([b[1] for b in make_loader(cfg.data, "val", 10, train=False, crop=64)])
    capsys.readouterr()
    assert launch.main(["--output-dir", str(tmp_path), "--name", "done", "--test-only", "-j", "1"]) == 0
    out, err = capsys.readouterr()
    assert "10-crop evaluation" in err and "batch" in err  # the progress bar: a phase of minutes on ImageNet
    top1, top5, n = re.search(r"top-1 error ([\d.]+), top-5 error ([\d.]+) \((\d+) images", out).groups()
    assert int(n) == len(labels)
    assert float(top1) == pytest.approx(1 - (labels == 0).float().mean().item(), abs=1e-4)
    assert float(top5) == pytest.approx(1 - (labels < 5).float().mean().item(), abs=1e-4)


def test_test_only_on_other_data(demo_shards, tmp_path, capsys):
    _run_with_checkpoint(demo_shards, tmp_path, torch.zeros(10))
    assert launch.main(["--output-dir", str(tmp_path), "--name", "done", "--test-only", "-j", "1",
                        "--data", str(demo_shards)]) == 0  # --data is a str (s3:// URIs): resolved as a path here
    assert f"data {demo_shards.resolve()}" in capsys.readouterr().out


def test_test_only_reads_the_runs_inputs(demo_shards, tmp_path, monkeypatch):
    import dataclasses

    from cluster import evaluate as evaluate_module
    cfg = _run_with_checkpoint(demo_shards, tmp_path, torch.zeros(10))
    dataclasses.replace(cfg, normalize="std", central_square=True).save(cfg.run_dir)  # a run of other inputs
    seen = {}

    def spy(*args, **kwargs):
        seen.update(kwargs)
        return make_loader(*args, **kwargs)
    monkeypatch.setattr(evaluate_module, "make_loader", spy)
    assert launch.main(["--output-dir", str(tmp_path), "--name", "done", "--test-only", "-j", "1"]) == 0
    assert (seen["normalize"], seen["central_square"], seen["crop"]) == ("std", True, 64)


def test_test_only_errors_name_what_is_missing(tmp_path, capsys):
    assert launch.main(["--output-dir", str(tmp_path), "--test-only"]) == 2
    assert "--test-only needs --name" in capsys.readouterr().err
    assert launch.main(["--output-dir", str(tmp_path), "--name", "ghost", "--test-only"]) == 2
    assert "no run at" in capsys.readouterr().err


def test_test_only_without_a_checkpoint_says_so(demo_shards, tmp_path, capsys):
    _run_with_checkpoint(demo_shards, tmp_path, torch.zeros(10))
    for path in (tmp_path / "done").glob("checkpoint_*"):  # the folder and Ray's list of it
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    assert launch.main(["--output-dir", str(tmp_path), "--name", "done", "--test-only"]) == 2
    assert "no intact checkpoint for run done" in capsys.readouterr().err


def test_without_dali_the_launcher_says_which_extra_to_install(monkeypatch, capsys):
    real = launch.importlib.util.find_spec
    monkeypatch.setattr(launch.importlib.util, "find_spec", lambda name: None if name == "nvidia.dali" else real(name))
    assert launch.main(["--name", "x"]) == 2
    err = capsys.readouterr().err
    assert "DALI is not installed" in err and "'.[cu12]'" in err and "'.[cu13]'" in err


@pytest.mark.parametrize("signum", [2, 15])  # SIGINT (Ctrl-C), SIGTERM
def test_a_stop_signal_during_test_only_exits_as_shells_expect(tmp_path, monkeypatch, capsys, signum):
    """--test-only's evaluation can take minutes: a stop there gets the launcher's one policy (exit 128 + signal, one
    line), not a traceback."""
    import signal

    from cluster import evaluate

    def evaluating(args):
        signal.raise_signal(signum)  # as Ctrl-C or `kill` would, into the handlers launch.main installed

    monkeypatch.setattr(evaluate, "test_only", evaluating)
    assert launch.main(["--test-only", "--name", "x", "--output-dir", str(tmp_path)]) == 128 + signum
    err = capsys.readouterr().err
    assert f"--test-only stopped by {signal.Signals(signum).name}" in err and "Traceback" not in err


def test_test_only_on_a_damaged_config_json_says_which_file(tmp_path, capsys):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "config.json").write_text("{not json")
    assert launch.main(["--test-only", "--name", "x", "--output-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "config.json" in err and "Traceback" not in err
