"""Every training setting is declared once (cluster/recipe.py's TrainConfig fields): the launcher's flags, the presets,
config.json and the --resume rule are derived from that declaration, and every ablation variant is a launcher
command. No Ray is started here."""
import dataclasses
import json

import pytest

from cluster import launch
from cluster.recipe import PRESETS, TrainConfig, preset_config
from cluster.resolve import LaunchError, new_config, resumed_config
from cluster.setting import REQUIRED, command_line, declared, help_text, spellings
from experiments.ablation import study as ablate

FLAGS = [(f, s) for f, s in declared(TrainConfig) if s.flags is not None]


def test_every_flag_setting_is_a_flag_with_its_default_and_help(monkeypatch):
    monkeypatch.setenv("COLUMNS", "10000")  # --help unwrapped: argparse breaks lines inside hyphenated words
    parser = launch.get_args_parser()
    defaults = parser.parse_args([])
    text = parser.format_help()
    for f, s in FLAGS:
        want = None if s.presets else f.default
        got = getattr(defaults, f.name)
        assert (str(got) if f.name == "output_dir" else got) == want, f.name
        assert "(default: " in help_text(f, s)
        assert help_text(f, s) in text, f.name
        assert all(f" {flag}" in text for flag in spellings(f, s)), f.name
    # the settings resolved without a flag are named as such, and nothing else is left out of the command line
    assert {f.name for f, s in declared(TrainConfig) if s.flags is None} == {"num_classes", "decay_biases",
                                                                               "central_square"}


def test_a_flag_sets_its_setting_and_a_preset_only_what_was_left_out(demo_shards, tmp_path):
    base = ["--data", str(demo_shards), "--output-dir", str(tmp_path), "--name", "t", "--replicas", "1"]
    cfg = new_config(launch.get_args_parser().parse_args(base + ["--preset", "paper", "--lighting", "0",
                                                                  "--no-crop-flip", "--lr-schedule", "milestones",
                                                                  "--lr-milestones", "60,80", "-b", "16"]),
                     demo_shards)
    assert (cfg.lighting, cfg.crop_flip, cfg.lr_schedule, cfg.lr_milestones) == (0.0, False, "milestones", (60, 80))
    assert (cfg.batch_size, cfg.epochs, cfg.init) == (16, PRESETS["paper"].epochs, PRESETS["paper"].init)
    with pytest.raises(LaunchError, match="--lr-milestones is read by --lr-schedule milestones only"):
        new_config(launch.get_args_parser().parse_args(base + ["--lr-milestones", "5"]), demo_shards)
    with pytest.raises(LaunchError, match="below --epochs 10"):
        new_config(launch.get_args_parser().parse_args(base + ["--lr-schedule", "milestones", "--lr-milestones",
                                                               "4,10"]), demo_shards)


def test_presets_name_only_declared_settings_within_their_choices():
    names = {f.name: (f, s) for f, s in declared(TrainConfig)}
    preset_flag = names["preset"][1]
    assert tuple(sorted(PRESETS)) == preset_flag.choices
    for preset in PRESETS.values():
        for name, value in dataclasses.asdict(preset).items():
            f, s = names[name]
            assert s.presets and (s.choices is None or value in s.choices), name
    # a preset fills every setting it declares, so a preset config has no unresolved recipe setting
    cfg = preset_config("paper")
    assert all(getattr(cfg, name) is not None for name in dataclasses.asdict(PRESETS["paper"]))


def test_config_json_round_trips_and_an_older_one_still_loads(tmp_path):
    cfg = preset_config("demo", data="/d", num_classes=10, lr_schedule="milestones", lr_milestones=(3, 6),
                        name="x", output_dir=str(tmp_path), storage=str(tmp_path), min_workers=4, warmup_epochs=0)
    cfg.save(tmp_path)
    assert TrainConfig.load(tmp_path) == cfg  # the milestones come back a tuple, not JSON's list
    saved = json.loads((tmp_path / "config.json").read_text())
    assert list(saved) == [f.name for f in dataclasses.fields(TrainConfig)]
    added_later = {f.name: s.absent for f, s in declared(TrainConfig) if s.absent is not REQUIRED}
    assert {"crop_flip", "lighting", "lr_milestones", "grad_compression"} <= set(added_later)
    for name in added_later:
        del saved[name]
    (tmp_path / "config.json").write_text(json.dumps(saved))
    old = TrainConfig.load(tmp_path)  # what those runs did: random crops and flips, lighting 0.1, no milestones
    assert (old.crop_flip, old.lighting, old.lr_milestones) == (True, 0.1, ())
    del saved["wd"]
    (tmp_path / "config.json").write_text(json.dumps(saved))
    with pytest.raises(ValueError, match="missing setting 'wd'"):
        TrainConfig.load(tmp_path)


def test_resume_refuses_a_new_value_of_a_setting_that_is_not_resumable(demo_shards, tmp_path, capsys):
    args = launch.get_args_parser().parse_args(["--data", str(demo_shards), "--output-dir", str(tmp_path),
                                                "--name", "r", "--replicas", "1"])
    cfg = new_config(args, demo_shards)
    cfg.run_dir.mkdir(parents=True)
    cfg.save(cfg.run_dir)

    def resume(*flags):
        argv = ["--output-dir", str(tmp_path), "--name", "r", "--resume", *flags]
        return resumed_config(launch.get_args_parser().parse_args(argv), launch.explicit_flags(argv))
    with pytest.raises(LaunchError, match="--lighting 0.0 differs from the run's saved value lighting=0.1"):
        resume("--lighting", "0")
    with pytest.raises(LaunchError, match="--no-crop-flip differs"):
        resume("--no-crop-flip")
    assert resume("--lighting", "0.1", "--epochs", "12", "--print-freq", "3").epochs == 12  # same value: no change


@pytest.mark.parametrize("name", [v.name for v in ablate.VARIANTS] + ["fig1_tanh_lr0.0025"])
def test_every_ablation_variant_is_a_launcher_command(demo_shards, tmp_path, name):
    """The variant's recipe, written as flags by the declaration, resolves through launch.py to the same settings
    (what is this machine's or the data's is left to the launcher)."""
    args = ablate.get_args_parser().parse_args(["--runs-dir", str(tmp_path)])
    ablate.resolve(args)
    budgets = ablate.make_budgets(args)
    variant = next(v for v in ablate.VARIANTS + ablate.figure1_variants(args) if v.name == name)
    want = dataclasses.replace(variant.config(budgets.of(variant)), seed=3)
    flags = command_line(want, skip=ablate.LOCAL + ("data",))
    got = new_config(launch.get_args_parser().parse_args(
        flags + ["--data", str(demo_shards), "--output-dir", str(tmp_path), "--name", name]), demo_shards)
    local = set(ablate.LOCAL) | {"data", "num_classes", "name", "output_dir", "storage", "address"}
    for f, _ in declared(TrainConfig):
        if f.name not in local:
            assert getattr(got, f.name) == getattr(want, f.name), (f.name, flags)
    assert ("--no-crop-flip" in flags) == (not want.crop_flip)
