"""ImageNet (or the built-in demo set) -> WebDataset shards + DALI indexes + manifest.json.

    python pipeline/build_shards.py                                       # demo set -> data/shards
    python pipeline/build_shards.py --demo-set shapes --size 128 --out data/shapes   # the ablation set
    python pipeline/build_shards.py --src /data/imagenet --out /data/shards -j 16
    python pipeline/build_shards.py --src /data/imagenet --out /data/shards --resume   # after a kill
    python pipeline/build_shards.py --out /data/shards --verify                        # re-check finished shards

Every image is decoded completely here, because DALI cannot skip a bad JPEG at train time. Samples are shuffled
globally before they are cut into shards, because DALI reads shards in order and shuffles only inside a buffer.
"""
import argparse
import functools
import multiprocessing
import platform
import re
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repo root importable
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import numpy as np
import PIL
from tqdm import tqdm

from pipeline import manifest as mf
from pipeline import sources
from pipeline.images import BadImage, prepare
from pipeline.shard_writer import ShardWriter
from pipeline.stats import RGBStats, pixel_sums

SPLITS = ("train", "val")
# (train, val) images per class of each embedded set. Shapes: a small training set, so that a run without dropout or
# augmentation can overfit it within the ablation's budget (bench/ablate.py), and a larger validation set for
# less noisy comparisons.
DEMO_PER_CLASS = {"colours": (130, 30), "shapes": (80, 50)}


class BuildError(Exception):
    """The build cannot go on; the message says why and what to do."""


def get_args_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--src", type=Path, default=None,
                   help="ImageNet-style tree: SRC/train/<wnid>/*, SRC/val/<wnid>/* or SRC/val/* + labels "
                        "(default: none, build the embedded demo set)")
    p.add_argument("--val-labels", type=Path, default=None,
                   help="labels for a flat val/: Kaggle LOC_val_solution.csv or 'filename wnid' lines "
                        "(default: SRC/LOC_val_solution.csv if present)")
    p.add_argument("--out", type=Path, default=Path("data/shards"), help="output folder (default: data/shards)")
    p.add_argument("--size", type=int, default=256,
                   help="resize the shorter side to this many pixels, the paper's preprocessing; 0 keeps baseline "
                        "RGB JPEGs as they are and re-encodes only what must be (default: 256)")
    p.add_argument("--center-crop", action="store_true",
                   help="also keep only the central SIZE x SIZE square, as the paper did (default: off)")
    p.add_argument("--shard-size", default="1000",
                   help="samples per shard (e.g. 1000) or bytes per shard (e.g. 256MB, 1GB) (default: 1000)")
    p.add_argument("-j", "--workers", type=int, default=multiprocessing.cpu_count(),
                   help=f"decode/encode processes (default: {multiprocessing.cpu_count()}, the CPU count)")
    p.add_argument("--seed", type=int, default=0, help="shuffle seed, and the demo set's seed (default: 0)")
    p.add_argument("--quality", type=int, default=90, help="JPEG quality of re-encoded images (default: 90)")
    p.add_argument("--demo-set", choices=sorted(sources.DEMO_SETS), default=None,
                   help="embedded set to build without --src: colours (the demo set, learnable from colour) or "
                        "shapes (the ablation set: the class is an object's shape) (default: colours)")
    p.add_argument("--demo-train-per-class", type=int, default=None,
                   help="embedded set: training images per class, 10 classes "
                        f"(default: {DEMO_PER_CLASS['colours'][0]} colours, {DEMO_PER_CLASS['shapes'][0]} shapes)")
    p.add_argument("--demo-val-per-class", type=int, default=None,
                   help="embedded set: validation images per class "
                        f"(default: {DEMO_PER_CLASS['colours'][1]} colours, {DEMO_PER_CLASS['shapes'][1]} shapes)")
    p.add_argument("--resume", action="store_true", help="continue an unfinished build in --out (default: off)")
    p.add_argument("--verify", action="store_true",
                   help="only re-read the shards in --out and check them against the manifest (default: off)")
    p.add_argument("--strict", action="store_true", help="stop at the first input that cannot be used (default: off)")
    return p


def parse_shard_size(text):
    m = re.fullmatch(r"\s*(\d+)\s*(KB|MB|GB|B)?\s*", str(text), re.IGNORECASE)
    if not m or int(m.group(1)) <= 0:
        raise BuildError(f"--shard-size {text!r}: give a sample count (1000) or a size (256MB, 1GB).")
    n, unit = int(m.group(1)), (m.group(2) or "").upper()
    return ("samples", n) if not unit else ("bytes", n * {"B": 1, "KB": 2**10, "MB": 2**20, "GB": 2**30}[unit])


def settings_of(args):
    """What decides the bytes of a build: a build may only be resumed or reused with the same settings."""
    return {"src": str(args.src.resolve()) if args.src else None,
            "val_labels": str(args.val_labels.resolve()) if args.val_labels else None,
            "size": args.size, "center_crop": args.center_crop, "shard_size": str(args.shard_size),
            "seed": args.seed, "quality": args.quality,
            "demo_set": None if args.src else args.demo_set,
            "demo_train_per_class": None if args.src else args.demo_train_per_class,
            "demo_val_per_class": None if args.src else args.demo_val_per_class}


def _process(task, *, size, crop, quality, num_classes, seed):
    """In a worker process: (pos, name, label) -> (pos, jpeg or None, reason, pixel sums for the statistics)."""
    pos, name, label = task
    try:
        data = sources.read_input(name, label, num_classes, seed)
        jpeg, pixels = prepare(data, size=size, crop=crop, quality=quality)
        return pos, jpeg, None, pixel_sums(pixels)
    except BadImage as e:
        return pos, None, str(e), None
    except OSError as e:
        return pos, None, f"cannot read: {e.strerror or e}", None


def _new_manifest(source, args):
    return {"format": mf.FORMAT, "version": mf.VERSION, "complete": False,
            "classes": source["classes"], "names": source["names"], "members": mf.MEMBER_DOCS,
            "splits": {s: {"num_samples": 0, "shards": []} for s in SPLITS}, "skipped": [],
            "stats": None, "progress": {"stats": RGBStats().state()},
            "build": {**settings_of(args), "versions": {"python": platform.python_version(),
                                                        "pillow": PIL.__version__, "numpy": np.__version__}}}


def _open_build(args, source):
    """A fresh manifest, or the unfinished one to resume; None when an identical build is already complete."""
    out = args.out
    old = None
    if mf.manifest_path(out).is_file():
        old = mf.load(out, require_complete=False)
        theirs = {k: v for k, v in old["build"].items() if k != "versions"}
        if "demo_set" not in theirs:  # built before there was a choice: the colours set
            theirs["demo_set"] = None if theirs.get("src") else "colours"
        diff = [k for k, v in settings_of(args).items() if theirs.get(k) != v]
        if diff:
            raise BuildError(f"--out {out} holds a build with different settings ("
                             + ", ".join(f"{k}: {theirs.get(k)!r} there, {settings_of(args)[k]!r} now" for k in diff)
                             + "). Use another --out, or delete it to rebuild.")
        if old["complete"]:
            return None
        if not args.resume:
            raise BuildError(f"--out {out} holds an unfinished build. Pass --resume to continue it, "
                             "or delete the folder to start over.")
    elif any(out.glob("*/*.tar")):
        raise BuildError(f"--out {out} holds shards but no manifest.json. Use another --out, or empty it.")
    for split in SPLITS:
        (out / split).mkdir(parents=True, exist_ok=True)
        for tmp in (out / split).glob("*.tmp"):  # what a killed build was writing: never part of the manifest
            tmp.unlink()
    return old if old else _new_manifest(source, args)


def build_split(args, man, split, inputs, pool, unit, limit):
    """Process one split's inputs from where the manifest says it stopped, cutting shards as they fill."""
    entry = man["splits"][split]
    done = entry["shards"][-1]["inputs"][1] if entry["shards"] else 0
    next_idx = entry["num_samples"]
    stats = RGBStats.from_state(man["progress"]["stats"])
    man["skipped"] = [s for s in man["skipped"] if s["split"] != split or s["pos"] < done]
    order = np.random.default_rng(args.seed).permutation(len(inputs))  # the global shuffle
    tasks = ((pos, *inputs[order[pos]]) for pos in range(done, len(inputs)))
    work = functools.partial(_process, size=args.size, crop=args.center_crop, quality=args.quality,
                             num_classes=len(man["classes"]), seed=args.seed)
    results = pool.imap(work, tasks, chunksize=8) if pool else map(work, tasks)
    writer, first = None, done
    bar = tqdm(total=len(inputs), initial=done, unit="img", desc=f"{split:5s}", mininterval=1.0, file=sys.stderr)

    def close_shard(end):
        nonlocal writer
        info = writer.close()
        info["inputs"] = [first, end]
        entry["shards"].append(info)
        entry["num_samples"] = next_idx
        man["progress"]["stats"] = stats.state()
        mf.write(args.out, man)  # after every shard: a kill loses at most the shard being written
        writer = None

    for pos, jpeg, reason, sums in results:
        bar.update(1)
        if jpeg is None:
            name = inputs[order[pos]][0]
            if args.strict:
                raise BuildError(f"{name}: {reason} (--strict: stopping; fix or remove the file)")
            man["skipped"].append({"split": split, "pos": pos, "path": name, "reason": reason})
            continue
        if writer is None:
            first = pos
            writer = ShardWriter(args.out / split / f"{split}-{len(entry['shards']):06d}.tar")
        writer.add(next_idx, inputs[order[pos]][1], jpeg)
        next_idx += 1
        if split == "train":
            stats.add_sums(*sums)
        if (writer.num_samples if unit == "samples" else writer.bytes_written) >= limit:
            close_shard(pos + 1)
    if writer is not None:
        close_shard(len(inputs))
    bar.close()


def build(args):
    unit, limit = parse_shard_size(args.shard_size)
    if args.src is None:
        if args.demo_train_per_class < 1 or args.demo_val_per_class < 0:
            raise BuildError("--demo-train-per-class must be >= 1 and --demo-val-per-class >= 0.")
        source = sources.demo(args.demo_train_per_class, args.demo_val_per_class, args.demo_set)
    else:
        source = sources.imagenet(args.src, args.val_labels)
    man = _open_build(args, source)
    if man is None:
        print(f"{args.out}: already built with these settings; nothing to do (use another --out to rebuild).")
        return 0
    if man["classes"] != source["classes"]:
        raise BuildError(f"--out {args.out}: the unfinished build has other classes than --src now has. "
                         "Delete it to start over.")
    print(f"building {f'embedded {args.demo_set} set' if args.src is None else args.src} -> {args.out}: "
          + ", ".join(f"{s} {len(source['splits'][s])} inputs" for s in SPLITS) + f", {len(man['classes'])} classes")
    start = time.time()
    seen = sum(s["num_samples"] for s in man["splits"].values())
    ctx = multiprocessing.get_context("fork")
    pool = ctx.Pool(args.workers) if args.workers > 1 else None
    try:
        for split in SPLITS:
            build_split(args, man, split, source["splits"][split], pool, unit, limit)
    finally:
        if pool:
            pool.terminate()
    man["stats"] = RGBStats.from_state(man["progress"]["stats"]).summary()
    del man["progress"]
    man["complete"] = True
    mf.write(args.out, man)
    made = sum(s["num_samples"] for s in man["splits"].values()) - seen
    secs = time.time() - start
    print(f"done in {secs:.1f}s ({made / max(secs, 1e-9):.0f} img/s): "
          + ", ".join(f"{s} {man['splits'][s]['num_samples']} samples in {len(man['splits'][s]['shards'])} shards"
                      for s in SPLITS) + f"; {len(man['skipped'])} inputs skipped")
    for s in man["skipped"][:10]:
        print(f"  skipped {s['path']}: {s['reason']}")
    if len(man["skipped"]) > 10:
        print(f"  ... and {len(man['skipped']) - 10} more, listed in {mf.manifest_path(args.out)}")
    return 0


def main(argv=None):
    args = get_args_parser().parse_args(argv)
    if args.src is not None and args.demo_set is not None:
        print(f"error: --demo-set {args.demo_set} builds an embedded set and --src {args.src} a real one: give one "
              "of them.", file=sys.stderr)
        return 2
    args.demo_set = args.demo_set or "colours"
    train_default, val_default = DEMO_PER_CLASS[args.demo_set]
    if args.demo_train_per_class is None:
        args.demo_train_per_class = train_default
    if args.demo_val_per_class is None:
        args.demo_val_per_class = val_default
    try:
        if args.verify:
            problems = mf.verify(args.out)
            for p in problems:
                print(p)
            print(f"{args.out}: {'OK, shards match the manifest' if not problems else f'{len(problems)} problem(s)'}")
            return 1 if problems else 0
        if args.workers < 1 or not 1 <= args.quality <= 100 or args.size < 0:
            raise BuildError("-j/--workers must be >= 1, --quality 1..100 and --size >= 0.")
        return build(args)
    except (BuildError, sources.SourceError, mf.ManifestError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
