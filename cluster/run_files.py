"""The names of the files a run leaves and the JSON-lines format of its logs, defined once for the code that writes
them (cluster/outputs.py, cluster/worker.py) and the code that reads them (cluster/report.py, cluster/driver.py). No Ray
imports here: report.py redoes a run's figures on a machine without a cluster."""
import json
from pathlib import Path

CHECKPOINT_FILE = "checkpoint.pt"  # inside each of Ray's checkpoint directories
CHECKPOINTS_KEPT = 2  # Ray keeps the newest two (cluster/driver.py); cluster/disk_space.py counts the room they take
METRICS_FILE = "metrics.jsonl"  # in the run directory: one line per epoch
EVENTS_FILE = "events.jsonl"  # in the run directory: failures, lost nodes


def checkpoint_dirs(storage, name):
    """A run's checkpoint folders under a local --storage, oldest first ([] for a URI or none yet): Ray names them
    --storage/NAME/checkpoint_<date>_<time>, so sorted order is age order."""
    return [] if "://" in str(storage) else sorted((Path(storage) / name).glob("checkpoint_*"))


def read_jsonl(path):
    """The rows of a JSON-lines file; [] when it does not exist (yet)."""
    path = Path(path)
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []


def write_jsonl(path, rows):
    """Replace the file's rows at once (a reader never sees it half-written)."""
    tmp = Path(path).with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    tmp.replace(path)
