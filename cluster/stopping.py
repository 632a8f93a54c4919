"""What the launcher does on SIGTERM (a preemption notice: spot VMs, Kubernetes' pod deletion with its 30 s grace)
and on Ctrl-C (SIGINT): one policy for both. The run stops at once, Ray's workers with it; the newest registered
checkpoint stands as the run's last one (an upload cut short is never registered, cluster/checkpoints.py), the
launcher says where the run stopped and the exact command that resumes it, records the stop in events.jsonl, and
exits with 128 + the signal's number (130 for Ctrl-C, 143 for SIGTERM), as shells and Kubernetes read it.

Work lost is the epoch under way: checkpoints are written at the end of each epoch, and a resumed run starts the
next epoch after its checkpoint's, with the data order an uninterrupted run would have had at the same replica count
(the loader's order is a function of seed, epoch, rank and replica count).
"""
import json
import shlex
import signal
import sys
import threading
import time
from pathlib import Path

from cluster import checkpoints
from cluster.run_files import EVENTS_FILE, METRICS_FILE, read_jsonl

SIGNALS = (signal.SIGINT, signal.SIGTERM)


_received = []  # the signals that arrived since install(), newest last


class Stopped(KeyboardInterrupt):
    """Raised in the launcher's main thread by a stop signal. A KeyboardInterrupt: no `except Exception` on the way
    takes it for a training error, and Ray's ray.get, which turns any other exception raised by a signal handler into
    a SystemError only once the task is done, stops waiting at once (raising a KeyboardInterrupt of its own: which
    signal it was is in last_signal())."""


def _raise(signum, frame):
    for s in SIGNALS:  # a second signal while stopping ends the process the default way
        signal.signal(s, signal.SIG_DFL)
    _received.append(signum)
    raise Stopped(signal.Signals(signum).name)


def last_signal():
    """The stop signal that arrived, SIGINT when none did (a KeyboardInterrupt of Python's own)."""
    return _received[-1] if _received else signal.SIGINT


def exit_code(signum):
    return 128 + signum


def install():
    """Route SIGINT and SIGTERM to Stopped; returns the handlers they had, for restore()."""
    if threading.current_thread() is not threading.main_thread():  # only the main thread may set handlers
        return {}
    before = {s: signal.getsignal(s) for s in SIGNALS}
    for s in SIGNALS:
        signal.signal(s, _raise)
    return before


def restore(before):
    _received.clear()
    for s, handler in before.items():
        signal.signal(s, handler)


def resume_command(cfg):
    # absolute paths: the command works from any folder, with the same Python (its venv) as this one
    launcher = Path(__file__).resolve().parent / "launch.py"
    return shlex.join([sys.executable, str(launcher), "--output-dir", str(cfg.output_dir), "--name", cfg.name,
                       "--resume"])


def report(cfg, signum):
    """Say where the run stopped and how to resume it, and append a "stopped" event to events.jsonl; returns the
    exit code. cfg None: stopped before the run had settings (nothing to resume)."""
    name = signal.Signals(signum).name
    if cfg is None:
        print(f"stopped by {name} before training started; nothing to resume.", file=sys.stderr)
        return exit_code(signum)
    run_dir = Path(cfg.run_dir)
    done = read_jsonl(run_dir / METRICS_FILE)
    epochs = done[-1]["epoch"] if done else 0
    try:
        registered = checkpoints.listed(cfg.storage, cfg.name)
    except OSError as e:  # the store may be what failed
        registered, where = [], f"the checkpoints in {cfg.storage} could not be listed ({e})"
    else:
        where = (f"its latest checkpoint is {registered[-1].where}" if registered else
                 "it had written no checkpoint yet, so a resumed run starts from the beginning")
    print(f"stopped by {name} after {epochs} of {cfg.epochs} epoch(s); {where}. The epoch under way is lost and will "
        f"be redone. Resume with:\n  {resume_command(cfg)}", file=sys.stderr)
    if run_dir.is_dir():
        event = {"time": time.strftime("%Y-%m-%d %H:%M:%S"), "event": "stopped", "signal": name,
                 "epochs_done": epochs, "checkpoint": registered[-1].where if registered else None}
        with open(run_dir / EVENTS_FILE, "a") as f:
            f.write(json.dumps(event) + "\n")
    return exit_code(signum)
