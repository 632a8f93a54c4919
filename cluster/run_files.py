"""The names of the files a run leaves and the JSON-lines format of its logs, defined once for the code that writes
them (cluster/outputs.py, cluster/train.py) and the code that reads them (cluster/report.py, cluster/run.py). No Ray
imports here: report.py redoes a run's figures on a machine without a cluster."""
import json
from pathlib import Path

CHECKPOINT_FILE = "checkpoint.pt"  # inside each of Ray's checkpoint directories
METRICS_FILE = "metrics.jsonl"  # in the run directory: one line per epoch
EVENTS_FILE = "events.jsonl"  # in the run directory: failures, lost nodes


def read_jsonl(path):
    """The rows of a JSON-lines file; [] when it does not exist (yet)."""
    path = Path(path)
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []


def write_jsonl(path, rows):
    """Replace the file's rows at once (a reader never sees it half-written)."""
    tmp = Path(path).with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    tmp.replace(path)
