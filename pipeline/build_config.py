"""What a shard build is: its settings (BuildConfig, the one typed entry to pipeline/build_shards.py's build()),
their checks, and the subset of them that decides the bytes of the shards."""
import dataclasses
import multiprocessing
import re
from pathlib import Path

from pipeline import archives, object_store

# (train, val) images per class of each embedded set. Shapes: a small training set, so that a run without dropout or
# augmentation can overfit it within the ablation's budget (experiments/ablation/), and a larger validation set for
# less noisy comparisons.
DEMO_PER_CLASS = {"colours": (130, 30), "shapes": (80, 50)}


class BuildError(Exception):
    """The build cannot go on; the message says why and what to do."""


@dataclasses.dataclass
class BuildConfig:
    """One build's settings: the CLI's flags, one field each (see get_args_parser for what each one means).
    None for demo_set and the demo counts means the default of the set being built."""
    out: str | Path = "data/shards"  # a folder, or s3://bucket/prefix
    src: str | Path | None = None
    val_labels: str | Path | None = None
    train_tar: str | Path | None = None
    val_tar: str | Path | None = None
    devkit: str | Path | None = None
    size: int = 256
    center_crop: bool = False
    shard_size: str | int = "1000"
    jobs: int = dataclasses.field(default_factory=multiprocessing.cpu_count)
    seed: int = 0
    quality: int = 90
    max_upscale: float = 0.0  # skip images that --size would enlarge more than this many times (0: none skipped)
    demo_set: str | None = None
    demo_train_per_class: int | None = None
    demo_val_per_class: int | None = None
    resume: bool = False
    strict: bool = False
    staging: str | Path | None = None  # s3 --out only: the local folder the shards are built in first

    def checked(self):
        """A copy with paths as Paths, the archives in --src found and the demo defaults filled in; BuildError for
        values that cannot work, naming the flag."""
        path = lambda p: None if p is None else Path(p)  # noqa: E731
        c = dataclasses.replace(self, src=path(self.src), val_labels=path(self.val_labels),
                                train_tar=path(self.train_tar), val_tar=path(self.val_tar), devkit=path(self.devkit),
                                staging=path(self.staging), shard_size=str(self.shard_size),
                                out=self.out if object_store.is_uri(self.out) else Path(self.out))
        if c.src is not None and c.src.is_dir():
            for key, found in archives.find(c.src).items():
                if getattr(c, key) is None:
                    c = dataclasses.replace(c, **{key: found})
        real = c.src is not None or c.train_tar is not None
        if real and c.demo_set is not None:
            raise BuildError(f"--demo-set {c.demo_set} builds an embedded set and --src/--train-tar a real one: "
                             "give one of them.")
        if not real:
            c.demo_set = c.demo_set or "colours"
            if c.demo_set not in DEMO_PER_CLASS:
                raise BuildError(f"--demo-set {c.demo_set!r}: choose one of {', '.join(sorted(DEMO_PER_CLASS))}.")
            train, val = DEMO_PER_CLASS[c.demo_set]
            c.demo_train_per_class = train if c.demo_train_per_class is None else c.demo_train_per_class
            c.demo_val_per_class = val if c.demo_val_per_class is None else c.demo_val_per_class
            if c.demo_train_per_class < 1 or c.demo_val_per_class < 0:
                raise BuildError("--demo-train-per-class must be >= 1 and --demo-val-per-class >= 0.")
        else:  # the demo counts mean nothing for real data; kept out of the settings a resume compares
            c.demo_train_per_class = c.demo_val_per_class = None
        if c.jobs < 1 or not 1 <= c.quality <= 100 or c.size < 0:
            raise BuildError("-j/--jobs must be >= 1, --quality 1..100 and --size >= 0.")
        if c.max_upscale and c.max_upscale < 1:
            raise BuildError(f"--max-upscale {c.max_upscale:g}: give a factor >= 1 (e.g. 2: skip images whose "
                             "shorter side is under half of --size), or 0 to keep every image.")
        parse_shard_size(c.shard_size)
        return c

    @property
    def from_archives(self):
        return self.train_tar is not None


def parse_shard_size(text):
    m = re.fullmatch(r"\s*(\d+)\s*(KB|MB|GB|B)?\s*", str(text), re.IGNORECASE)
    if not m or int(m.group(1)) <= 0:
        raise BuildError(f"--shard-size {text!r}: give a sample count (1000) or a size (256MB, 1GB).")
    n, unit = int(m.group(1)), (m.group(2) or "").upper()
    return ("samples", n) if not unit else ("bytes", n * {"B": 1, "KB": 2**10, "MB": 2**20, "GB": 2**30}[unit])


def settings_of(cfg):
    """What decides the bytes of a build: a build may only be resumed or reused with the same settings."""
    real = lambda p: str(p.resolve()) if p else None  # noqa: E731
    return {"src": real(cfg.src), "val_labels": real(cfg.val_labels),
            "train_tar": real(cfg.train_tar), "val_tar": real(cfg.val_tar), "devkit": real(cfg.devkit),
            "size": cfg.size, "center_crop": cfg.center_crop, "shard_size": str(cfg.shard_size),
            "seed": cfg.seed, "quality": cfg.quality, "max_upscale": cfg.max_upscale, "demo_set": cfg.demo_set,
            "demo_train_per_class": cfg.demo_train_per_class, "demo_val_per_class": cfg.demo_val_per_class}
