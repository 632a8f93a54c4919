"""Where a run goes when the launcher runs as a `ray job submit` job.

A submitted job's entrypoint runs in Ray's temporary copy of --working-dir (.../runtime_resources/working_dir_files/
_ray_pkg_<hash>/), which Ray deletes when it cleans its cache: a relative --output-dir or --storage would put the
run's outputs and checkpoints there, and the job would succeed and leave nothing. So in a submitted job relative
local paths are refused, with the absolute form to use, and the run says on which node its folder is.

Ray marks the entrypoint of a submitted job with the variable RAY_JOB_CONFIG_JSON_ENV_VAR, whose "metadata" holds
the submission id (ray/dashboard/modules/job/job_supervisor.py, Ray 2.60); a script run by hand has no such variable.
"""
import json
import os
import socket
from pathlib import Path

from cluster.resolve import is_storage_uri

JOB_CONFIG_ENV = "RAY_JOB_CONFIG_JSON_ENV_VAR"
SUBMISSION_ID_KEY = "job_submission_id"


def submission_id(environ=None):
    """The id of the `ray job submit` job this process is the entrypoint of (raysubmit_...), or None."""
    text = (os.environ if environ is None else environ).get(JOB_CONFIG_ENV)
    if not text:
        return None
    try:
        metadata = json.loads(text).get("metadata") or {}
    except (json.JSONDecodeError, AttributeError):
        return None
    return metadata.get(SUBMISSION_ID_KEY)


def relative_path_error(output_dir, storage, environ=None):
    """The message refusing a relative --output-dir or local --storage inside a submitted job; None when fine."""
    job = submission_id(environ)
    if job is None:
        return None
    relative = [(flag, p) for flag, p in (("--output-dir", output_dir), ("--storage", storage))
                if p is not None and not is_storage_uri(str(p)) and not Path(p).expanduser().is_absolute()]
    if not relative:
        return None
    flags = " and ".join(f"{flag} {p}" for flag, p in relative)
    return (f"{flags}: relative, and this is the `ray job submit` job {job}, whose working directory "
            f"({os.getcwd()}) is Ray's temporary copy of --working-dir, deleted when Ray cleans its cache: the run "
            "would vanish with it. Give absolute paths on the head node, e.g. --output-dir /data/alexnet/runs (every "
            "node must see --storage: a shared path or s3://bucket/runs); docs/DEPLOY.md, \"Submitting a job\".")


def location_line(run_dir, storage, environ=None):
    """In a submitted job, where the run's folder is (its node) and how to find the job again; else None."""
    job = submission_id(environ)
    if job is None:
        return None
    where = "in the same folder" if str(storage) == str(Path(run_dir).parent) else f"under {storage}"
    return (f"job {job}: the run folder is {run_dir} on {socket.gethostname()} (the node running the job's "
            f"entrypoint: the head unless --entrypoint-num-cpus/-gpus/--entrypoint-resources placed it elsewhere), "
            f"checkpoints {where}; `ray job logs {job}` shows this output again")
