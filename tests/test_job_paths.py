"""Inside a `ray job submit` job a relative --output-dir/--storage is refused (Ray deletes the job's working
directory), and the run says where its folder is. The variable is the one Ray's job supervisor sets (Ray 2.60)."""
import json

import pytest

from cluster import launch
from cluster.job_paths import JOB_CONFIG_ENV, location_line, relative_path_error, submission_id

JOB = {JOB_CONFIG_ENV: json.dumps({"runtime_env": {"working_dir": "gcs://_ray_pkg_abc.zip"},
                                   "metadata": {"job_submission_id": "raysubmit_T3st", "job_name": "raysubmit_T3st"}})}


def test_a_submitted_job_is_recognised_by_rays_variable():
    assert submission_id(JOB) == "raysubmit_T3st"
    assert submission_id({}) is None
    assert submission_id({JOB_CONFIG_ENV: "not json"}) is None


@pytest.mark.parametrize("output_dir, storage, refused", [
    ("runs", None, ["--output-dir runs"]),
    ("/data/runs", "ckpt", ["--storage ckpt"]),
    ("/data/runs", None, []),
    ("/data/runs", "s3://bucket/runs", []),
    ("~/runs", None, []),  # expanded to the home folder: not the job's temporary copy
])
def test_relative_paths_are_refused_only_in_a_job(output_dir, storage, refused):
    message = relative_path_error(output_dir, storage, JOB)
    if not refused:
        assert message is None
    else:
        assert all(r in message for r in refused) and "raysubmit_T3st" in message and "absolute" in message
    assert relative_path_error(output_dir, storage, {}) is None  # run by hand: relative paths are fine


def test_the_launcher_refuses_before_starting_anything(monkeypatch, capsys):
    monkeypatch.setenv(JOB_CONFIG_ENV, JOB[JOB_CONFIG_ENV])
    assert launch.main(["--epochs", "1"]) == 2  # the default --output-dir runs
    err = capsys.readouterr().err
    assert err.startswith("error: --output-dir runs: relative") and "ray job submit" in err
    assert launch.main(["--name", "x", "--test-only"]) == 2


def test_the_run_says_where_it_is_in_a_job():
    line = location_line("/data/runs/r1", "/data/runs", JOB)
    assert "raysubmit_T3st" in line and "/data/runs/r1" in line and "ray job logs raysubmit_T3st" in line
    assert location_line("/data/runs/r1", "/data/runs", {}) is None
