"""Loader throughput on CPU: this DALI loader vs the PyTorch DataLoader + webdataset + PIL a user would write,
and a decode-only limit (libjpeg-turbo through PIL decoding the same JPEGs on all cores, nothing else).

    python -m benchmarks.loader_speed   # builds 256-short demo shards in /tmp/bench_loader if needed
    python -m benchmarks.loader_speed --data data/shards --device cuda --skip-baselines   # mixed decode on a GPU
    python -m benchmarks.loader_speed --data data/shards --device cuda --sweep --skip-baselines --json sweep.json
    python -m benchmarks.loader_speed --link-copies 128 --num-shards 8 --skip-baselines  # per-epoch rebuild, long

Every DALI number is over --epochs epochs, each a new pipeline (prepared in the background, see pipeline/loader.py),
so hand-overs are included. "stall_s" is the GIL-held part of an epoch change (build, hand-over wait, drop: what
stalls a training loop), "stall_vs_imagenet_epoch" sets it against an ImageNet epoch of one of --num-shards ranks at
the same pace; "overhead_s" is what each later epoch took beyond streaming its batches at the median interval.
Targets on a 2-core machine: >= 3x the baseline and >= 0.6x the decode-only limit.
"""
import argparse
import io
import itertools
import json
import multiprocessing
import os
import shutil
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from benchmarks.timing import time_loader
from pipeline import build_shards
from pipeline import manifest as mf
from pipeline.loader import SHUFFLE_BUFFER, make_loader
from pipeline.stats import input_normalization


class PILTrainTransform:
    """The paper's training transform written the plain way: random 224 crop, flip, the paper's inputs (the
    loader's default normalisation: minus the per-channel mean, pipeline/stats.py)."""

    def __init__(self, stats, crop, seed):
        mean, std = input_normalization(stats, "paper")
        self.mean, self.std = np.array(mean, np.float32), np.array(std, np.float32)
        self.crop, self.rng = crop, np.random.default_rng(seed)

    def __call__(self, img):
        w, h = img.size
        x, y = self.rng.integers(0, w - self.crop + 1), self.rng.integers(0, h - self.crop + 1)
        img = img.crop((x, y, x + self.crop, y + self.crop))
        if self.rng.random() < 0.5:
            img = img.transpose(Image.FLIP_LEFT_RIGHT)
        arr = (np.asarray(img, np.float32) - self.mean) / self.std
        return torch.from_numpy(arr.transpose(2, 0, 1).copy())


def baseline_images_per_second(data, batch, crop, workers, limit):
    import webdataset as wds
    stats = mf.load(data)["stats"]
    urls = sorted(str(p) for p in (Path(data) / "train").glob("*.tar"))
    ds = (wds.WebDataset(urls, shardshuffle=False, workersplitter=wds.split_by_worker).shuffle(256)
          .decode("pil").to_tuple("jpg", "cls").map_tuple(PILTrainTransform(stats, crop, 0), int))
    dl = torch.utils.data.DataLoader(ds, batch_size=batch, num_workers=workers)
    n, start = 0, None
    for step, (images, _) in enumerate(dl):
        if step == 2:
            start, n = time.perf_counter(), 0
        n += len(images)
        if n >= limit:
            break
    return n / (time.perf_counter() - start)


def _decode_all(jpegs):
    for j in jpegs:
        Image.open(io.BytesIO(j)).convert("RGB").load()
    return len(jpegs)


def decode_only_images_per_second(data, processes):
    jpegs = []
    for tar in sorted((Path(data) / "train").glob("*.tar")):
        with tarfile.open(tar) as t:
            jpegs += [t.extractfile(m).read() for m in t if m.name.endswith(".jpg")]
    chunks = [jpegs[i::processes * 4] for i in range(processes * 4)]
    with multiprocessing.get_context("fork").Pool(processes) as pool:
        pool.map(_decode_all, chunks[:processes])  # warm the workers
        start = time.perf_counter()
        n = sum(pool.map(_decode_all, chunks))
    return n / (time.perf_counter() - start)


IMAGENET_TRAIN = 1281167


def linked_copies(data, copies):
    """A dataset whose training split is `data`'s shard files listed `copies` times (symbolic links, no new bytes):
    an index as large as ImageNet's from the demo set, to time what a per-epoch rebuild costs at that size."""
    out = Path(tempfile.gettempdir()) / f"{Path(data).name}-x{copies}"
    shutil.rmtree(out, ignore_errors=True)
    (out / "train").mkdir(parents=True)
    man = mf.load(data)
    (out / "val").symlink_to(Path(data, "val").resolve())
    shards = []
    for k, (tar, idx, entry) in itertools.product(range(copies), mf.split_files(data, man, "train")):
        (out / "train" / f"x{k}-{tar.name}").symlink_to(tar.resolve())
        (out / "train" / f"x{k}-{idx.name}").symlink_to(idx.resolve())
        shards.append({**entry, "tar": f"x{k}-{tar.name}", "idx": f"x{k}-{idx.name}"})
    man["splits"]["train"] = {"num_samples": man["splits"]["train"]["num_samples"] * copies, "shards": shards}
    mf.write(out, man)
    return out


def timed(data, args, batch, **settings):
    """One loader (rank --shard-id of --num-shards) timed over --epochs epochs: a JSON-ready dict. The GIL-held
    part of an epoch change (build, waiting at the hand-over, drop) is set against an ImageNet epoch of one rank
    at this loader's pace: it stalls a training loop about that long."""
    loader = make_loader(data, "train", batch, device=args.device, crop=args.crop, shard_id=args.shard_id,
                         num_shards=args.num_shards, initial_fill=args.initial_fill, **settings)
    t = time_loader(loader, epochs=args.epochs)
    loader.close()
    later = t.epochs[1:]  # epoch 0 starts synchronously, as any first epoch or resume does
    stall = sum(e.build_s + e.wait_s + e.drop_s for e in later) / max(1, len(later))
    imagenet_epoch_s = IMAGENET_TRAIN / args.num_shards / (batch / t.median_batch_s)
    per_epoch = {k: [round(getattr(e, k), 3) for e in t.epochs] for k in ("build_s", "first_batch_s", "wait_s",
                                                                           "drop_s")}
    return {"batch": batch, "threads": loader.num_threads, **settings, "img_s": round(t.img_s),
            "steps_per_epoch": t.steps, **per_epoch, "overhead_s": [round(x, 3) for x in t.overhead_s],
            "stall_s": round(stall, 3), "imagenet_epoch_s": round(imagenet_epoch_s, 1),
            "stall_vs_imagenet_epoch": round(stall / imagenet_epoch_s, 4)}


def sweep_settings(args):
    """One setting changed at a time from the loader's defaults, for each batch size; the defaults once more at
    the end, for the run-to-run noise. The CPU decoder ignores hw_decoder_load and the preallocation hints."""
    axes = {"num_threads": args.sweep_threads, "prefetch": args.sweep_prefetch}
    if args.device == "cuda":
        axes |= {"hw_decoder_load": args.sweep_hw_load, "preallocate": args.sweep_preallocate}
    default = {"num_threads": None, "prefetch": 2, "hw_decoder_load": 0.65, "preallocate": None}
    for batch in args.sweep_batches:
        yield batch, {}
        for name, values in axes.items():
            for v in values:
                if v != default[name]:
                    yield batch, {name: v}
    yield args.sweep_batches[0], {}


def sweep(data, args, report):
    rows, t0 = [], time.perf_counter()
    for batch, settings in sweep_settings(args):
        try:
            row = timed(data, args, batch, **settings)
        except ValueError as e:
            print(f"batch {batch} {settings}: {e}")
            continue
        rows.append(row)
        report(rows)
        print(f"[{time.perf_counter() - t0:5.0f} s] batch {batch} {settings or 'defaults'}: {row['img_s']} img/s, "
              f"stall per epoch change {row['stall_s']} s, beyond streaming {row['overhead_s']} s", flush=True)
    return rows


def numbers(kind):
    return lambda text: [kind(x) for x in text.split(",") if x]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=None, help="shards (default: demo shards in /tmp/bench_loader)")
    p.add_argument("--device", default="cpu", help="cpu or cuda for this loader (default: cpu)")
    p.add_argument("-b", "--batch-size", type=int, default=64, help="batch (default: 64)")
    p.add_argument("--crop", type=int, default=224, help="crop (default: 224)")
    p.add_argument("-j", "--workers", type=int, default=os.cpu_count(),
                   help=f"threads/processes of the CPU comparison (default: {os.cpu_count()})")
    p.add_argument("--epochs", type=int, default=3,
                   help="epochs timed per loader, each a new pipeline handed over (default: 3)")
    p.add_argument("--num-shards", type=int, default=1, help="time the loader of one rank of this many (default: 1)")
    p.add_argument("--shard-id", type=int, default=0, help="that rank (default: 0)")
    p.add_argument("--link-copies", type=int, default=1,
                   help="list the training shards this many times (links, no new bytes), e.g. 128 for an index "
                        "as large as ImageNet's from 10k demo images (default: 1)")
    p.add_argument("--initial-fill", type=int, default=SHUFFLE_BUFFER,
                   help=f"shuffle buffer in samples (default: {SHUFFLE_BUFFER}, the loader's)")
    p.add_argument("--sweep", action="store_true",
                   help="time loader settings, one changed at a time from the defaults (default: off)")
    p.add_argument("--sweep-batches", type=numbers(int), default=[256, 512],
                   help="batch sizes of the sweep (default: 256,512)")
    p.add_argument("--sweep-threads", type=numbers(int), default=[4, 6, 12], help="decoder threads (default: 4,6,12)")
    p.add_argument("--sweep-prefetch", type=numbers(int), default=[1, 3, 4], help="prefetch depth (default: 1,3,4)")
    p.add_argument("--sweep-hw-load", type=numbers(float), default=[0.0, 0.9, 1.0],
                   help="hw_decoder_load, GPU only (default: 0,0.9,1)")
    p.add_argument("--sweep-preallocate", type=numbers(int), default=[0, 640],
                   help="decoder preallocation hint in pixels per side, 0 = none, GPU only (default: 0,640; the "
                        "loader's own is 2 x crop)")
    p.add_argument("--json", type=Path, default=None, help="also write the results here, after every run "
                   "(default: none)")
    p.add_argument("--skip-baselines", action="store_true",
                   help="skip the DataLoader and decode-only runs (default: off)")
    args = p.parse_args(argv)
    data = args.data or Path("/tmp/bench_loader")
    if not mf.manifest_path(data).is_file():
        build_shards.build(build_shards.BuildConfig(out=data, demo_train_per_class=150, demo_val_per_class=5,
                                                    shard_size=500))
    base = data
    if args.link_copies > 1:
        data = linked_copies(data, args.link_copies)
    n = mf.load(data)["splits"]["train"]["num_samples"]
    result = {"device": args.device, "samples": n, "num_shards": args.num_shards, "epochs": args.epochs}

    def report(rows=None):
        if rows is not None:
            result["sweep"] = rows
        if args.json:
            args.json.write_text(json.dumps(result, indent=1))

    threads = args.workers if args.device == "cpu" else None  # on GPU: the loader's own default
    result["dali"] = timed(data, args, args.batch_size, num_threads=threads)
    report()
    d = result["dali"]
    print(f"DALI {d['img_s']} img/s over {args.epochs} epochs. Per epoch (s): build {d['build_s']}, first batch "
          f"{d['first_batch_s']}, hand-over wait {d['wait_s']}, drop {d['drop_s']}; beyond streaming "
          f"{d['overhead_s']}. Stall per epoch change {d['stall_s']} s = {100 * d['stall_vs_imagenet_epoch']:.2f}% "
          f"of an ImageNet epoch of one of {args.num_shards} ranks at this pace ({d['imagenet_epoch_s']} s)",
          flush=True)
    if args.sweep:
        sweep(data, args, report)
    if not args.skip_baselines:
        ours = result["dali"]["img_s"]
        result["baseline_img_s"] = baseline_images_per_second(base, args.batch_size, args.crop, args.workers, n)
        result["decode_only_img_s"] = decode_only_images_per_second(base, args.workers)
        result["vs_baseline"] = ours / result["baseline_img_s"]
        result["vs_decode_only"] = ours / result["decode_only_img_s"]
        print(f"DALI {ours:.0f} img/s = {result['vs_baseline']:.2f}x the DataLoader+webdataset+PIL "
              f"baseline ({result['baseline_img_s']:.0f}) and {result['vs_decode_only']:.2f}x the decode-only limit "
              f"({result['decode_only_img_s']:.0f}). Targets: >= 3x and >= 0.6x.")
    report()
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
