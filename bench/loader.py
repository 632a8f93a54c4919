"""Loader throughput on CPU: this DALI loader vs the PyTorch DataLoader + webdataset + PIL a user would write,
and a decode-only limit (libjpeg-turbo through PIL decoding the same JPEGs on all cores, nothing else).

    python bench/loader.py                          # builds 256-short demo shards in /tmp/bench_loader if needed
    python bench/loader.py --data data/shards --device cuda   # the same on a GPU (mixed decode)
    python bench/loader.py --data data/shards --device cuda --sweep --skip-baselines   # GPU decoder settings

Targets on a 2-core machine: >= 3x the baseline and >= 0.6x the decode-only limit.
"""
import argparse
import io
import json
import multiprocessing
import os
import sys
import tarfile
import time
from pathlib import Path

sys.path[0] = str(Path(__file__).resolve().parents[1])  # the repo root, not bench/

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from bench.timing import loader_images_per_second  # noqa: E402
from pipeline import build_shards  # noqa: E402
from pipeline import manifest as mf  # noqa: E402
from pipeline.loader import make_loader  # noqa: E402


class PILTrainTransform:
    """The paper's training transform written the plain way: random 224 crop, flip, normalise."""

    def __init__(self, stats, crop, seed):
        self.mean = np.array(stats["mean"], np.float32)
        self.std = np.array(stats["std"], np.float32)
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


SWEEP = [  # (hw_decoder_load, threads, prefetch, batch); the first is the loader's default
    (0.65, None, 2, 256), (0.0, None, 2, 256), (0.9, None, 2, 256), (1.0, None, 2, 256),
    (0.65, None, 4, 256), (0.65, 8, 2, 256), (0.65, None, 2, 512), (0.9, None, 4, 512),
]


def sweep(data, args):
    rows = []
    for hw, threads, prefetch, batch in SWEEP:
        threads = threads or args.workers
        loader = make_loader(data, "train", batch, device=args.device, crop=args.crop, num_threads=threads,
                             hw_decoder_load=hw, prefetch=prefetch)
        try:
            rate = loader_images_per_second(loader, epochs=args.epochs)
        except ValueError as e:
            print(f"batch {batch}: {e}")
            continue
        rows.append({"hw_decoder_load": hw, "threads": threads, "prefetch": prefetch, "batch": batch, "img_s": rate})
        print(f"hw_decoder_load {hw:4.2f} threads {threads:2d} prefetch {prefetch} batch {batch:3d}: {rate:8.0f} img/s",
              flush=True)
        del loader
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=None, help="shards (default: demo shards in /tmp/bench_loader)")
    p.add_argument("--device", default="cpu", help="cpu or cuda for this loader (default: cpu)")
    p.add_argument("-b", "--batch-size", type=int, default=64, help="batch (default: 64)")
    p.add_argument("--crop", type=int, default=224, help="crop (default: 224)")
    p.add_argument("-j", "--workers", type=int, default=os.cpu_count(),
                   help=f"threads/processes (default: {os.cpu_count()})")
    p.add_argument("--epochs", type=int, default=2, help="epochs timed per loader (default: 2)")
    p.add_argument("--sweep", action="store_true",
                   help="also time GPU decoder settings: hw_decoder_load, threads, prefetch, batch (default: off)")
    p.add_argument("--skip-baselines", action="store_true",
                   help="skip the DataLoader and decode-only runs (default: off)")
    args = p.parse_args(argv)
    data = args.data or Path("/tmp/bench_loader")
    if not mf.manifest_path(data).is_file():
        build_shards.main(["--out", str(data), "--demo-train-per-class", "150", "--demo-val-per-class", "5",
                           "--shard-size", "500"])
    n = mf.load(data)["splits"]["train"]["num_samples"]
    ours = make_loader(data, "train", args.batch_size, device=args.device, crop=args.crop, num_threads=args.workers)
    result = {"device": args.device, "workers": args.workers, "samples": n, "batch": args.batch_size,
              "dali_img_s": loader_images_per_second(ours, epochs=args.epochs)}
    del ours
    if args.sweep:
        result["sweep"] = sweep(data, args)
    if args.skip_baselines:
        print(json.dumps(result, indent=1))
        return
    result["baseline_img_s"] = baseline_images_per_second(data, args.batch_size, args.crop, args.workers, n)
    result["decode_only_img_s"] = decode_only_images_per_second(data, args.workers)
    result["vs_baseline"] = result["dali_img_s"] / result["baseline_img_s"]
    result["vs_decode_only"] = result["dali_img_s"] / result["decode_only_img_s"]
    print(json.dumps(result, indent=1))
    print(f"DALI {result['dali_img_s']:.0f} img/s = {result['vs_baseline']:.2f}x the DataLoader+webdataset+PIL "
          f"baseline ({result['baseline_img_s']:.0f}) and {result['vs_decode_only']:.2f}x the decode-only limit "
          f"({result['decode_only_img_s']:.0f}). Targets: >= 3x and >= 0.6x.")


if __name__ == "__main__":
    main()
