"""A finished (or stopped) run, opened for use: its net with the checkpoint's weights, what its inputs must look like
(cluster/run_inputs.py) and what its outputs mean. Shared by cluster/classify.py and cluster/export.py.

The net is built as --test-only builds it (cluster/report.py trained_model from config.json, the single-device
grouped form that holds the two columns' weights). A checkpoint that does not fit the run is refused with what
differs: the class count, or the layers whose shapes differ.
"""
import json
import sys
from dataclasses import dataclass
from pathlib import Path

from cluster import checkpoints, run_inputs
from cluster.recipe import CONFIG_FILE
from cluster.report import ReportError, RunSettings, load_model_state, trained_model
from cluster.run_files import CHECKPOINT_FILE
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


def add_run_arguments(p):
    """The flags that pick a run and its checkpoint, shared by classify.py and export.py."""
    p.add_argument("--name", default=None, help="the run, a folder under --output-dir")
    p.add_argument("--output-dir", type=Path, default=Path("runs"), help="where runs are (default: runs)")
    p.add_argument("--run", type=Path, default=None, help="the run folder itself, instead of --name")
    p.add_argument("--checkpoint", default=None,
                   help="a checkpoint folder or checkpoint.pt: of run --name/--run, or alone when it is inside its run "
                        "folder (default: the run's final, else latest, one)")
    p.add_argument("--data", default=None,
                   help="the shards the run trained on, for a run folder without inputs.json (default: config.json's)")


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


def final_checkpoint(run_dir, storage, name):
    """summary.json's final checkpoint when the run finished, else the newest one Ray registered under --storage; each
    checked against its digest first (a damaged one is named and passed over, cluster/checkpoints.py)."""
    summary = run_dir / "summary.json"
    named = json.loads(summary.read_text()).get("checkpoint") if summary.is_file() else None
    if named:
        named = named if "://" in named else str(run_dir / named)  # summary.json may name it relative to the run
        why = checkpoints.problem_at(named)
        if why in (None, checkpoints.NO_DIGEST):
            return named
        print(f"warning: {named} (named by {summary}): {why}; looking for the newest intact checkpoint",
              file=sys.stderr)
    entry, damaged = checkpoints.newest_intact(storage, name)
    for bad, why in damaged:
        print(f"warning: {bad.where}: {why}; passed over", file=sys.stderr)
    if entry is None and damaged:
        raise RunError(checkpoints.none_intact_message(storage, name, damaged))
    if entry is None:
        said = "names a damaged one" if named else "names none"
        raise RunError(f"no intact checkpoint for run {name}: {summary} {said} and {storage}/{name} has none "
                       "registered. Has the run finished an epoch? (Or pass --checkpoint PATH.)")
    return entry.where


def given_checkpoint(checkpoint):
    """--checkpoint as a path or URI, refused when it does not match its digest (a checkpoint.pt is checked as its
    folder's; a file of another name is a state_dict saved by hand, with no digest)."""
    where = str(checkpoint) if "://" in str(checkpoint) else str(Path(checkpoint).resolve())
    if "://" not in where and Path(where).is_file() and Path(where).name != CHECKPOINT_FILE:
        return where  # a state_dict saved by hand: no digest to check it against
    folder = where[: -len(CHECKPOINT_FILE) - 1] if where.endswith("/" + CHECKPOINT_FILE) else where
    why = checkpoints.problem_at(folder)
    if why not in (None, checkpoints.NO_DIGEST):
        raise RunError(f"--checkpoint {checkpoint}: {why}. Nothing was loaded: name an intact checkpoint, or leave "
                       "--checkpoint out to use the run's newest intact one.")
    return where


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
        checkpoint = (given_checkpoint(checkpoint) if checkpoint else
                      final_checkpoint(run_dir, config.get("storage", str(run_dir.parent)),
                                       config.get("name", run_dir.name)))
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
