"""Checkpoints a run can trust: written with a digest, read back and checked in storage before Ray may delete the one
they replace, listed the way Ray 2.60 lists them, and checked again before use.

Ray keeps CHECKPOINTS_KEPT checkpoints and deletes the oldest as soon as a new one is registered, so the intact one
before a damaged newest one is the only fallback. Ray registers a checkpoint only after `ray.train.report`'s upload
function returns: VerifiedUpload uploads, reads the copy back and compares it with its digest before returning, so a
checkpoint that did not arrive whole never displaces an intact one. A checkpoint folder Ray has not registered (an
upload cut short) is not in Ray's snapshot and is never listed.

Works on any storage pyarrow opens (a local path, s3://...). No Ray import at module level: the launcher lists and
verifies before Ray starts.
"""
import dataclasses
import errno
import hashlib
import json
import os
import sys
import time

import pyarrow.fs as pafs
import torch

from cluster.run_files import CHECKPOINT_FILE, DIGEST_FILE, SNAPSHOT_FILE

CHUNK = 8 << 20
# pyarrow's S3 filesystem from from_uri sets no request timeout: an upload to a paused server hung until the server
# came back. Bounded requests let VerifiedUpload retry, and give up with an error, instead
S3_TIMEOUTS_S = {"connect_timeout": 10.0, "request_timeout": 60.0}


# A checkpoint Ray registered without a digest beside it was written before checkpoints carried one (an upload cut
# short is never registered): used, unchecked, and said so, rather than leave a run from an older version stranded.
NO_DIGEST = f"{DIGEST_FILE} is missing (written before checkpoints carried a digest): used unchecked"


class CheckpointError(Exception):
    """A checkpoint cannot be written or none can be used; the message names the path or URI and what to do."""


@dataclasses.dataclass(frozen=True)
class Listed:
    """One of a run's checkpoints in storage."""
    where: str  # a local path or a URI, as Ray's Checkpoint(path) and the user take it
    dir_name: str  # checkpoint_<date>_<time>
    epoch: int | None  # the epochs done when it was written (its report's metrics), if known


def _storage(storage):
    """(pyarrow filesystem, path on it) for --storage: pyarrow's from_uri, as Ray resolves it, except for s3://."""
    storage = str(storage)
    if storage.startswith("s3://"):  # as from_uri would, with bounded requests (endpoint, keys: the environment)
        env = {k: os.environ.get(v) for k, v in (("endpoint_override", "AWS_ENDPOINT_URL"), ("region", "AWS_REGION"))}
        env["region"] = env["region"] or os.environ.get("AWS_DEFAULT_REGION")
        return (pafs.S3FileSystem(**{k: v for k, v in env.items() if v}, **S3_TIMEOUTS_S),
                storage[len("s3://"):].rstrip("/"))
    if "://" in storage:
        return pafs.FileSystem.from_uri(storage)
    return pafs.LocalFileSystem(), os.path.abspath(storage)


def _where(storage, name, dir_name):
    return f"{str(storage).rstrip('/')}/{name}/{dir_name}"


def _exists(fs, path):
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def listed(storage, name):
    """A run's registered checkpoints, oldest first, from Ray's checkpoint_manager_snapshot.json: the list Ray itself
    resumes from. No snapshot, no checkpoint: Ray 2.60 writes it when it registers the first one, and starts a run
    without one from scratch (a checkpoint_* folder it does not list is an upload cut short)."""
    fs, base = _storage(storage)
    snapshot = f"{base}/{name}/{SNAPSHOT_FILE}"
    if not _exists(fs, snapshot):
        return []
    with fs.open_input_stream(snapshot) as f:
        state = json.loads(f.read().decode())
    return [Listed(_where(storage, name, r["checkpoint_dir_name"]), r["checkpoint_dir_name"],
                   r.get("metrics", {}).get("epoch")) for r in state.get("checkpoint_results", [])]


def digest_of(fs, path):
    """(bytes, sha256 hex) of a file, read in chunks."""
    h, n = hashlib.sha256(), 0
    with fs.open_input_stream(path) as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
            n += len(chunk)
    return n, h.hexdigest()


def write(state, folder):
    """torch.save `state` into folder/checkpoint.pt and its digest beside it (folder/checkpoint.sha256.json)."""
    path = os.path.join(folder, CHECKPOINT_FILE)
    torch.save(state, path)
    size, sha = digest_of(pafs.LocalFileSystem(), path)
    with open(os.path.join(folder, DIGEST_FILE), "w") as f:
        json.dump({"file": CHECKPOINT_FILE, "bytes": size, "sha256": sha, "epoch": state.get("epoch")}, f)


def problem(fs, folder):
    """None when folder's checkpoint.pt matches its digest, else what is wrong, in words."""
    file, digest_file = f"{folder}/{CHECKPOINT_FILE}", f"{folder}/{DIGEST_FILE}"
    if not _exists(fs, file):
        return f"{CHECKPOINT_FILE} is missing"
    if not _exists(fs, digest_file):
        return NO_DIGEST
    try:
        with fs.open_input_stream(digest_file) as f:
            want = json.loads(f.read().decode())
    except (OSError, ValueError) as e:
        return f"{DIGEST_FILE} is unreadable ({e})"
    size, sha = digest_of(fs, file)
    if size != want["bytes"]:
        return f"{CHECKPOINT_FILE} has {size:,} bytes where its digest says {want['bytes']:,} (truncated?)"
    if sha != want["sha256"]:
        return f"{CHECKPOINT_FILE}'s sha256 differs from its digest (damaged bytes)"
    return None


def problem_at(where):
    """problem() for a local path or a URI."""
    fs, path = _storage(where)
    try:
        return problem(fs, path)
    except OSError as e:
        return f"cannot be read ({e})"


def newest_intact(storage, name):
    """(the newest intact Listed or None, [(Listed, problem)] for each newer one that is damaged). A checkpoint
    without a digest counts as intact (NO_DIGEST)."""
    entry, _, damaged = _newest_intact(storage, name)
    return entry, damaged


def _newest_intact(storage, name):
    """newest_intact's answer with the intact one's problem() in the middle (None, or NO_DIGEST): each checkpoint is
    hashed (downloaded, from a store) once."""
    damaged = []
    for entry in reversed(listed(storage, name)):
        why = problem_at(entry.where)
        if why in (None, NO_DIGEST):
            return entry, why, damaged
        damaged.append((entry, why))
    return None, None, damaged


def none_intact_message(storage, name, damaged):
    named = "; ".join(f"{e.where}: {why}" for e, why in damaged)
    return (f"no intact checkpoint for run {name} under {storage}: {named}. Nothing was loaded. Start a new run "
            "with another --name (or restore the checkpoint folders from a backup).")


def forget(storage, name, dir_names):
    """Take these checkpoints out of Ray's snapshot (the list it resumes from and deletes the oldest of), so that Ray
    hands the newest intact one to the workers and keeps it when the next one registers; the folders stay where they
    are. Ray 2.60's format: parallel lists checkpoint_results / checkpoint_report_indices, the latest result apart."""
    fs, base = _storage(storage)
    path = f"{base}/{name}/{SNAPSHOT_FILE}"
    with fs.open_input_stream(path) as f:
        state = json.loads(f.read().decode())
    gone = set(dir_names)
    kept = [(r, i) for r, i in zip(state["checkpoint_results"], state["checkpoint_report_indices"])
            if r["checkpoint_dir_name"] not in gone]
    state["checkpoint_results"] = [r for r, _ in kept]
    state["checkpoint_report_indices"] = [i for _, i in kept]
    state["latest_checkpoint_result"] = kept[-1][0] if kept else None
    pending = [(r, v) for r, v in zip(state["pending_training_results"], state["pending_validation_specs"])
               if r["checkpoint_dir_name"] not in gone]
    state["pending_training_results"], state["pending_validation_specs"] = [r for r, _ in pending], \
        [v for _, v in pending]
    for key in ("validated_checkpoint_dir_names", "timed_out_validation_checkpoint_dir_names",
                "failed_validation_checkpoint_dir_names"):
        state[key] = [d for d in state.get(key, []) if d not in gone]
    with fs.open_output_stream(path + ".tmp") as f:
        f.write(json.dumps(state).encode())
    fs.move(path + ".tmp", path)


def resume_point(storage, name):
    """For --resume, before Ray starts: a line naming the checkpoint the run will continue from. Newer ones that fail
    their digest are named and taken out of Ray's list (forget); CheckpointError naming each when none is intact."""
    entry, entry_problem, damaged = _newest_intact(storage, name)
    if entry is None and damaged:
        raise CheckpointError(none_intact_message(storage, name, damaged))
    if damaged:
        forget(storage, name, [e.dir_name for e, _ in damaged])
    passed = "".join(f"checkpoint {e.where}: {why}; passed over (the folder is left for you to inspect or "
                     "delete).\n" for e, why in damaged)
    if entry is None:
        return passed + f"--resume: run {name} has no checkpoint yet; it starts from the first epoch"
    epoch = f" (after epoch {entry.epoch})" if entry.epoch is not None else ""
    checked = "checked against its digest" if entry_problem is None else NO_DIGEST
    return passed + f"--resume: continuing from {entry.where}{epoch}, {checked}"


def load_state(where):
    """The state dict of a verified local checkpoint folder; CheckpointError (naming it) if it does not verify or,
    without a digest (said), does not load."""
    why = problem(pafs.LocalFileSystem(), os.path.abspath(where))
    if why == NO_DIGEST:
        _say(f"checkpoint {where}: {why}")
    elif why is not None:
        raise CheckpointError(f"{where}: {why}")
    try:
        return torch.load(os.path.join(where, CHECKPOINT_FILE), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch.load raises many kinds (pickle, zip, struct) on a bad file
        raise CheckpointError(f"{where}: {CHECKPOINT_FILE} does not load ({e})") from None


def _say(msg):
    # Not print(): in a Ray Train worker print goes through Train's logger and reaches the driver twice
    sys.stdout.write(msg + "\n")
    sys.stdout.flush()


def _size(n):
    return f"{n / 1e9:.2f} GB" if n >= 1e8 else f"{n / 1e6:.1f} MB"


def _no_space(e):
    return getattr(e, "errno", None) == errno.ENOSPC or "No space left" in str(e)


@dataclasses.dataclass
class VerifiedUpload:
    """ray.train.report's checkpoint_upload_fn: copy the local checkpoint folder to --storage/NAME/DIR_NAME, read it
    back against its digest, and only then return it for Ray to register. A store that stops answering is retried
    with doubling waits (this layer; Ray's own retry around it matches a few AWS error texts only); when every
    attempt fails, or a local disk is full, the error names the destination and Ray never registers the folder."""
    storage: str
    name: str
    attempts: int = 6
    first_wait_s: float = 2.0  # waits 2, 4, 8, 16, 32 s: about a minute of outage is ridden out
    # the worker's ray.train.get_context().get_storage(): Ray registers only a checkpoint on its own filesystem
    # object (ours for s3:// differs by its timeouts), so the one returned names that
    ray_storage: object = None

    def __call__(self, checkpoint, dir_name):
        import ray.train

        fs, base = _storage(self.storage)
        dest, where = f"{base}/{self.name}/{dir_name}", _where(self.storage, self.name, dir_name)
        last, wait, start = None, self.first_wait_s, time.monotonic()
        for attempt in range(1, self.attempts + 1):
            try:
                fs.create_dir(dest)
                pafs.copy_files(checkpoint.path, dest, source_filesystem=checkpoint.filesystem,
                                destination_filesystem=fs)
                last = problem(fs, dest)
                if last is None:
                    if self.ray_storage is None:
                        return ray.train.Checkpoint(path=dest, filesystem=fs)
                    return ray.train.Checkpoint(path=f"{self.ray_storage.experiment_fs_path}/{dir_name}",
                                                filesystem=self.ray_storage.storage_filesystem)
            except OSError as e:
                if _no_space(e):
                    raise CheckpointError(self._full(where, checkpoint, fs, dest)) from None
                # Ray retries the whole upload again on these texts: say them otherwise, so the wait stays ours
                last = str(e).replace("AWS Error", "AWS error")
            if attempt < self.attempts:
                _say(f"checkpoint upload to {where}, attempt {attempt} of {self.attempts}: {last}; retrying in "
                     f"{wait:g} s")
                time.sleep(wait)
                wait *= 2
        raise CheckpointError(f"checkpoint upload to {where} failed {self.attempts} times in "
                              f"{time.monotonic() - start:.0f} s (last: {last}). The previous checkpoint is intact "
                              "and is what --resume continues from.")

    def _full(self, where, checkpoint, fs, dest):
        need = sum(i.size or 0 for i in checkpoint.filesystem.get_file_info(pafs.FileSelector(checkpoint.path)))
        try:
            fs.delete_dir(dest)  # give back what the partial copy took
        except OSError:
            pass
        free = ""
        if "://" not in str(self.storage):
            import shutil
            free = f", {_size(shutil.disk_usage(self.storage).free)} free there"
        return (f"{where}: no space left on device writing a checkpoint ({_size(need)} needed{free}). The "
                "previous checkpoint is intact. Free space under --storage (or point it at a disk with room), then "
                "--resume.")
