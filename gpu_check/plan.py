"""What gpu_check/check.py runs inside a time budget (--budget-s): each step's cost estimated from the recorded GPU
runs (gpu_check/records/*.json), the steps taken in priority order, a step skipped when its estimate does not fit what
is left. Pure functions, so the planning is tested on a CPU (tests/test_gpu_check.py)."""
import json
from dataclasses import dataclass
from pathlib import Path

RECORDS = Path(__file__).resolve().parent / "records"
# Seconds on one H100/H200 for the steps no record has timed yet: a guess, replaced by the recorded time as soon as
# a run records the step. Basis: launch = 3 cases x (Ray start, 2 epochs of 10,000 images, eval) ~60 s each;
# model_variants = 5 eager variants x 2 repeats x 23 steps at batch 256 and ~8k img/s; ~60 s per inductor compile of
# the split net (compiled_variants compiles 3, the profile 1, lrn_step 2); lrn_numerics compiles the LRN alone;
# a fed run (fed_parts) = a replica's build and cuDNN autotuning (~5 s) + 4 epochs of 10,000 images at ~10k img/s:
# fed_profile = 2 of them + a profiled epoch and its parsing, handoff = 3, hw_decoder = 3; long_epochs = benchmarks/
# feed.py's loader, step and fed over 2 epochs of 260k linked samples each at ~15k img/s, and the short set's.
UNMEASURED_GUESS_S = {"launch": 180.0, "model_variants": 25.0, "lrn_numerics": 30.0, "profile": 90.0,
                      "compiled_variants": 200.0, "fed_profile": 45.0, "handoff": 35.0, "lrn_step": 150.0,
                      "hw_decoder": 35.0, "long_epochs": 120.0}
# Added to a step since the records timed it: "model" now also times batch 256 (~1.5x its batch-128 timing);
# "training" now runs 2 epochs of cluster/loop.py's step (156 steps at batch 128) where the records ran 60 steps.
ADDED_SINCE_RECORDS_S = {"model": 5.0, "training": 5.0}


@dataclass(frozen=True)
class Estimate:
    seconds: float
    source: str  # "recorded (N runs)" or "guess": printed beside the plan so a guess is never taken for a measurement


@dataclass(frozen=True)
class Decision:
    step: str
    run: bool
    estimate: Estimate
    reason: str  # why skipped; "" when run


def recorded_seconds(records):
    """{step: [seconds, ...]} over the given gpu_check.json reports (dicts), leaving out failed steps and smoke runs
    (a failed step's time says nothing about a full one)."""
    seen = {}
    for report in records:
        if report.get("smoke"):
            continue
        for name, values in report.get("steps", {}).items():
            if "error" not in values and isinstance(values.get("seconds"), (int, float)):
                seen.setdefault(name, []).append(float(values["seconds"]))
    return seen


def load_records(folder=RECORDS):
    """The gpu_check.json reports kept in `folder` (gpu_check/records/*.json that have a "steps" table)."""
    reports = []
    for path in sorted(Path(folder).glob("*.json")):
        data = json.loads(path.read_text())
        if isinstance(data, dict) and "steps" in data:
            reports.append(data)
    return reports


def estimates(names, records):
    """Each step's estimate: the slowest recorded run of it (a budget should plan for the slow case), plus what was
    added to the step since, or the guess above where no record has it. A step with neither is an error: a budget
    cannot plan for it."""
    seen = recorded_seconds(records)
    out = {}
    for name in names:
        n = len(seen.get(name, ()))
        runs = f"{n} run" + ("" if n == 1 else "s")
        if name in seen and name not in ADDED_SINCE_RECORDS_S:
            out[name] = Estimate(max(seen[name]), f"recorded ({runs})")
        elif name in seen:
            out[name] = Estimate(max(seen[name]) + ADDED_SINCE_RECORDS_S[name],
                                 f"recorded ({runs}) + {ADDED_SINCE_RECORDS_S[name]:.0f} s added since")
        elif name in UNMEASURED_GUESS_S:
            out[name] = Estimate(UNMEASURED_GUESS_S[name], "guess")
        else:
            raise ValueError(f"no recorded time and no guess for step {name!r}: add it to UNMEASURED_GUESS_S in "
                             f"{Path(__file__).name}")
    return out


def decide(name, estimate, *, budget_s, spent_s, missing=()):
    """Run `name` now? No when a step it needs (`missing`) did not run, or when its estimate does not fit in what is
    left of the budget (budget_s None: no budget, everything runs)."""
    if missing:
        return Decision(name, False, estimate, f"needs {', '.join(missing)}, which did not run")
    if budget_s is not None and spent_s + estimate.seconds > budget_s:
        return Decision(name, False, estimate, f"~{estimate.seconds:.0f} s does not fit in the "
                                               f"{max(budget_s - spent_s, 0):.0f} s left of --budget-s {budget_s:g}")
    return Decision(name, True, estimate, "")


def plan(steps, estimates_s, budget_s):
    """The whole plan ahead of time, as if every step took its estimate: [Decision] in `steps` order. `steps` are
    (name, needs) pairs, needs naming the steps it cannot run without (the shards)."""
    spent, ran, decisions = 0.0, set(), []
    for name, needs in steps:
        d = decide(name, estimates_s[name], budget_s=budget_s, spent_s=spent,
                   missing=[n for n in needs if n not in ran])
        if d.run:
            spent += d.estimate.seconds
            ran.add(name)
        decisions.append(d)
    return decisions


def describe(decisions, budget_s):
    """The plan as lines to print: each step with its estimate and, if skipped, why; then the planned total."""
    lines = [f"plan (--budget-s {budget_s if budget_s is not None else 'none'}):"]
    for d in decisions:
        what = "run " if d.run else "SKIP"
        lines.append(f"  {what} {d.step:<17} ~{d.estimate.seconds:>4.0f} s  {d.estimate.source}"
                     + (f"  ({d.reason})" if d.reason else ""))
    total = sum(d.estimate.seconds for d in decisions if d.run)
    lines.append(f"  planned: ~{total:.0f} s ({total / 60:.1f} min)")
    return "\n".join(lines)
