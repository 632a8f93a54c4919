"""The names of the files a run leaves and the JSON-lines format of its logs, defined once for the code that writes
them (cluster/outputs.py, cluster/worker.py) and the code that reads them (cluster/report.py, cluster/driver.py). No Ray
imports here: report.py redoes a run's figures on a machine without a cluster."""
import json
from pathlib import Path

CHECKPOINT_FILE = "checkpoint.pt"  # inside each of Ray's checkpoint directories
DIGEST_FILE = "checkpoint.sha256.json"  # beside it: its size and sha256 (cluster/checkpoints.py)
SNAPSHOT_FILE = "checkpoint_manager_snapshot.json"  # Ray 2.60's list of a run's checkpoints, in --storage/NAME
CHECKPOINTS_KEPT = 2  # Ray keeps the newest two (cluster/driver.py); cluster/disk_space.py counts the room they take
METRICS_FILE = "metrics.jsonl"  # in the run directory: one line per epoch
SHARDS_FILE = "shards.json"  # in the run directory: each local shard's size, mtime and inode when the run started
EVENTS_FILE = "events.jsonl"  # in the run directory: failures, lost nodes


def checkpoint_dirs(storage, name):
    """A run's checkpoint folders under a local --storage, oldest first ([] for a URI or none yet): Ray names them
    --storage/NAME/checkpoint_<date>_<time>, so sorted order is age order. Folders only: Ray 2.60 also writes
    SNAPSHOT_FILE there, and a folder it has not registered yet (an upload under way or cut short) counts too, as it
    takes room (cluster/checkpoints.listed is the list of registered ones)."""
    return [] if "://" in str(storage) else sorted(p for p in (Path(storage) / name).glob("checkpoint_*")
                                                   if p.is_dir())


def read_jsonl(path):
    """The rows of a JSON-lines file; [] when it does not exist (yet)."""
    path = Path(path)
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []


def write_jsonl(path, rows):
    """Replace the file's rows at once (a reader never sees it half-written)."""
    tmp = Path(path).with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    tmp.replace(path)
