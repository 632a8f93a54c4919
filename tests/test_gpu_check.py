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
    assert set(report["steps"]) == {"shards", "loader", "model", "model_variants", "profile", "training",
                                    "correctness", "lrn_numerics", "launch"}
    assert all("error" not in step for step in report["steps"].values())
    variants = report["steps"]["model_variants"]
    assert all(variants[f"{v}_img_s"] > 0 for v in ("torch_lrn", "fast_lrn", "compiled"))
    assert variants["best_variant"] in ("torch_lrn", "fast_lrn", "compiled") and variants["batch"] == 4
    top = report["steps"]["profile"]["torch_lrn_top_kernels"]
    assert 0 < len(top) <= 15 and top[0]["ms_per_step"] >= top[-1]["ms_per_step"] > 0
    numerics = report["steps"]["lrn_numerics"]
    assert numerics["fast_fp32_fwd_max_rel_diff"] < 1e-5 and numerics["compiled_fp32_bwd_max_rel_diff"] < 1e-5
    assert report["steps"]["loader"]["cpu_train_img_s"] > 0
    assert report["steps"]["training"]["steps"] == 4 and report["steps"]["training"]["train_img_s"] > 0
    assert report["steps"]["correctness"]["split_vs_single_max_rel_diff"] < 1e-4
    launch = report["steps"]["launch"]  # the real launcher, end to end (one CPU replica in the smoke run)
    assert launch["exit_code"] == 0 and launch["cpu.replicas_per_epoch"] == [1, 1]
    assert launch["cpu.images_per_second"] > 0 and 0 <= launch["cpu.val_top1_error_10crop"] <= 1
    table = (tmp_path / "gpu_check.md").read_text()
    assert "| model | single_device_img_s |" in table and table in proc.stdout
    assert "**profile: torch_lrn_top_kernels**" in table and "| 1 | `aten::" in table  # CPU ops on a CPU


def test_steps_flag_adds_the_shards_a_step_needs():
    from bench.gpu_check import chosen_steps
    assert [s.name for s in chosen_steps("profile,model")] == ["model", "profile"]
    assert [s.name for s in chosen_steps("training")] == ["shards", "training"]
    with pytest.raises(SystemExit, match="--steps: unknown step"):
        chosen_steps("model,lanch")
