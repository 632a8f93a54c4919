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

from cluster.run_files import EVENTS_FILE, METRICS_FILE, read_jsonl, write_jsonl

TB_SCALARS = ("train_loss", "train_top1_error", "val_top1_error", "val_top5_error", "images_per_second", "lr",
              "replicas")
PER_RANK_KEYS = ("node", "rank")  # in every rank's report, kept per epoch as lists


class RunOutputs(UserCallback):
    """Keeps one metrics row per epoch: a re-run epoch (after a restart from an earlier checkpoint) replaces the rows
    from that epoch on, so every epoch appears once whatever failed."""

    def __init__(self, run_dir):
        self.run_dir = str(run_dir)
        self._tb = None
        self._nodes = []  # rank -> node id, from the latest report

    def _writer(self, first_epoch):
        if self._tb is None:
            from torch.utils.tensorboard import SummaryWriter
            # purge_step: events from a failed attempt at these epochs are dropped, not shown twice
            self._tb = SummaryWriter(str(Path(self.run_dir) / "tensorboard"), purge_step=first_epoch)
        return self._tb

    def after_report(self, run_context, metrics, checkpoint):
        row = {k: v for k, v in metrics[0].items() if k not in PER_RANK_KEYS}
        row["nodes"] = self._nodes = [m.get("node") for m in metrics]
        path = Path(self.run_dir) / METRICS_FILE
        rows = [r for r in read_jsonl(path) if r["epoch"] < row["epoch"]] + [row]
        write_jsonl(path, rows)
        tb = self._writer(row["epoch"])
        for key in TB_SCALARS:
            if key in row:
                tb.add_scalar(key, row[key], row["epoch"])
        tb.flush()

    def after_exception(self, run_context, worker_exceptions):
        """One line per failure: each failed rank's error and the node it last ran on. Whether that node was lost
        is decided later (mark_lost_nodes): when a raylet is killed the health check fails within a second or two,
        long before the cluster marks the node dead."""
        ranks = {str(rank): {"error": _describe(e), "node": self._nodes[rank] if rank < len(self._nodes) else None}
                 for rank, e in sorted(worker_exceptions.items())}
        event = {"time": time.strftime("%Y-%m-%d %H:%M:%S"), "event": "failure",
                 "epochs_done": len(read_jsonl(Path(self.run_dir) / METRICS_FILE)), "ranks": ranks}
        with open(Path(self.run_dir) / EVENTS_FILE, "a") as f:
            f.write(json.dumps(event) + "\n")

    def close(self):
        if self._tb is not None:
            self._tb.close()
            self._tb = None


def _describe(exc):
    text = " ".join(line.strip() for line in str(exc).strip().splitlines())
    return f"{type(exc).__name__}: {text}"[:400]


def mark_lost_nodes(run_dir, dead_nodes):
    """Set each failure event's node_lost (a failed rank ran on a node the cluster now lists as dead) and rewrite
    events.jsonl; returns the events. Called by the driver after the run, when the cluster knows which died."""
    path = Path(run_dir) / EVENTS_FILE
    events = read_jsonl(path)
    for event in events:
        if event["event"] == "failure":
            event["node_lost"] = any(r.get("node") in dead_nodes for r in event["ranks"].values())
    if events:
        write_jsonl(path, events)
    return events
