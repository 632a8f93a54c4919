"""One ablation run: a variant of the reference recipe trained single-process (no Ray) on the DALI CPU loader, with
what the cluster's workers build from a TrainConfig (cluster/loop.py's loaders' settings, schedule, step and
evaluation; cluster/build_model.py's net), and its per-epoch history.

The variants switch one setting of cluster/recipe.py off at a time (activation, lrn, overlapping_pool, dropout,
crop_flip, lighting, wd); everything else, seeds included, stays equal. Each is also a `python cluster/launch.py`
command (experiments/ablation/study.py prints it).
"""
import dataclasses
import math
import os
import subprocess
import time
from dataclasses import dataclass, field

import torch

from cluster.build_model import build_model
from cluster.loop import LrSchedule, evaluate, loader_settings, make_optimizer, train_one_epoch, training_augmentation
from cluster.recipe import TrainConfig, preset_config
from pipeline.loader import make_loader


@dataclass(frozen=True)
class Variant:
    """One row of the ablation: the reference recipe (a TrainConfig) with (at most) one setting changed; Figure 1's
    runs change several (the paper's setting for that figure) and stop early."""
    name: str
    label: str
    changes: dict = field(default_factory=dict)  # {TrainConfig field: value} changed from the reference
    stop_at: float = 0.0  # stop once the training error (as trained) is at or below this; 0: train the whole budget

    def __post_init__(self):
        unknown = set(self.changes) - {f.name for f in dataclasses.fields(TrainConfig)}
        if unknown:
            raise ValueError(f"variant {self.name}: {sorted(unknown)} are not settings of cluster/recipe.py")

    def config(self, reference):
        return dataclasses.replace(reference, **self.changes)


def reference_config(*, epochs, batch_size, base_lr, milestones, crop, threads, data=None):
    """The ablation's reference recipe, as the cluster declares it: the demo preset (Kaiming init, the paper's
    inputs, weight decay on the weights only) on one replica, at `base_lr` as it is (not scaled: one replica of
    `batch_size`), no warmup, lr / 10 after each of `milestones` epochs."""
    return preset_config("demo", data=None if data is None else str(data), epochs=epochs, batch_size=batch_size,
                         base_lr=base_lr, lr_scaling="none", warmup_epochs=0, lr_schedule="milestones",
                         lr_milestones=tuple(milestones), crop=crop, threads=threads, workers=1, min_workers=1,
                         gpus_per_worker=0.0)


@dataclass
class EpochRecord:
    epoch: int  # 1-based
    train_loss: float
    train_error: float  # top-1 on the augmented batches as they were trained on (the paper's Figure 1 measure)
    val_top1_error: float
    val_top5_error: float
    lr: float
    seconds: float  # wall time of the epoch's training and validation
    train_seconds: float = 0.0  # of which training (experiments/ablation/study.py --plan scales these to the full run)
    train_first_batch_seconds: float = 0.0  # of which set_epoch and the first batch: the pipeline build, a fixed cost
    val_first_batch_seconds: float = 0.0  # the same for the validation pass


@dataclass
class RunResult:
    variant: str
    seed: int
    budget: dict
    steps_per_epoch: int
    history: list = field(default_factory=list)  # [EpochRecord]
    final_train_error: float = float("nan")  # clean: centre crop, dropout off, every training image once
    seconds: float = 0.0
    # Per image after the last epoch, '1' correct (top-1) / '0' wrong, by sample index: the paired tests compare
    # variants on the same images (experiments/ablation/report.py).
    val_correct: str = ""
    train_correct: str = ""  # clean, as final_train_error
    diverged: bool = False  # the loss went non-finite: stopped there, errors as measured then
    commit: str = ""  # the repository's commit the run was made at ('+dirty' when the tree had changes)
    load_average: float = float("nan")  # the machine's 1-minute load at the start: its timings are read beside it

    @property
    def final_val_error(self):
        return self.history[-1].val_top1_error

    def epochs_to(self, train_error):
        """First epoch whose training error (as trained) is at most `train_error`; None if never reached."""
        return next((h.epoch for h in self.history if h.train_error <= train_error), None)

    def to_json(self):
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, d):
        return cls(**{**d, "history": [EpochRecord(**h) for h in d["history"]]})


@dataclass(frozen=True)
class Budgets:
    """The references of the ablation variants and of Figure 1 (TrainConfigs): Figure 1's runs stop at 25% training
    error, so its epochs are only a cap, and the sweep keeps the budget it ran with when the variants' grows
    (experiments/ablation/study.py)."""
    variants: TrainConfig
    figure1: TrainConfig = None  # None: the variants' reference

    def of(self, variant):
        return self.figure1 if variant.stop_at and self.figure1 else self.variants


class FirstBatchTimer:
    """A loader that notes how long its first batch took (the epoch's DALI pipeline build and index parse, which do
    not grow with the set), so --plan can tell a fixed per-epoch cost from a per-image one."""

    def __init__(self, loader):
        self.loader, self.first, self.setup = loader, 0.0, 0.0

    def __len__(self):
        return len(self.loader)

    def __iter__(self):
        t0 = time.time()
        for k, batch in enumerate(self.loader):
            if k == 0:
                self.first = time.time() - t0
            yield batch


def per_image_correct(model, loader):
    """Top-1 correctness of every image of `loader` as a '0'/'1' string indexed by sample index (the loader's third
    output). cluster.loop.evaluate gives only the totals; this pass is one more forward over a small set."""
    model.eval()
    hits = {}
    with torch.no_grad():
        for images, labels, idx in loader:
            right = model(images).argmax(1) == labels
            hits.update(zip(idx.tolist(), right.tolist()))
    if sorted(hits) != list(range(len(hits))):
        raise RuntimeError(f"{loader.split}: sample indexes are not 0..{len(hits) - 1}; per-image results need them")
    return "".join("1" if hits[i] else "0" for i in range(len(hits)))


def current_commit():
    """HEAD's hash, '+dirty' when the work tree differs from it; '' outside a git checkout."""
    def git(*a):
        return subprocess.run(["git", *a], capture_output=True, text=True, timeout=30).stdout.strip()
    try:
        head = git("rev-parse", "HEAD")
        return head + ("+dirty" if head and git("status", "--porcelain", "--untracked-files=no") else "")
    except (OSError, subprocess.SubprocessError):
        return ""


def train_variant(cfg, seed, *, variant, stop_at=0.0, budget=None, log=print):
    """Train the run `cfg` (a TrainConfig: a variant's recipe) with `seed` (weights, data order, augmentation,
    dropout) in this process, with the cluster's loaders, model, optimizer, schedule and step; a RunResult.
    variant: its name in the result; budget: the record of its budget the result keeps."""
    cfg = dataclasses.replace(cfg, seed=seed)
    torch.manual_seed(seed)
    torch.set_num_threads(cfg.threads)
    device = torch.device("cpu")
    common = loader_settings(cfg, 0, 1, device)
    train_loader = make_loader(cfg.data, "train", cfg.batch_size, train=True, **training_augmentation(cfg), **common)
    val_loader = make_loader(cfg.data, "val", cfg.batch_size, train=False, **common)
    cfg = dataclasses.replace(cfg, num_classes=len(train_loader.manifest["classes"]))
    model = build_model(cfg).place("cpu", "cpu")  # the split form on one device, as a CPU worker of the cluster
    _, lr = cfg.recipe(1)
    opt = make_optimizer(model, lr, cfg.momentum, cfg.wd, decay_biases=cfg.decay_biases)
    schedule = LrSchedule.from_config(cfg, steps_per_epoch=len(train_loader))
    result = RunResult(variant, seed, budget or {}, len(train_loader), commit=current_commit(),
                       load_average=os.getloadavg()[0])
    start = time.time()
    for epoch in range(cfg.epochs):
        t0 = time.time()
        train_loader.set_epoch(epoch)  # builds the epoch's pipeline and its first batch: part of the fixed cost
        timed_train, timed_val = FirstBatchTimer(train_loader), FirstBatchTimer(val_loader)
        timed_train.setup = time.time() - t0
        m = train_one_epoch(model, opt, timed_train, epoch=epoch, schedule=schedule, peak_lr=lr,
                            device=device, epochs=cfg.epochs)
        t_train = time.time() - t0
        top1, top5, _ = evaluate(model, timed_val, device)
        schedule.end_epoch(epoch, top1)
        rec = EpochRecord(epoch + 1, m["train_loss"], m["train_top1_error"], top1, top5,
                          schedule.lr(lr, epoch), time.time() - t0, t_train, timed_train.setup + timed_train.first,
                          timed_val.first)
        result.history.append(rec)
        log(f"  {variant} seed {seed} epoch {rec.epoch}/{cfg.epochs}: loss {rec.train_loss:.3f}, "
            f"train error {rec.train_error:.3f}, val top-1 error {top1:.3f} ({rec.seconds:.0f}s)")
        result.diverged = not math.isfinite(rec.train_loss)
        if result.diverged or (stop_at and rec.train_error <= stop_at):
            break  # a diverged run learns nothing more; a Figure 1 run has measured what it is for
    clean_train = make_loader(cfg.data, "train", cfg.batch_size, train=False, **common)
    result.final_train_error = evaluate(model, clean_train, device)[0]
    result.val_correct = per_image_correct(model, val_loader)
    result.train_correct = per_image_correct(model, clean_train)
    result.seconds = time.time() - start
    return result
