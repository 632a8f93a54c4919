"""The driver's side of a run's outputs: metrics.jsonl, TensorBoard events and events.jsonl (failures, lost nodes,
replica counts), written from what the workers report.

Ray Train V2 calls a UserCallback in its controller, an actor that Ray pins to the node of the driver script
(`launch.py`), so these files land where the driver runs, whichever nodes the ranks sit on. (With a `ray://` client
address the "driver node" is the cluster's head: run launch.py on a cluster node or through `ray job submit` to get
the outputs where you are.)
"""
import json
import time
from pathlib import Path

from ray.train import UserCallback

METRICS_FILE = "metrics.jsonl"
EVENTS_FILE = "events.jsonl"
TB_SCALARS = ("train_loss", "train_top1_error", "val_top1_error", "val_top5_error", "images_per_second", "lr",
              "replicas")
PER_RANK_KEYS = ("node", "rank")  # in every rank's report, kept per epoch as lists


def read_jsonl(path):
    path = Path(path)
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []


def write_jsonl(path, rows):
    tmp = Path(path).with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    tmp.replace(path)


class RunOutputs(UserCallback):
    """Keeps one metrics row per epoch: a re-run epoch (after a restart from an earlier checkpoint) replaces the rows
    from that epoch on, so every epoch appears once whatever failed."""

    def __init__(self, run_dir):
        self.run_dir = str(run_dir)
        self._tb = None

    def _writer(self, first_epoch):
        if self._tb is None:
            from torch.utils.tensorboard import SummaryWriter
            # purge_step: events from a failed attempt at these epochs are dropped, not shown twice
            self._tb = SummaryWriter(str(Path(self.run_dir) / "tensorboard"), purge_step=first_epoch)
        return self._tb

    def after_report(self, run_context, metrics, checkpoint):
        row = {k: v for k, v in metrics[0].items() if k not in PER_RANK_KEYS}
        row["nodes"] = [m.get("node") for m in metrics]
        path = Path(self.run_dir) / METRICS_FILE
        rows = [r for r in read_jsonl(path) if r["epoch"] < row["epoch"]] + [row]
        write_jsonl(path, rows)
        tb = self._writer(row["epoch"])
        for key in TB_SCALARS:
            if key in row:
                tb.add_scalar(key, row[key], row["epoch"])
        tb.flush()

    def after_exception(self, run_context, worker_exceptions):
        event = {"time": time.strftime("%Y-%m-%d %H:%M:%S"), "event": "failure",
                 "epochs_done": len(read_jsonl(Path(self.run_dir) / METRICS_FILE)),
                 "ranks": {str(rank): _describe(e) for rank, e in sorted(worker_exceptions.items())}}
        event["node_lost"] = any(_is_node_loss(e) for e in worker_exceptions.values())
        with open(Path(self.run_dir) / EVENTS_FILE, "a") as f:
            f.write(json.dumps(event) + "\n")

    def close(self):
        if self._tb is not None:
            self._tb.close()
            self._tb = None


def _describe(exc):
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:300]


def _is_node_loss(exc):
    """A worker whose node (raylet) died, as opposed to an error raised in the training code."""
    from ray.exceptions import ActorDiedError, NodeDiedError
    text = str(exc).lower()
    return isinstance(exc, NodeDiedError) or (isinstance(exc, ActorDiedError) and "node" in text) or \
        "node has died" in text or "raylet" in text
