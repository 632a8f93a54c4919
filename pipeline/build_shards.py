"""ImageNet (or the built-in demo set) -> WebDataset shards + DALI indexes + manifest.json, on disk or in S3.

    python pipeline/build_shards.py                                       # demo set -> data/shards
    python pipeline/build_shards.py --demo-set shapes --size 128 --out data/shapes   # the ablation set
    python pipeline/build_shards.py --src /data/imagenet --out /data/shards -j 16   # a tree, Kaggle's, or archives
    python pipeline/build_shards.py --src /data/imagenet --out /data/shards --resume   # after a kill
    python pipeline/build_shards.py --out /data/shards --verify                        # re-check finished shards
    python pipeline/build_shards.py --src /data/imagenet --out s3://bucket/imagenet -j 16   # staged, then uploaded

--src finds what it holds: ImageNet's three official archives (ILSVRC2012_img_train.tar, ILSVRC2012_img_val.tar,
ILSVRC2012_devkit_t12.tar.gz; read in place, never extracted), Kaggle's download (ILSVRC/Data/CLS-LOC/...), or a tree
SRC/train/<wnid>/*.JPEG. Every image is decoded completely here, because DALI cannot skip a bad JPEG at train time.
Samples are shuffled globally before they are cut into shards, because DALI reads shards in order and shuffles only
inside a buffer.

From Python: build_shards.build(BuildConfig(out="data/shards", jobs=4)) returns the finished manifest.
"""
import argparse
import functools
import multiprocessing
import platform
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repo root importable
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import numpy as np
import PIL
from tqdm import tqdm

from pipeline import archives, object_store, sources
from pipeline import manifest as mf
from pipeline.build_config import DEMO_PER_CLASS, BuildConfig, BuildError, parse_shard_size, settings_of
from pipeline.build_summary import print_summary, strict_stop, upscale_summary
from pipeline.images import BadImage, prepare
from pipeline.shard_writer import ShardWriter
from pipeline.stats import RGBStats, pixel_sums

SPLITS = ("train", "val")


def get_args_parser():
    d = BuildConfig(jobs=multiprocessing.cpu_count())
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group("input")
    g.add_argument("--src", type=Path, default=None,
                   help="ImageNet: a folder with the official archives, Kaggle's download root, or a tree "
                        "SRC/train/<wnid>/*, SRC/val/<wnid>/* or SRC/val/* + labels (default: none, build the "
                        "embedded demo set)")
    g.add_argument("--train-tar", type=Path, default=None,
                   help=f"{archives.TRAIN_TAR} (a tar of per-class tars), read in place "
                        f"(default: SRC/{archives.TRAIN_TAR} if present)")
    g.add_argument("--val-tar", type=Path, default=None,
                   help=f"{archives.VAL_TAR}, read in place; needs --devkit "
                        f"(default: SRC/{archives.VAL_TAR} if present)")
    g.add_argument("--devkit", type=Path, default=None,
                   help=f"{archives.DEVKIT}: validation labels and class names; reading it needs scipy "
                        f"(default: SRC/{archives.DEVKIT} if present)")
    g.add_argument("--val-labels", type=Path, default=None,
                   help="labels for a flat val/: Kaggle LOC_val_solution.csv or 'filename wnid' lines "
                        "(default: SRC/LOC_val_solution.csv if present)")
    g.add_argument("--demo-set", choices=sorted(sources.DEMO_SETS), default=None,
                   help="embedded set to build without --src: colours (the demo set, learnable from colour) or "
                        "shapes (the ablation set: the class is an object's shape) (default: colours)")
    g.add_argument("--demo-train-per-class", type=int, default=None,
                   help="embedded set: training images per class, 10 classes "
                        f"(default: {DEMO_PER_CLASS['colours'][0]} colours, {DEMO_PER_CLASS['shapes'][0]} shapes)")
    g.add_argument("--demo-val-per-class", type=int, default=None,
                   help="embedded set: validation images per class "
                        f"(default: {DEMO_PER_CLASS['colours'][1]} colours, {DEMO_PER_CLASS['shapes'][1]} shapes)")
    g = p.add_argument_group("output")
    g.add_argument("--out", default=str(d.out),
                   help=f"output folder, or s3://bucket/prefix to build in --staging and upload (default: {d.out})")
    g.add_argument("--staging", type=Path, default=None,
                   help="s3:// --out only: local folder to build in before the upload "
                        f"(default: {object_store.STAGING}/BUCKET/PREFIX)")
    g.add_argument("--size", type=int, default=d.size,
                   help="resize the shorter side to this many pixels, the paper's preprocessing; 0 keeps baseline "
                        f"RGB JPEGs as they are and re-encodes only what must be (default: {d.size})")
    g.add_argument("--center-crop", action="store_true",
                   help="also keep only the central SIZE x SIZE square, as the paper did (default: off)")
    g.add_argument("--shard-size", default=d.shard_size,
                   help=f"samples per shard (e.g. 1000) or bytes per shard (e.g. 256MB, 1GB) (default: {d.shard_size})")
    g.add_argument("--seed", type=int, default=d.seed,
                   help=f"shuffle seed, and the demo set's seed (default: {d.seed})")
    g.add_argument("--quality", type=int, default=d.quality,
                   help=f"JPEG quality of re-encoded images (default: {d.quality})")
    g.add_argument("--max-upscale", type=float, default=d.max_upscale, metavar="FACTOR",
                   help="skip (and list) images whose shorter side --size would enlarge more than FACTOR times, "
                        "e.g. 2; enlarged images are counted in the summary and manifest.json either way "
                        "(default: 0, keep them all)")
    g = p.add_argument_group("running")
    g.add_argument("-j", "--jobs", type=int, default=d.jobs,
                   help=f"decode/encode processes (default: {d.jobs}, the CPU count)")
    g.add_argument("--workers", type=int, dest="jobs", default=argparse.SUPPRESS, help=argparse.SUPPRESS)  # old name
    g.add_argument("--resume", action="store_true",
                   help="continue an unfinished build in --out, or an unfinished upload (default: off)")
    g.add_argument("--verify", action="store_true",
                   help="only re-read the shards in --out and check them against the manifest (default: off)")
    g.add_argument("--strict", action="store_true", help="stop at the first input that cannot be used (default: off)")
    return p


def _process(task, *, size, crop, quality, max_upscale, num_classes, seed):
    """In a worker process: (pos, name, label) -> (pos, jpeg or None, reason, pixel sums for the statistics,
    upscale factor)."""
    pos, name, label = task
    try:
        data = archives.read_member(name) if archives.is_member(name) else \
            sources.read_input(name, label, num_classes, seed)
        done = prepare(data, size=size, crop=crop, quality=quality, max_upscale=max_upscale)
        return pos, done.jpeg, None, pixel_sums(done.pixels), done.upscale
    except BadImage as e:
        return pos, None, str(e), None, 1.0
    except OSError as e:
        return pos, None, f"cannot read: {e.strerror or e}", None, 1.0


def _new_manifest(source, cfg):
    # Inputs found unusable while listing (a truncated class tar, a stray member): reported like a bad image.
    skipped = [{"pos": -1, **p} for p in source.get("problems", [])]
    return {"format": mf.FORMAT, "version": mf.VERSION, "complete": False,
            "classes": source["classes"], "names": source["names"], "members": mf.MEMBER_DOCS,
            "splits": {s: {"num_samples": 0, "shards": []} for s in SPLITS}, "skipped": skipped,
            "stats": None, "progress": {"stats": RGBStats().state(),
                                        "inputs": {s: len(source["splits"][s]) for s in SPLITS}},
            "build": {**settings_of(cfg), "versions": {"python": platform.python_version(),
                                                       "pillow": PIL.__version__, "numpy": np.__version__}}}


def _settings_differ(cfg, old, where):
    theirs = {k: v for k, v in old["build"].items() if k != "versions"}
    if "demo_set" not in theirs:  # built before there was a choice: the colours set
        theirs["demo_set"] = None if theirs.get("src") else "colours"
    theirs.setdefault("max_upscale", 0.0)  # built before the flag: every image kept
    ours = settings_of(cfg)
    diff = [k for k, v in ours.items() if theirs.get(k) != v]
    if diff:
        raise BuildError(f"--out {where} holds a build with different settings ("
                         + ", ".join(f"{k}: {theirs.get(k)!r} there, {ours[k]!r} now" for k in diff)
                         + "). Use another --out, or delete it to rebuild.")


def _open_build(cfg, out):
    """The unfinished manifest to resume, {} for a fresh build, None when an identical build is already complete."""
    if mf.manifest_path(out).is_file():
        old = mf.load(out, require_complete=False)
        _settings_differ(cfg, old, out)
        if old["complete"]:
            return None
        if not cfg.resume:
            raise BuildError(f"--out {out} holds an unfinished build. Pass --resume to continue it, "
                             "or delete the folder to start over.")
        return old
    if any(out.glob("*/*.tar")):
        raise BuildError(f"--out {out} holds shards but no manifest.json. Use another --out, or empty it.")
    return {}


def build_split(cfg, out, man, split, inputs, pool, unit, limit):
    """Process one split's inputs from where the manifest says it stopped, cutting shards as they fill."""
    entry = man["splits"][split]
    done = entry["shards"][-1]["inputs"][1] if entry["shards"] else 0
    next_idx = entry["num_samples"]
    stats = RGBStats.from_state(man["progress"]["stats"])
    man["skipped"] = [s for s in man["skipped"] if s["split"] != split or s["pos"] < done]
    order = np.random.default_rng(cfg.seed).permutation(len(inputs))  # the global shuffle
    tasks = ((pos, *inputs[order[pos]]) for pos in range(done, len(inputs)))
    work = functools.partial(_process, size=cfg.size, crop=cfg.center_crop, quality=cfg.quality,
                             max_upscale=cfg.max_upscale, num_classes=len(man["classes"]), seed=cfg.seed)
    results = pool.imap(work, tasks, chunksize=8) if pool else map(work, tasks)
    writer, first, upscaled = None, done, []
    bar = tqdm(total=len(inputs), initial=done, unit="img", desc=f"{split:5s}", mininterval=1.0, file=sys.stderr)

    def close_shard(end):
        nonlocal writer
        info = writer.close()
        info["inputs"] = [first, end]
        # per shard, so that a resumed build counts exactly the shards it keeps
        info["upscaled"] = {"images": len(upscaled), "max_factor": round(max(upscaled, default=1.0), 3)}
        upscaled.clear()
        entry["shards"].append(info)
        entry["num_samples"] = next_idx
        man["progress"]["stats"] = stats.state()
        mf.write(out, man)  # after every shard: a kill loses at most the shard being written
        writer = None

    try:
        for pos, jpeg, reason, sums, upscale in results:
            bar.update(1)
            if jpeg is None:
                name = inputs[order[pos]][0]
                name = archives.display(name) if archives.is_member(name) else name
                if cfg.strict:
                    raise BuildError(strict_stop(name, reason, out, len(entry["shards"]), split))
                man["skipped"].append({"split": split, "pos": pos, "path": name, "reason": reason})
                continue
            if writer is None:
                first = pos
                writer = ShardWriter(out / split / f"{split}-{len(entry['shards']):06d}.tar")
            writer.add(next_idx, inputs[order[pos]][1], jpeg)
            next_idx += 1
            if upscale > 1.0:
                upscaled.append(upscale)
            if split == "train":
                stats.add_sums(*sums)
            if (writer.num_samples if unit == "samples" else writer.bytes_written) >= limit:
                close_shard(pos + 1)
        if writer is not None:
            close_shard(len(inputs))
    finally:  # stopped (--strict, Ctrl-C, an error): the unfinished shard goes, the manifest keeps the finished ones
        if writer is not None:
            writer.abort()
        bar.close()  # before any message: an error printed after it gets a line of its own


def _source(cfg, pool):
    if cfg.from_archives:
        progress = functools.partial(tqdm, mininterval=1.0, file=sys.stderr)
        return archives.imagenet(cfg.train_tar, cfg.val_tar, cfg.devkit, pool=pool, progress=progress)
    if cfg.src is not None:
        return sources.imagenet(cfg.src, cfg.val_labels)
    return sources.demo(cfg.demo_train_per_class, cfg.demo_val_per_class, cfg.demo_set)


def build_local(cfg, out):
    """Build (or finish) the shards of cfg in the folder out; the complete manifest."""
    old = _open_build(cfg, out)
    if old is None:
        print(f"{out}: already built with these settings; nothing to do (use another --out to rebuild).")
        return mf.load(out)
    unit, limit = parse_shard_size(cfg.shard_size)
    ctx = multiprocessing.get_context("fork")
    pool = ctx.Pool(cfg.jobs) if cfg.jobs > 1 else None
    try:
        source = _source(cfg, pool)
        if cfg.strict and source.get("problems"):
            first = source["problems"][0]
            raise BuildError(f"{first['path']}: {first['reason']} (--strict: stopping; download the archive again)")
        if old and old["classes"] != source["classes"]:
            raise BuildError(f"--out {out}: the unfinished build has other classes than the source now has. "
                             "Delete it to start over.")
        counted = (old or {}).get("progress", {}).get("inputs")
        now = {s: len(source["splits"][s]) for s in SPLITS}
        if counted and counted != now:  # the global shuffle is a function of the input list: it would differ
            raise BuildError(f"--out {out}: the unfinished build had {counted} inputs and the source now has {now} "
                             "(a file added or removed). A resumed build must see the same files: put them back, "
                             "or delete the folder to start over.")
        man = old or _new_manifest(source, cfg)
        for split in SPLITS:
            (out / split).mkdir(parents=True, exist_ok=True)
            for tmp in (out / split).glob("*.tmp"):  # what a killed build was writing: never part of the manifest
                tmp.unlink()
        mf.write(out, man)  # from the start: a build stopped before its first shard is resumed, not refused
        what = cfg.train_tar.parent if cfg.from_archives else cfg.src or f"embedded {cfg.demo_set} set"
        print(f"building {what} -> {out}: " + ", ".join(f"{s} {len(source['splits'][s])} inputs" for s in SPLITS)
              + f", {len(man['classes'])} classes")
        start = time.time()
        seen = sum(s["num_samples"] for s in man["splits"].values())
        for split in SPLITS:
            build_split(cfg, out, man, split, source["splits"][split], pool, unit, limit)
    finally:
        if pool:
            pool.terminate()
    man["stats"] = RGBStats.from_state(man["progress"]["stats"]).summary()
    man["upscaled"] = upscale_summary(man, cfg.size)
    del man["progress"]
    man["complete"] = True
    mf.write(out, man)
    print_summary(man, made=sum(s["num_samples"] for s in man["splits"].values()) - seen, secs=time.time() - start,
                  size=cfg.size, out=out)
    return man


def build(cfg):
    """Build the shards cfg describes (the one entry point: the CLI and every caller); returns the complete
    manifest. Raises BuildError with a message naming the flag or file and what to do."""
    try:
        cfg = cfg.checked()
        if not object_store.is_uri(cfg.out):
            return build_local(cfg, cfg.out)
        remote = object_store.open_for_upload(cfg.out, resume=cfg.resume)
        if remote is not None and remote.get("complete"):
            _settings_differ(cfg, remote, cfg.out)
            print(f"{cfg.out}: already built with these settings; nothing to do (use another --out to rebuild).")
            return remote
        staging = cfg.staging or object_store.default_staging(cfg.out)
        man = build_local(cfg, staging)
        object_store.upload(staging, cfg.out, man)
        return man
    except (sources.SourceError, mf.ManifestError, object_store.ObjectStoreError) as e:
        raise BuildError(str(e)) from None


def verify(out):
    """Problems with a finished build in out (a folder or s3:// URI) as messages; [] when it matches its manifest."""
    try:
        return object_store.verify(str(out)) if object_store.is_uri(out) else mf.verify(out)
    except (mf.ManifestError, object_store.ObjectStoreError) as e:
        raise BuildError(str(e)) from None


def main(argv=None):
    args = vars(get_args_parser().parse_args(argv))
    check = args.pop("verify")
    cfg = BuildConfig(**args)
    try:
        if check:
            problems = verify(cfg.out)
            for p in problems:
                print(p)
            print(f"{cfg.out}: {'OK, shards match the manifest' if not problems else f'{len(problems)} problem(s)'}")
            return 1 if problems else 0
        build(cfg)
        return 0
    except BuildError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
