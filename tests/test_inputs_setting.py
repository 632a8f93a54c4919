"""The input normalisation and the paper's preprocessing are declared settings: chosen by the preset or a flag,
written to config.json, printed at start, and what the workers' loaders are built with (no Ray started here)."""
import json

import pytest
import torch

from cluster import launch
from cluster import resolve as settings
from cluster.recipe import TrainConfig, describe
from cluster.worker import loader_settings


def config(demo_shards, tmp_path, *flags):
    args = launch.get_args_parser().parse_args(["--data", str(demo_shards), "--output-dir", str(tmp_path),
                                                "--name", "x", "--workers", "1", "-b", "16", *flags])
    return settings.new_config(args, demo_shards).with_derived()


@pytest.mark.parametrize("flags, normalize, square, warmup", [
    ([], "paper", False, 0),  # the demo preset (the demo build has no --src)
    (["--preset", "paper"], "paper", True, 50),
    (["--preset", "paper", "--normalize", "std", "--warmup-steps", "0"], "std", True, 0),
    (["--preset", "paper", "--random-resized-crop"], "paper", False, 50),  # crops anywhere: no central square
])
def test_the_setting_reaches_config_json_the_start_line_and_the_loaders(demo_shards, tmp_path, flags, normalize,
                                                                         square, warmup):
    cfg = config(demo_shards, tmp_path, *flags)
    assert (cfg.normalize, cfg.central_square, cfg.warmup_steps, cfg.decay_biases) == (normalize, square, warmup,
                                                                                        False)
    assert cfg.base_lr == (0.01 if "paper" in flags else 0.0025)  # the preset's, for a global batch of 128
    cfg.save(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["normalize"] == normalize and saved["central_square"] == square
    assert TrainConfig.load(tmp_path) == cfg
    line = describe(cfg)
    assert ("0-255 minus the per-channel mean" in line) == (normalize == "paper")
    assert "weight decay 0.0005 on weights only" in line
    kw = loader_settings(cfg, 1, 2, torch.device("cpu"))
    assert (kw["normalize"], kw["central_square"], kw["shard_id"], kw["num_shards"]) == (normalize, square, 1, 2)


def test_a_config_json_without_the_setting_is_refused_on_resume(demo_shards, tmp_path, capsys):
    cfg = config(demo_shards, tmp_path)
    (tmp_path / "x").mkdir()
    cfg.save(tmp_path / "x")
    old = json.loads((tmp_path / "x" / "config.json").read_text())
    del old["normalize"]
    (tmp_path / "x" / "config.json").write_text(json.dumps(old))
    assert launch.main(["--output-dir", str(tmp_path), "--name", "x", "--workers", "1", "--resume"]) == 2
    err = capsys.readouterr().err
    assert "config.json cannot be read" in err and "'normalize'" in err  # never resumed with another input scale


def test_prefetch_reaches_the_loaders_and_zero_is_refused(demo_shards, tmp_path):
    assert loader_settings(config(demo_shards, tmp_path), 0, 1, torch.device("cpu"))["prefetch"] == 2
    cfg = config(demo_shards, tmp_path, "--prefetch", "4")
    assert loader_settings(cfg, 0, 1, torch.device("cpu"))["prefetch"] == 4
    with pytest.raises(settings.LaunchError, match="--prefetch must be >= 1"):
        settings.check(config(demo_shards, tmp_path, "--prefetch", "0"), None)
