"""What a run leaves for people: summary.json, learning curves, the paper's Figure 3 (conv1 kernels) and Figure 4
(top-5 predictions and fc7 nearest neighbours), all in the run directory.

    python -m cluster.report RUN_DIR                        # redo every figure and the summary from RUN_DIR alone

At the end of a run: write_all(run_dir, summary_fields, checkpoint, config). A run directory holds config.json (the
run's resolved settings: RunSettings' keys at least), metrics.jsonl (one line per epoch) and summary.json, whose
"checkpoint" is the final checkpoint directory (a path, relative to RUN_DIR or absolute, or a URI Ray can read).
"""
import argparse
import json
import sys
from dataclasses import MISSING, dataclass, fields
from pathlib import Path

from cluster.figures import plot_conv1, plot_figure4, plot_learning_curves
from cluster.recipe import CONFIG_FILE
from cluster.run_files import CHECKPOINT_FILE, METRICS_FILE, read_jsonl

DEFAULT_TRAIN_SUBSET = 20000
FROM_METRICS = ("val_top1_error", "val_top5_error", "val_top1_error_10crop", "val_top5_error_10crop", "epochs",
                "images_per_second", "train_loss", "train_top1_error", "lr")


class ReportError(Exception):
    """A run directory cannot be reported on; the message names the file and what to do."""


@dataclass(frozen=True)
class RunSettings:
    """The settings of a run that its figures need (config.json may hold more)."""
    data: str  # the shard folder
    crop: int
    normalize: str  # the input normalisation the run trained with (pipeline/stats.py)
    num_classes: int
    activation: str
    lrn: bool
    overlapping_pool: bool
    seed: int
    # the net's other settings (cluster/build_model.py): a figure's net is in eval mode (no dropout) and holds the
    # checkpoint's weights (not its init), so a config.json that lacks them still reports
    dropout: float = 0.0
    init: str = "paper"

    @classmethod
    def from_config(cls, config, source):
        missing = [f.name for f in fields(cls) if f.name not in config and f.default is MISSING]
        if missing:
            hint = (' (a run from before the setting existed divided its inputs by the std: add "normalize": "std")'
                    if "normalize" in missing else "")
            raise ReportError(f"{source}: missing {', '.join(missing)}; it must hold the run's resolved settings"
                              f"{hint}.")
        return cls(**{f.name: config[f.name] for f in fields(cls) if f.name in config})


def _read_json(path, what):
    if not path.is_file():
        raise ReportError(f"{path}: not found; {what}")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ReportError(f"{path}: not valid JSON ({e}).") from None


def read_settings(run_dir):
    path = Path(run_dir) / CONFIG_FILE
    config = _read_json(path, "cluster/launch.py writes it when a run starts. Is this a run directory?")
    return RunSettings.from_config(config, path)


def load_model_state(checkpoint, run_dir):
    """The merged model state_dict of a checkpoint directory (or its checkpoint.pt), local or a URI."""
    import torch

    text = str(checkpoint)
    if "://" in text:
        import ray.train  # only for remote checkpoints: Ray is slow to import
        try:
            with ray.train.Checkpoint(text).as_directory() as d:
                return load_model_state(d, run_dir)
        except (OSError, ValueError) as e:
            raise ReportError(f"checkpoint {text} (from {Path(run_dir) / 'summary.json'}): cannot read it ({e}).") \
                from None
    path = Path(run_dir) / text  # an absolute path stays as it is
    file = path / CHECKPOINT_FILE if path.is_dir() else path
    if not file.is_file():
        raise ReportError(f"{file}: checkpoint not found (named by {Path(run_dir) / 'summary.json'}). "
                          "Point summary.json's \"checkpoint\" at the run's final checkpoint directory.")
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch.load raises many kinds (pickle, zip, struct) on a bad file
        raise ReportError(f"{file}: not a readable checkpoint ({e}).") from None
    return state["model"] if "model" in state else state


def trained_model(settings, model_state):
    """The single-device form of the run's net holding the checkpoint's weights (the merged layout fits both)."""
    from cluster.build_model import build_model

    model = build_model(settings, grouped=True)
    try:
        model.load_state_dict(model_state)
    except RuntimeError as e:  # e.g. num_classes or a layer's shape differs: the checkpoint is another run's
        raise ReportError(f"the checkpoint does not fit the net config.json describes ({settings}): {e}") from None
    return model.eval()


def summarise(history, summary_fields):
    """The last epoch's numbers from metrics.jsonl, then summary_fields (workers, devices, 10-crop errors, ...)."""
    last = history[-1] if history else {}
    derived = {k: last.get(k) for k in FROM_METRICS if k != "epochs"}
    return {**derived, "epochs": last.get("epoch", 0), **summary_fields}


def _paths(run_dir):
    return {"summary": run_dir / "summary.json", "curves": run_dir / "learning_curves.png",
            "kernels": run_dir / "conv1_kernels.png", "figure4": run_dir / "figure4.png",
            "metrics": run_dir / METRICS_FILE, "tensorboard": run_dir / "tensorboard"}


def write_all(run_dir, summary_fields, checkpoint, config=None, *, train_subset=DEFAULT_TRAIN_SUBSET, seed=None,
              log=None):
    """Everything a run leaves for people, from its final checkpoint; returns (summary, paths).

    summary_fields: what only the caller knows (workers, devices, 10-crop errors, ...), added to the last epoch's
      numbers from metrics.jsonl. checkpoint: the final checkpoint directory (path or URI; recorded in summary.json
      so that report.py can redo the figures) or the loaded checkpoint dict / model state_dict itself.
      config: the run's resolved settings (a dict); None reads RUN_DIR/config.json. seed: for Figure 4's choice of
      images and training subset; None: the run's seed. summary.json and the curves are written before the model
      figures, so a ReportError from those (shards gone, say) leaves them in place."""
    run_dir = Path(run_dir)
    if config is not None:
        settings = RunSettings.from_config(config, "write_all(config=...)")
    else:
        settings = read_settings(run_dir)
    history = read_jsonl(run_dir / METRICS_FILE)
    if isinstance(checkpoint, dict):
        model_state = checkpoint.get("model", checkpoint)
    else:
        summary_fields = {**summary_fields, "checkpoint": str(checkpoint)}
        model_state = None
    summary = summarise(history, summary_fields)
    paths = _paths(run_dir)
    paths["summary"].write_text(json.dumps(summary, indent=1) + "\n")
    if history:
        plot_learning_curves(history, paths["curves"], settings.num_classes)
    if model_state is None:
        model_state = load_model_state(checkpoint, run_dir)
    plot_conv1(model_state["conv1.weight"].float().numpy(), paths["kernels"])
    from cluster.figure4 import compute_figure4
    from pipeline.manifest import ManifestError

    try:
        data = compute_figure4(trained_model(settings, model_state), settings.data, settings.crop,
                               normalize=settings.normalize, train_subset=train_subset,
                               seed=settings.seed if seed is None else seed, log=log)
    except ManifestError as e:
        raise ReportError(f"figure 4 needs the run's shards ({settings.data}, config.json's \"data\"): {e}") from None
    plot_figure4(data, paths["figure4"])
    return summary, paths


def get_args_parser():
    p = argparse.ArgumentParser(description="Redo a run's summary.json and figures (learning curves, conv1 kernels, "
                                "Figure 4) from its directory: config.json, metrics.jsonl, summary.json's checkpoint.")
    p.add_argument("run_dir", type=Path, help="the run directory (runs/<name>)")
    p.add_argument("--train-subset", type=int, default=DEFAULT_TRAIN_SUBSET, metavar="N",
                   help="Figure 4 searches the fc7 neighbours among at most N training images, whole shard files "
                        f"in a seeded order (default: {DEFAULT_TRAIN_SUBSET})")
    p.add_argument("--seed", type=int, default=None,
                   help="seed for Figure 4's images and training subset (default: the run's seed in config.json)")
    return p


def main(argv=None):
    args = get_args_parser().parse_args(argv)
    if args.train_subset < 1:
        print(f"error: --train-subset must be >= 1, got {args.train_subset}", file=sys.stderr)
        return 2
    run_dir = args.run_dir
    try:
        read_settings(run_dir)  # the first thing a wrong directory lacks: say so before anything slow
        old = _read_json(run_dir / "summary.json", "cluster/launch.py writes it at the end of a run.")
        if "checkpoint" not in old:
            raise ReportError(f"{run_dir / 'summary.json'}: no \"checkpoint\" entry naming the final checkpoint "
                              "directory; add it (a path or URI) to redo the figures.")
        kept = {k: v for k, v in old.items() if k not in FROM_METRICS}
        _, paths = write_all(run_dir, kept, old["checkpoint"], train_subset=args.train_subset, seed=args.seed,
                             log=print)
    except ReportError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print("wrote " + ", ".join(str(p) for k, p in paths.items() if k in ("summary", "curves", "kernels", "figure4")
                               and p.exists()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
