"""bench/gpu_check.py --smoke runs every step on CPU at tiny sizes, so the GPU script cannot rot unnoticed."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_check_smoke_runs_every_step(tmp_path):
    proc = subprocess.run([sys.executable, "bench/gpu_check.py", "--smoke", "--out", str(tmp_path), "-j", "2"],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert report["smoke"] is True
    assert set(report["steps"]) == {"shards", "loader", "model", "training", "correctness"}
    assert all("error" not in step for step in report["steps"].values())
    assert report["steps"]["loader"]["cpu_train_img_s"] > 0
    assert report["steps"]["training"]["steps"] == 4 and report["steps"]["training"]["train_img_s"] > 0
    assert report["steps"]["correctness"]["split_vs_single_max_rel_diff"] < 1e-4
    table = (tmp_path / "gpu_check.md").read_text()
    assert "| model | single_device_img_s |" in table and table in proc.stdout
