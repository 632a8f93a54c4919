"""Does the loader keep a device busy? The real loader feeding a simulated device step, against each alone.

    python -m benchmarks.feed                      # CPU decode, batch 32, crop 112 (the demo's): short and long epochs
    python -m benchmarks.feed --device cuda        # the mixed decoder, the step a GPU kernel: the GPU side's share
    python -m benchmarks.feed --json feed.json

The simulated step is a fixed wait per batch that uses no CPU: on CPU a time.sleep, which releases the GIL as a host
waiting on a queue of GPU kernels does; with --device cuda a spinning GPU kernel (torch.cuda._sleep) queued on
torch's stream after the batch, as a training step's kernels are, with a synchronisation every --sync-every
batches (the training loop's print interval). That kernel is one GPU thread: it measures the ordering and the host
side, not DALI's kernels sharing the SMs with training (gpu_check's fed_profile measures that with the model).
The step's length is --step-ratio times the loader's own mean batch time, measured first, so the two are balanced:
loading and the step overlap fully when fed reaches min(loader alone, step alone), and not at all at about half of
it.

Two epoch lengths: a short one (~80 batches, the demo set's size) and a long one (>= 1,000 batches, the shards
listed --link-copies times by symbolic links, as benchmarks/loader_speed.py does), each over --epochs epochs, each
epoch a new DALI pipeline (pipeline/loader.py). Per-epoch costs are reported apart: build (holds the GIL), first
batch (index parse and buffer fill), the hand-over wait, and dropping the old pipeline (holds the GIL). img/s counts
every batch after the first epoch's first against the wall time, epoch changes included.
--rounds rounds of (loader, step, fed) run back to back and the median round is reported, since on a shared machine
the load moves more between minutes than the ratio does. Target: fed >= 0.9 x min(loader, step) for both lengths
(docs/BENCHMARKS.md has the measurements).
"""
import argparse
import json
import os
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from benchmarks.loader_speed import linked_copies
from pipeline import build_shards
from pipeline import manifest as mf
from pipeline.loader import make_loader

TARGET = 0.9  # fed over the slower of the two parts


@dataclass
class Run:
    """One timed loop: img/s over every batch but the first (epoch changes included), and the loader's per-epoch
    costs (mean over the epochs after the first, whose pipeline is built synchronously; the first apart)."""
    img_s: float
    batches: int
    batch_ms: float  # wall time per batch, mean
    per_epoch: dict = field(default_factory=dict)
    first_epoch: dict = field(default_factory=dict)


def epoch_costs(timings):
    """(mean of the later epochs, the first epoch) of the loader's EpochTiming fields, in seconds."""
    keys = ("build_s", "first_batch_s", "wait_s", "drop_s")
    later = timings[1:]
    mean = {k: round(statistics.fmean(getattr(t, k) for t in later), 4) if later else None for k in keys}
    first = {k: round(getattr(timings[0], k), 4) for k in keys} if timings else {}
    return mean, first


class Step:
    """The simulated device step: `seconds` of waiting that uses no CPU."""

    def __init__(self, seconds, device):
        self.seconds, self.device = seconds, torch.device(device)
        self.cycles = _cycles_per_second(self.device) * seconds if self.device.type == "cuda" else 0

    def __call__(self, images=None):
        if self.device.type == "cuda":  # the loader ordered the batch on this (torch's current) stream already
            torch.cuda._sleep(int(self.cycles))
        else:
            time.sleep(self.seconds)

    def finish(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


def _cycles_per_second(device):
    """torch.cuda._sleep's spin cycles per second on this GPU, measured once."""
    torch.cuda.synchronize(device)
    start = time.perf_counter()
    torch.cuda._sleep(100_000_000)
    torch.cuda.synchronize(device)
    return 100_000_000 / (time.perf_counter() - start)


def run(loader, epochs, step=None, *, sync_every=0):
    """Iterate `loader` for `epochs` epochs, calling `step` on each batch when given; timed from the first batch.
    sync_every: wait for the device every that many batches (0: at the end only)."""
    n, batches, t0, images = 0, 0, None, None
    first = len(loader.epoch_timings)
    for epoch in range(epochs):
        loader.set_epoch(epoch)
        for images, _, _ in loader:
            if t0 is None:  # the clock starts at the first batch: the first pipeline's build is reported apart
                t0 = time.perf_counter()
            else:
                n += images.shape[0]
                batches += 1
            if step is not None:
                step(images)
                if sync_every and batches % sync_every == 0:
                    step.finish()
    if step is not None:
        step.finish()
    elif images is not None and images.is_cuda:
        torch.cuda.synchronize(images.device)
    wall = time.perf_counter() - t0
    mean, first_epoch = epoch_costs(loader.epoch_timings[first:])
    return Run(n / wall, batches, 1e3 * wall / max(batches, 1), mean, first_epoch)


def run_step_alone(step, batches, batch, *, sync_every=0):
    t0 = time.perf_counter()
    for i in range(batches):
        step()
        if sync_every and (i + 1) % sync_every == 0:
            step.finish()
    step.finish()
    wall = time.perf_counter() - t0
    return Run(batches * batch / wall, batches, 1e3 * wall / batches)


def measure_round(data, args):
    """Loader alone, then the step alone at --step-ratio x that loader's batch time, then fed: one round."""
    def loader():
        return make_loader(data, "train", args.batch_size, crop=args.crop, device=args.device,
                           device_id=0 if args.device == "cuda" else None, num_threads=args.threads,
                           prefetch=args.prefetch, channels_last=args.device == "cuda")
    ld = loader()
    alone = run(ld, args.epochs)
    steps_per_epoch = len(ld)
    ld.close()
    step = Step(args.step_ratio * alone.batch_ms / 1e3, args.device)
    step_alone = run_step_alone(step, alone.batches, args.batch_size, sync_every=args.sync_every)
    ld = loader()
    fed = run(ld, args.epochs, step, sync_every=args.sync_every)
    ld.close()
    return {"steps_per_epoch": steps_per_epoch, "step_ms": round(1e3 * step.seconds, 3),
            "step_over_loader_batch": round(step.seconds * 1e3 / alone.batch_ms, 3), "loader": asdict(alone),
            "step": asdict(step_alone), "fed": asdict(fed),
            "fed_over_min": round(fed.img_s / min(alone.img_s, step_alone.img_s), 4)}


def measure(data, args, name):
    """--rounds rounds of measure_round; the reported round is the median one by fed_over_min (the lower of the two
    middle ones for an even count). Rounds, each measured back to back, pair the fed run with a loader measured at
    about the same load: on a shared machine the load moves between minutes more than the ratio does."""
    rounds = [measure_round(data, args) for _ in range(args.rounds)]
    median = sorted(rounds, key=lambda r: r["fed_over_min"])[(len(rounds) - 1) // 2]
    result = {"name": name, "epochs": args.epochs, **median, "target": TARGET,
              "fed_over_min_per_round": [r["fed_over_min"] for r in rounds],
              "loader_img_s_per_round": [round(r["loader"]["img_s"]) for r in rounds]}
    alone, fed = median["loader"], median["fed"]
    print(f"{name}: {median['steps_per_epoch']} batches x {args.epochs} epochs: loader {alone['img_s']:.0f} img/s, "
          f"step {median['step']['img_s']:.0f} ({median['step_ms']} ms), fed {fed['img_s']:.0f} = "
          f"{median['fed_over_min']:.3f} x the slower (target {TARGET}; per round {result['fed_over_min_per_round']});"
          f" per later epoch (s) loader alone {alone['per_epoch']}, fed {fed['per_epoch']}", flush=True)
    return result


def get_args_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=None,
                   help="shards (default: a demo build in /tmp/bench_feed with --train-per-class images per class)")
    p.add_argument("--train-per-class", type=int, default=260,
                   help="demo images per class (10 classes) when --data is not given (default: 260: ~81 batches)")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"),
                   help="cpu: CPU decode, a sleeping step; cuda: the mixed decoder, a spinning kernel (default: cpu)")
    p.add_argument("-b", "--batch-size", type=int, default=32, help="batch (default: 32, the demo's)")
    p.add_argument("--crop", type=int, default=112, help="crop (default: 112, the demo's)")
    p.add_argument("--threads", type=int, default=None, help="DALI threads (default: the loader's own)")
    p.add_argument("--prefetch", type=int, default=2, help="batches DALI prepares ahead (default: 2, the loader's)")
    p.add_argument("--epochs", type=int, default=2, help="epochs per timed loop (default: 2: one epoch change)")
    p.add_argument("--rounds", type=int, default=2,
                   help="rounds of loader alone, step alone, fed; the median round is reported (default: 2)")
    p.add_argument("--step-ratio", type=float, default=1.0,
                   help="the step's length over the loader's mean batch time; the feed target is set within 0.8-1.2 "
                        "(default: 1.0)")
    p.add_argument("--link-copies", type=int, default=13,
                   help="the long epoch lists the shards this many times (default: 13: >= 1,000 batches of 32 from "
                        "the default set); 0 skips the long epoch")
    p.add_argument("--sync-every", type=int, default=10,
                   help="with --device cuda, wait for the GPU every this many batches, as the training loop does at "
                        "its print interval (default: 10; 0: at the end only)")
    p.add_argument("--json", type=Path, default=None, help="write the results here too (default: none)")
    return p


def main(argv=None):
    args = get_args_parser().parse_args(argv)
    data = args.data or Path("/tmp/bench_feed")
    if not mf.manifest_path(data).is_file():
        build_shards.build(build_shards.BuildConfig(out=data, demo_train_per_class=args.train_per_class,
                                                    demo_val_per_class=2, shard_size=500))
    load = os.getloadavg()
    result = {"device": args.device, "batch": args.batch_size, "crop": args.crop, "prefetch": args.prefetch,
              "cpus": os.cpu_count(), "load_before": [round(x, 2) for x in load], "runs": []}
    result["runs"].append(measure(data, args, "short"))
    if args.link_copies > 0:
        result["runs"].append(measure(linked_copies(data, args.link_copies), args, "long"))
    result["load_after"] = [round(x, 2) for x in os.getloadavg()]
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
