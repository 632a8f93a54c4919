"""A finished (or stopped) run, opened for use: its net with the checkpoint's weights, what its inputs must look like
(cluster/run_inputs.py) and what its outputs mean. Shared by cluster/classify.py and cluster/export.py.

The net is built as --test-only builds it (cluster/report.py trained_model from config.json, the single-device
grouped form that holds the two columns' weights). A checkpoint that does not fit the run is refused with what
differs: the class count, or the layers whose shapes differ.
"""
import json
from dataclasses import dataclass
from pathlib import Path

from cluster import run_inputs
from cluster.recipe import CONFIG_FILE
from cluster.report import ReportError, RunSettings, load_model_state, trained_model
from cluster.run_files import CHECKPOINT_FILE, checkpoint_dirs
from cluster.run_inputs import Preprocessing, RunInputs, RunInputsError
from pipeline import object_store


class RunError(Exception):
    """The run cannot be used; the message names the file and what to do."""


@dataclass
class TrainedRun:
    run_dir: Path
    config: dict  # config.json
    checkpoint: str
    inputs: RunInputs
    preprocessing: Preprocessing
    model: object  # model.GroupedAlexNet in eval mode, on the CPU

    @property
    def num_classes(self):
        return len(self.inputs.classes)


def shown(path):
    """A path as a person reads it: relative to the working directory when it is inside it."""
    text = str(path)
    if "://" in text:
        return text
    try:
        return str(Path(text).resolve().relative_to(Path.cwd()))
    except ValueError:
        return text


def run_folder(name=None, output_dir="runs", run=None, checkpoint=None):
    """RUN_DIR from --run, else --output-dir/--name, else the run folder that holds --checkpoint (the default
    --storage is the run folder: RUN_DIR/checkpoint_*/checkpoint.pt)."""
    if run is not None:
        return Path(run).resolve()
    if name:
        return (Path(output_dir) / name).resolve()
    if checkpoint is not None and "://" not in str(checkpoint):
        for folder in list(Path(checkpoint).resolve().parents)[:2]:
            if (folder / CONFIG_FILE).is_file():
                return folder
        raise RunError(f"--checkpoint {checkpoint}: no run folder (with {CONFIG_FILE}) above it; its checkpoints "
                       "live elsewhere (--storage): name the run too, with --name NAME or --run RUN_DIR")
    raise RunError("name a run: --name NAME (a folder under --output-dir), --run RUN_DIR, or --checkpoint PATH "
                   "inside a run folder")


def final_checkpoint(run_dir, config):
    """summary.json's checkpoint when the run finished, else the newest checkpoint_* under its --storage."""
    summary = run_dir / "summary.json"
    if summary.is_file():
        named = json.loads(summary.read_text()).get("checkpoint")
        if named:
            return named
    found = checkpoint_dirs(config.get("storage", run_dir.parent), config.get("name", run_dir.name))
    if not found:
        raise RunError(f"{run_dir}: no checkpoint: {summary} names none and its storage has no checkpoint_* folder. "
                       "Has the run finished an epoch? (Or pass --checkpoint PATH.)")
    return str(found[-1])


def open_run(run_dir, *, checkpoint=None, data=None):
    """The run in RUN_DIR with the weights of `checkpoint` (default: its final one). data: the shards, for a run
    older than inputs.json (default: config.json's data)."""
    run_dir = Path(run_dir).resolve()
    path = run_dir / CONFIG_FILE
    if not path.is_file():
        raise RunError(f"{path}: not found. Is {run_dir} a run folder (cluster/launch.py writes config.json)? "
                       "Check --name and --output-dir, or --run.")
    config = json.loads(path.read_text())
    if data is not None and not object_store.is_uri(data):
        data = str(Path(data).resolve())
    try:
        inputs = run_inputs.load(run_dir, data if data is not None else config.get("data"))
        settings = RunSettings.from_config({**config, "data": data or config.get("data")}, path)
        checkpoint = str(Path(checkpoint).resolve()) if checkpoint else final_checkpoint(run_dir, config)
        if "://" not in checkpoint:  # summary.json may name it relative to the run folder
            checkpoint = str(run_dir / checkpoint)
        state = load_model_state(checkpoint, run_dir)
    except (RunInputsError, ReportError) as e:
        raise RunError(str(e)) from None
    where = shown(Path(checkpoint) / CHECKPOINT_FILE if Path(checkpoint).is_dir() else checkpoint)
    classes = len(inputs.classes)
    if settings.num_classes != classes:
        raise RunError(f"{path} says {settings.num_classes} classes and the run's class list has {classes}: "
                       "they are from different runs.")
    head = state.get("fc8.weight")
    if head is not None and head.shape[0] != classes:
        raise RunError(f"{where}: a net of {head.shape[0]} classes (fc8.weight {tuple(head.shape)}), and run "
                       f"{run_dir.name} has {classes}: the checkpoint is another run's.")
    try:
        model = trained_model(settings, state)
    except ReportError as e:  # torch's message names every key and shape that differs
        raise RunError(f"{where}: {e}. The checkpoint is another run's, or another model's.") from None
    return TrainedRun(run_dir=run_dir, config=config, checkpoint=str(checkpoint), inputs=inputs,
                      preprocessing=Preprocessing.of(inputs, config), model=model)
