"""GPU validation in one run, most important first: one replica fed by the loader against its parts with a decoupled
control (fed_profile), the hand-off and prefetch depth, the LRN's share of the training step (eager and compiled),
the hardware decoder's share while training, long epochs; then the loader, the split model's speed, training,
correctness, cluster/launch.py through Ray, and the variants, profile and compiled forms.

    python -m gpu_check --out results/                 # on a GPU node: everything (see --plan-only)
    python -m gpu_check --out r/ --budget-s 270        # only what fits in 270 s; says what it skipped
    python -m gpu_check --plan-only --budget-s 270     # print the plan and the estimates, run nothing
    python -m gpu_check --out r/ --steps model_variants,profile   # only some steps
    python -m gpu_check --smoke --out /tmp/smoke       # every step on CPU at tiny sizes (what the tests run)

Writes gpu_check.json and gpu_check.md to --out and prints the table. Needs the project's own dependencies (Ray
only for the `launch` step, which runs cluster/launch.py end to end): see docs/GPU.md for installing them on a node
without internet, and for fitting the check into a fixed time on a node. Each step is independent: a step that fails
is recorded with its error and the others still run. Steps are registered in STEPS below in priority order (a Step
names its function, which takes a gpu_check.steps.Context); each step's cost for --budget-s is estimated by
gpu_check/plan.py from the runs recorded in gpu_check/records/.
"""
import argparse
import json
import os
import platform
import subprocess
import sys
import time
import traceback
from pathlib import Path

import torch

from benchmarks.profiling import markdown_table
from benchmarks.timing import loader_images_per_second, time_loader
from gpu_check.fed import FedReplica, step_fed_profile
from gpu_check.feed_steps import step_handoff, step_hw_decoder, step_long_epochs, step_lrn_step
from gpu_check.launch_step import step_launch
from gpu_check.model_steps import (
    step_compiled_variants,
    step_lrn_numerics,
    step_model,
    step_model_variants,
    step_profile,
)
from gpu_check.plan import Estimate, decide, describe, estimates, load_records, plan
from gpu_check.steps import FULL, SMOKE, Context, Step
from model import AlexNet, GroupedAlexNet


def get_args_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("runs/gpu_check"),
                   help="folder for the JSON and markdown (default: runs/gpu_check)")
    p.add_argument("--data", type=Path, default=None,
                   help="shards to use (default: build demo shards at ImageNet-like sizes in --out/shards)")
    p.add_argument("--smoke", action="store_true", help="every step on CPU at tiny sizes (default: off)")
    p.add_argument("-j", "--workers", type=int, default=os.cpu_count(),
                   help=f"processes for building shards and DALI threads (default: {os.cpu_count()})")
    p.add_argument("--steps", default=None,
                   help="comma-separated steps to run; shards runs too when a chosen step needs data "
                        "(default: all of " + ",".join(s.name for s in STEPS) + ")")
    p.add_argument("--budget-s", type=float, default=None,
                   help="run, in priority order, only the steps whose estimated time (gpu_check/plan.py, from "
                        "records/) fits in this many seconds; the skipped ones are listed (default: no budget)")
    p.add_argument("--skipped-in", type=Path, default=None,
                   help="a previous run's gpu_check.json: run only the steps it skipped, on its shards unless --data "
                        "is given (the second run in docs/GPU.md's time budget; default: off)")
    p.add_argument("--plan-only", action="store_true",
                   help="print which steps would run within --budget-s and their estimates, run nothing "
                        "(default: off)")
    return p


def environment():
    env = {"python": platform.python_version(), "torch": torch.__version__, "cuda_available": torch.cuda.is_available(),
           "cpus": os.cpu_count()}
    try:
        import nvidia.dali
        env["dali"] = nvidia.dali.__version__
    except ImportError as e:
        env["dali"] = f"not importable: {e}"
    if torch.cuda.is_available():
        env.update(device=torch.cuda.get_device_name(0), gpus=torch.cuda.device_count(), torch_cuda=torch.version.cuda,
                   cudnn=torch.backends.cudnn.version())
        try:
            env["driver"] = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                           capture_output=True, text=True, timeout=20).stdout.strip().split("\n")[0]
        except (OSError, subprocess.SubprocessError) as e:
            env["driver"] = f"unknown ({e})"
    else:
        env["device"] = platform.processor() or "CPU"
    return env


def step_shards(ctx):
    from pipeline import build_shards
    args, size = ctx.args, ctx.size
    out = args.data or args.out / "shards"
    if args.data is None:
        build_shards.build(build_shards.BuildConfig(out=out, jobs=args.workers, shard_size=500,
                                                    demo_train_per_class=size.train_per_class,
                                                    demo_val_per_class=size.val_per_class))
    from pipeline import manifest
    m = manifest.load(out)
    ctx.data = str(out)
    return {"data": str(out), "train_samples": m["splits"]["train"]["num_samples"],
            "val_samples": m["splits"]["val"]["num_samples"]}


def step_loader(ctx):
    from pipeline.loader import make_loader
    args, size, data = ctx.args, ctx.size, ctx.data
    kw = dict(crop=size.crop)
    result = {}
    cpu = make_loader(data, "train", size.loader_batch, device="cpu", num_threads=args.workers, **kw)
    result["cpu_train_img_s"] = loader_images_per_second(cpu, epochs=1)
    cpu.close()  # its prepared next-epoch pipeline and thread would otherwise live on beside the GPU loader's
    if ctx.gpu:  # the loader's own thread default for mixed decode (half the cores, at most 8)
        mixed = make_loader(data, "train", size.loader_batch, device="cuda", device_id=0, **kw)
        result["gpu_train_img_s"] = loader_images_per_second(mixed, epochs=1)  # within an epoch
        # over three epochs: each epoch starts a freshly seeded pipeline, so this includes those restarts
        three = time_loader(mixed, epochs=3)
        result["gpu_train_img_s_3_epochs"] = three.img_s
        result["gpu_over_cpu"] = result["gpu_train_img_s"] / result["cpu_train_img_s"]
        # Each epoch's pipeline is built, and its shuffle buffer filled, in the background during the epoch before:
        # on this small set that overlaps most of the measured epoch (on ImageNet, a sliver of it). These say how much
        # of an epoch that costs (docs/BENCHMARKS.md, "Loader": why the H200 loader ran below the earlier H100's).
        result["gpu_epoch_build_s"] = [round(t.build_s, 3) for t in three.epochs]
        result["gpu_epoch_first_batch_s"] = [round(t.first_batch_s, 3) for t in three.epochs]
        result["gpu_epoch_wait_s"] = [round(t.wait_s, 3) for t in three.epochs]
        result["gpu_epoch_overhead_s"] = [round(x, 3) for x in three.overhead_s]
        mixed.close()
    return result


def step_training(ctx):
    """One replica fed by the loader, trained by cluster/loop.py's own step (what the Ray workers run): SGD with
    momentum, bf16 + channels_last on the GPU, the paper preset's start (gpu_check/fed.py). Two epochs: the first
    warms up (cuDNN, first pipeline), the second is the one timed, its own pipeline start included as in training."""
    replica = FedReplica.build(ctx)
    try:
        epochs = [replica.epoch(e) for e in range(2)]
    finally:
        replica.loader.close()
    return {"train_img_s": epochs[1]["images_per_second"], "warmup_epoch_img_s": epochs[0]["images_per_second"],
            "steps_per_epoch": len(replica.loader), "epoch1_loss": epochs[0]["train_loss"],
            "epoch2_loss": epochs[1]["train_loss"], "diverged": replica.diverged}


def step_correctness(ctx):
    from pipeline.loader import make_loader
    data, gpu = ctx.data, ctx.gpu
    result = {}
    # normalize="std": the decode differences in std units, as gpu_check/records recorded them before "paper" (grey
    # levels, ~60x larger numbers) became the loader's default
    kw = dict(train=False, crop=ctx.size.crop, num_threads=ctx.args.workers, normalize="std")
    cpu, _, idx_cpu = next(iter(make_loader(data, "val", 32, device="cpu", **kw)))
    if gpu:
        mixed, _, idx_gpu = next(iter(make_loader(data, "val", 32, device="cuda", device_id=0, **kw)))
        assert torch.equal(idx_cpu, idx_gpu.cpu()), "GPU and CPU loaders returned different samples"
        diff = (mixed.float().cpu() - cpu).abs()
        result.update(decode_mean_abs_diff=diff.mean().item(), decode_max_abs_diff=diff.max().item())
    dev = "cuda:0" if gpu else "cpu"
    torch.manual_seed(0)
    split = AlexNet(dropout=0.0).eval()
    grouped = GroupedAlexNet(dropout=0.0).eval()
    grouped.load_state_dict(split.state_dict())
    split.place(dev, dev)
    grouped.to(dev)
    x = torch.randn(8, 3, 224, 224, device=dev)
    with torch.no_grad():
        a, b = split(x), grouped(x)
    result["split_vs_single_max_rel_diff"] = ((a - b).abs().max() / b.abs().max()).item()
    return result


def step_gpu_tests(ctx):
    """The test suite's gpu-marked tests (model placement on CUDA, mixed vs CPU decode); Ray is not needed."""
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider",
                           "tests/test_model.py", "tests/test_loader.py"], capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parents[1], timeout=300)
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    if proc.returncode != 0:
        print(proc.stdout[-4000:], proc.stderr[-2000:])
    return {"exit_code": proc.returncode, "summary": lines[-1] if lines else proc.stderr[-300:]}


def markdown(report):
    env = report["environment"]
    lines = [f"GPU check on **{env.get('device')}** (driver {env.get('driver', '-')}, torch {env['torch']}, "
             f"DALI {env['dali']}, {env['cpus']} CPUs){' — SMOKE RUN (CPU, tiny sizes)' if report['smoke'] else ''}",
             "", "| step | measurement | value |", "| --- | --- | --- |"]
    tables = []  # a list of rows (the profile's top kernels) gets a table of its own after the summary
    for step, values in report["steps"].items():
        for k, v in values.items():
            if isinstance(v, list) and v and isinstance(v[0], dict):
                tables.append(f"\n**{step}: {k}**\n\n{markdown_table(v)}")
                continue
            shown = (f"{v:,.0f}" if abs(v) >= 100 else f"{v:.4g}") if isinstance(v, float) else v
            lines.append(f"| {step} | {k} | {shown} |")
    for step, reason in report.get("skipped", {}).items():
        lines.append(f"| {step} | skipped | {reason} |")
    return "\n".join(lines + tables) + "\n"


STEPS = [  # priority order: under --budget-s the first ones run, what does not fit is skipped
    Step("shards", step_shards),
    # (1)-(5) answer whether a replica is fed at >= 90% of its slower part, and where the time goes if not
    Step("fed_profile", step_fed_profile, needs_data=True),  # loader, step, fed, decoupled control, syncs, profile
    Step("handoff", step_handoff, needs_data=True),  # stream-ordered vs host wait per batch, prefetch 2 vs 4
    Step("lrn_step", step_lrn_step),  # the training step with each LRN vs none, eager and compiled; fused SGD
    Step("hw_decoder", step_hw_decoder, needs_data=True),  # the hardware decoder's share, while training
    Step("long_epochs", step_long_epochs, needs_data=True),  # benchmarks/feed.py on >= 1,000-batch epochs
    Step("loader", step_loader, needs_data=True),
    Step("model", step_model),
    Step("training", step_training, needs_data=True),
    Step("correctness", step_correctness, needs_data=True),
    Step("lrn_numerics", step_lrn_numerics),
    Step("gpu_tests", step_gpu_tests, gpu_only=True),
    Step("launch", step_launch, needs_data=True),  # the real launcher through Ray (a GPU node may lack Ray)
    Step("model_variants", step_model_variants),
    Step("profile", step_profile),
    Step("compiled_variants", step_compiled_variants),
]


def chosen_steps(text):
    """The --steps selection in STEPS order, with shards added when a chosen step needs data."""
    if text is None:
        return STEPS
    names = {n.strip() for n in text.split(",") if n.strip()}
    known = {s.name for s in STEPS}
    if not names or names - known:
        raise SystemExit(f"--steps: unknown step(s) {sorted(names - known) or text!r}; choose from "
                         f"{', '.join(s.name for s in STEPS)}")
    if any(s.needs_data for s in STEPS if s.name in names):
        names.add("shards")
    return [s for s in STEPS if s.name in names]


def skipped_in(path, data):
    """(--steps text, shards folder) for running what the report at `path` skipped."""
    try:
        report = json.loads(Path(path).read_text())
        skipped = list(report["skipped"])
    except (OSError, ValueError, KeyError) as e:
        raise SystemExit(f"--skipped-in {path}: not a gpu_check.json with a 'skipped' table ({e}); give the "
                         f"gpu_check.json written by a run with --budget-s") from None
    shards = report.get("steps", {}).get("shards", {}).get("data")
    return ",".join(skipped), data if data is not None else (Path(shards) if shards else None)


def step_needs(step):
    return ("shards",) if step.needs_data else ()


def main(argv=None):
    args = get_args_parser().parse_args(argv)
    if args.skipped_in is not None:
        args.steps, args.data = skipped_in(args.skipped_in, args.data)
        if not args.steps:
            print(f"{args.skipped_in} skipped no step: nothing to run")
            return 0
    steps = chosen_steps(args.steps)
    gpu = torch.cuda.is_available() and not args.smoke
    if not gpu and not args.smoke and not args.plan_only:
        print("no CUDA device found: running the smoke version (use --smoke to ask for it)")
        args.smoke = True
    if not gpu and not args.plan_only:  # gpu_only steps do not run here, and are not planned
        steps = [s for s in steps if not s.gpu_only]
    budget = None if args.smoke else args.budget_s
    if args.smoke and args.budget_s is not None:
        print("--budget-s is ignored in a smoke run: the estimates are GPU times")
    est = estimates([s.name for s in steps], load_records())
    if args.data is not None:  # the shards are there: the step only reads their manifest
        est["shards"] = Estimate(0.0, "--data given")
    print(describe(plan([(s.name, step_needs(s)) for s in steps], est, budget), budget), flush=True)
    if args.plan_only:
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    ctx = Context(args, SMOKE if args.smoke else FULL, gpu)
    report = {"smoke": args.smoke, "environment": environment(), "steps": {}, "skipped": {}, "budget_s": budget,
              "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    start = time.time()
    ctx.deadline = start + budget if budget is not None else None  # launch's cases stop there
    for step in steps:
        # decided again with the real time spent so far: a slow step early leaves less for the later ones
        d = decide(step.name, est[step.name], budget_s=budget, spent_s=time.time() - start,
                   missing=[n for n in step_needs(step) if ctx.data is None])
        if not d.run:
            report["skipped"][step.name] = d.reason
            print(f"[{step.name}] skipped: {d.reason}", flush=True)
            continue
        t = time.time()
        try:
            report["steps"][step.name] = step.run(ctx)
        except Exception as e:  # recorded, and the remaining steps still run
            report["steps"][step.name] = {"error": f"{type(e).__name__}: {e}"}
            traceback.print_exc()
        report["steps"][step.name]["seconds"] = round(time.time() - t, 1)
        print(f"[{step.name}] {report['steps'][step.name]}", flush=True)
        (args.out / "gpu_check.json").write_text(json.dumps(report, indent=1))  # partial results survive a kill
    (args.out / "gpu_check.json").write_text(json.dumps(report, indent=1))
    table = markdown(report)
    (args.out / "gpu_check.md").write_text(table)
    print(table)
    failed = any("error" in s or s.get("exit_code") for s in report["steps"].values())
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
