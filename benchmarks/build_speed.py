"""Shard-builder throughput on a generated tree of realistic 500x375 JPEGs.

    python -m benchmarks.build_speed            # 2000 images; -n to change

Medians of alternating repeats. Compares `build_shards.py --size 256 -j 2` (decode, resize, re-encode,
tar + idx + sha256 + stats) with a naive
single-process PIL loop doing only the decode, resize and encode, `--size 0` (originals kept), and `--size 256` from
the same images packed as ImageNet's official train tar (read in place, listing included). Target on a
2-core machine: >= 1.8x the naive loop.
"""
import argparse
import io
import json
import os
import shutil
import statistics
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from pipeline import archives, build_shards, demo_data


def make_tree(root, n, classes=10):
    for i in range(n):
        label = i % classes
        img = demo_data.render(label, classes, np.random.default_rng(i)).resize((500, 375), Image.BILINEAR)
        d = root / "train" / demo_data.DEMO_CLASSES[label]
        d.mkdir(parents=True, exist_ok=True)
        img.save(d / f"img_{i:06d}.JPEG", quality=90)
    return sorted(root.glob("train/*/*.JPEG"))


def naive_loop(files, size=256):
    start = time.perf_counter()
    for f in files:
        img = Image.open(f).convert("RGB")
        w, h = img.size
        s = size / min(w, h)
        img = img.resize((round(w * s), round(h * s)), Image.BILINEAR)
        img.save(io.BytesIO(), "JPEG", quality=90)
    return len(files) / (time.perf_counter() - start)


def make_train_tar(tree, folder):
    """The tree's train/ as ImageNet's official train archive: a tar of <wnid>.tar class tars (written via a temporary
    class tar each, as the real one was made)."""
    folder.mkdir(parents=True, exist_ok=True)
    with tarfile.open(folder / archives.TRAIN_TAR, "w") as outer:
        for d in sorted((tree / "train").iterdir()):
            inner = folder / f"{d.name}.tar"
            with tarfile.open(inner, "w") as t:
                for f in sorted(d.iterdir()):
                    t.add(f, arcname=f.name)
            outer.add(inner, arcname=inner.name)
            inner.unlink()
    return folder


def timed_build(src, out, n, **flags):
    shutil.rmtree(out, ignore_errors=True)
    start = time.perf_counter()
    build_shards.build(build_shards.BuildConfig(src=src, out=out, **flags))
    return n / (time.perf_counter() - start)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-n", "--images", type=int, default=2000, help="images in the generated tree (default: 2000)")
    p.add_argument("-j", "--jobs", type=int, default=2, help="builder processes (default: 2)")
    p.add_argument("--repeats", type=int, default=3, help="alternating runs of each; medians reported (default: 3)")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        files = make_tree(tmp / "src", args.images)
        make_train_tar(tmp / "src", tmp / "archives")
        naive_loop(files[:20])  # warm the page cache and Pillow
        runs = {"naive": [], "size256": [], "size0": [], "archive256": []}
        n = len(files)
        for _ in range(args.repeats):  # alternate, so that drift in the machine's speed hits all alike
            runs["naive"].append(naive_loop(files))
            runs["size256"].append(timed_build(tmp / "src", tmp / "a", n, size=256, jobs=args.jobs))
            runs["size0"].append(timed_build(tmp / "src", tmp / "b", n, size=0, jobs=args.jobs))
            runs["archive256"].append(timed_build(tmp / "archives", tmp / "c", n, size=256, jobs=args.jobs))
        median = {k: statistics.median(v) for k, v in runs.items()}
        result = {"images": len(files), "cpus": os.cpu_count(), "jobs": args.jobs, "repeats": args.repeats,
                  "naive_single_process_img_s": median["naive"], "build_size256_img_s": median["size256"],
                  "build_size0_img_s": median["size0"], "build_archive256_img_s": median["archive256"],
                  "load_average": os.getloadavg(), "all": runs}
    result["size256_vs_naive"] = result["build_size256_img_s"] / result["naive_single_process_img_s"]
    print(json.dumps(result, indent=1))
    print(f"--size 256 -j {args.jobs}: {result['build_size256_img_s']:.0f} img/s = "
          f"{result['size256_vs_naive']:.2f}x "
          f"the naive loop ({result['naive_single_process_img_s']:.0f} img/s); --size 0: "
          f"{result['build_size0_img_s']:.0f} img/s; --size 256 from the train tar: "
          f"{result['build_archive256_img_s']:.0f} img/s. Target >= 1.8x.")


if __name__ == "__main__":
    main()
