"""The ablation's runs folder (study.py): one JSON per finished run, what makes a saved run reusable, claims
that let several processes share the folder without training a run twice, and --partial's cut to what finished."""
import json
import os
import socket

from experiments.ablation.report import testable_claims
from experiments.ablation.train import RunResult


class AblateError(Exception):
    """Bad flags or data; the message says what to do."""


def data_key(args):
    """What identifies the shapes set (its generator is seeded): the build settings, not the shards' bytes."""
    return {"demo_set": "shapes", "size": args.size, "demo_train_per_class": args.train_per_class,
            "demo_val_per_class": args.val_per_class}


# The settings a variant's record names, in the order the committed runs saved them (any other setting a variant
# changes is added after them, so such a run is never taken for one of these).
VARIANT_RECORD = ("activation", "lrn", "overlapping_pool", "dropout", "crop_flip", "lighting", "wd")


# The rest of the reference recipe that changes what a run computes, recorded since the ablation trains from the
# cluster's TrainConfig (the committed runs, saved before, had the values in ADDED_SINCE): a change to the demo preset
# in any of them makes the saved runs another experiment, not reusable.
RECIPE_SINCE = ("lr_scaling", "warmup_epochs", "warmup_steps", "central_square", "random_resized_crop")


def budget_record(reference, *, threads=False):
    """A reference TrainConfig as the runs record their budget (the committed runs' format)."""
    drops = reference.lr_milestones if reference.lr_schedule == "milestones" else ()
    record = {"epochs": reference.epochs, "batch_size": reference.batch_size, "lr": reference.base_lr,
              "momentum": reference.momentum, "lr_decay_epoch": drops[0] if drops else 0,
              "lr_decay2_epoch": drops[1] if len(drops) > 1 else 0, "crop": reference.crop, "init": reference.init,
              "normalize": reference.normalize, "decay_biases": reference.decay_biases,
              **{k: getattr(reference, k) for k in RECIPE_SINCE}}
    if len(drops) > 2:
        record["lr_milestones"] = list(drops)
    return {**record, "threads": reference.threads} if threads else record


def run_key(variant, reference, args):
    """What a finished run must match to be reused: the variant's settings, its reference's budget and the data.
    Not the thread count: it changes the speed (and fp32's last bits), not the experiment, so runs made with -j 1
    beside each other serve a -j 2 report and the reverse."""
    cfg = variant.config(reference)
    record = {"name": variant.name, "label": variant.label, **{k: getattr(cfg, k) for k in VARIANT_RECORD},
              "lr": cfg.base_lr if "base_lr" in variant.changes else 0.0, "stop_at": variant.stop_at,
              **{k: v for k, v in variant.changes.items() if k not in VARIANT_RECORD and k != "base_lr"}}
    return {"variant": record, "budget": budget_record(reference), "data": data_key(args)}


# Budget fields added after runs were saved, with the value that reproduces what those runs did. Only these: a field
# whose default differs from what older runs did (normalize, decay_biases were) must keep them from being reused.
ADDED_SINCE = {"lr_decay2_epoch": 0, "lr_scaling": "none", "warmup_epochs": 0, "warmup_steps": 0,
               "central_square": False, "random_resized_crop": False}


def same_run(saved_key, key):
    """saved_key (from a run's JSON, which may name its threads) describes the same run as key."""
    if not isinstance(saved_key, dict) or not isinstance(saved_key.get("budget", {}), dict):
        return False
    budget = {k: v for k, v in {**ADDED_SINCE, **saved_key.get("budget", {})}.items() if k != "threads"}
    return {**saved_key, "budget": budget} == key


def run_path(args, variant, seed):
    return args.runs_dir / f"{variant.name}-seed{seed}.json"


def load_run(path, key, *, quiet=False):
    """The RunResult saved at `path` if it was trained with these settings; None (and why, unless quiet) otherwise."""
    def skip(why):
        if not quiet:
            print(f"{path}: {why}, not reused")
    try:
        saved = json.loads(path.read_text())
        if not same_run(saved.get("key", {}), key):
            return skip("trained with other settings")
        result = RunResult.from_json(saved["result"])
        if not result.val_correct:
            return skip("has no per-image results (made before they were recorded)")
        return result
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        return skip(f"unreadable ({type(e).__name__}: {e})")


def load_finished(args, variants, budgets):
    """({variant name: [RunResult per seed]} of the runs --runs-dir holds for these settings (`budgets`: a
    experiments.ablation.train.Budgets), [(variant, seed)] the ones it does not)."""
    results, todo = {}, []
    for v in variants:
        for seed in range(args.seeds):
            path = run_path(args, v, seed)
            saved = load_run(path, run_key(v, budgets.of(v), args)) if path.is_file() and not args.fresh else None
            if saved is None:
                todo.append((v, seed))
            else:
                results.setdefault(v.name, []).append(saved)
    return results, todo


def save_run(path, record):
    """Written whole under a name of this process's own, then renamed: a kill never leaves half a file, and two
    processes finishing the same run at once do not trip over one temporary file."""
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(record, indent=1) + "\n")
    tmp.replace(path)


def _claim_path(path):
    return path.with_suffix(".claim")


def claim(path):
    """True if this process may train the run saved at `path`: it created the claim file (host:pid), or the claim's
    process on this host is gone (a killed run). False while another process trains it."""
    claim_file = _claim_path(path)
    me = f"{socket.gethostname()}:{os.getpid()}"
    for _ in range(2):
        try:
            fd = os.open(claim_file, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                host, _, pid = claim_file.read_text().partition(":")
            except OSError:
                continue  # released meanwhile: try again
            if host != socket.gethostname() or not pid.isdigit() or _alive(int(pid)):
                return False  # another host's process (or one still writing its claim): left to it
            claim_file.unlink(missing_ok=True)  # stale: its process is gone
            continue
        with os.fdopen(fd, "w") as f:
            f.write(me)
        return True
    return False


def release(path):
    _claim_path(path).unlink(missing_ok=True)


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True


def finished_only(args, variants, fig1, results, todo):
    """--partial: (variants, fig1, results, not-trained text, claims left untested) cut to what has every seed
    finished. The untested claims still count in Holm's correction (report.claim_tests), at p = 1, so
    a claim reproduced or contradicted here stays so whatever the rows still to come show."""
    missing = {v.name for v, _ in todo}
    if "full" in missing:
        raise AblateError(f"--partial: the reference ('full') has {len(results.get('full', []))} of {args.seeds} "
                          "seeds finished; every row is tested against it: train it first "
                          "(`python -m experiments.ablation --variants full` with the same settings).")
    left_out = [f"{v.label} ({len(results.get(v.name, []))} of {args.seeds} seeds)" for v in variants
                if v.name in missing]
    planned = testable_claims(variants, fig1)
    if any(v.name in missing for v in fig1):
        done = sum(len(results.get(v.name, [])) for v in fig1)
        left_out.append(f"the Figure 1 sweep ({done} of {len(fig1) * args.seeds} runs)")
        missing |= {v.name for v in fig1}
        fig1 = []
    keep = [v for v in variants if v.name not in missing]
    return (keep, fig1, {n: r for n, r in results.items() if n not in missing}, left_out,
            len(planned) - len(testable_claims(keep, fig1)))
