"""One ablation run: a variant of the paper's recipe trained single-process (no Ray) on the DALI CPU loader, with the
training step and evaluation the cluster runs (cluster/loop.py), and its per-epoch history.

The variants switch one technique off at a time (model/alexnet.py's activation, lrn, overlapping_pool, dropout; the
loader's crop_flip and lighting; the optimizer's weight decay); everything else, seeds included, stays equal.
"""
import dataclasses
import math
import os
import subprocess
import time
from dataclasses import dataclass, field

import torch

from cluster.loop import evaluate, make_optimizer, train_one_epoch
from model import AlexNet
from pipeline.loader import make_loader


@dataclass(frozen=True)
class Variant:
    """One row of the ablation: the full recipe with (at most) one switch changed."""
    name: str
    label: str
    activation: str = "relu"
    lrn: bool = True
    overlapping_pool: bool = True
    dropout: float = 0.5
    crop_flip: bool = True  # random crop + horizontal flip (the paper's translations and reflections)
    lighting: float = 0.1  # PCA lighting noise strength; 0 turns it off
    wd: float = 5e-4
    lr: float = 0.0  # its own peak learning rate; 0: the budget's (study.py's lr rule sets it for Figure 1)
    stop_at: float = 0.0  # stop once the training error (as trained) is at or below this; 0: train the whole budget


@dataclass(frozen=True)
class Budget:
    """What every variant gets alike."""
    epochs: int
    batch_size: int = 32
    # The paper's 0.01 per 128 images, at 32. Why not 0.01 itself, as an earlier budget had it: docs/BENCHMARKS.md,
    # "The ablation's budget".
    lr: float = 0.0025
    momentum: float = 0.9
    lr_decay_epoch: int = 0  # lr / 10 from this 0-based epoch on (0: never)
    # lr / 100 from this one on (0: never), the paper's "reduced three times" in short: the second plateau's drop.
    # Added after runs were saved without it: saved_runs.same_run reads a missing field as its default.
    lr_decay2_epoch: int = 0
    crop: int = 112
    init: str = "kaiming"  # one of model.INITS: the demo preset's
    normalize: str = "paper"  # input normalisation (pipeline/stats.py): the paper's, as both presets
    decay_biases: bool = False  # weight decay on the weights only, as both presets
    threads: int = 2


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
    """The ablation variants' budget and Figure 1's: its runs stop at 25% training error, so its epochs are only a
    cap, and the sweep keeps the budget it ran with when the variants' grows (experiments/ablation/study.py)."""
    variants: Budget
    figure1: Budget = None  # None: the variants' budget

    def of(self, variant):
        return self.figure1 if variant.stop_at and self.figure1 else self.variants


@dataclass(frozen=True)
class StepDecay:
    """The lr schedule of an ablation run: the peak, / 10 from 0-based epoch `at` on, / 100 from `at2` on (0: never).
    Duck-types cluster.loop.LrSchedule.lr for train_one_epoch."""
    at: int
    at2: int = 0

    def lr(self, peak, epoch, progress=0.0):
        drops = sum(1 for e in (self.at, self.at2) if e and epoch >= e)
        return peak * 0.1 ** drops


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


def build_model(variant, budget, num_classes):
    # The split form on one device, as a CPU worker of the cluster runs it.
    model = AlexNet(num_classes, activation=variant.activation, lrn=variant.lrn,
                    overlapping_pool=variant.overlapping_pool, dropout=variant.dropout, init=budget.init)
    return model.place("cpu", "cpu")


def train_variant(variant, budget, data_dir, seed, *, log=print):
    """Train `variant` for budget.epochs with `seed` (weights, data order, augmentation, dropout); a RunResult."""
    torch.manual_seed(seed)
    torch.set_num_threads(budget.threads)
    device = torch.device("cpu")
    common = dict(crop=budget.crop, seed=seed, num_threads=budget.threads, device="cpu", normalize=budget.normalize)
    train_loader = make_loader(data_dir, "train", budget.batch_size, train=True, crop_flip=variant.crop_flip,
                               lighting=variant.lighting, **common)
    val_loader = make_loader(data_dir, "val", budget.batch_size, train=False, **common)
    model = build_model(variant, budget, len(train_loader.manifest["classes"]))
    lr = variant.lr or budget.lr
    opt = make_optimizer(model, lr, budget.momentum, variant.wd, decay_biases=budget.decay_biases)
    schedule = StepDecay(budget.lr_decay_epoch, budget.lr_decay2_epoch)
    result = RunResult(variant.name, seed, dataclasses.asdict(budget), len(train_loader), commit=current_commit(),
                       load_average=os.getloadavg()[0])
    start = time.time()
    for epoch in range(budget.epochs):
        t0 = time.time()
        train_loader.set_epoch(epoch)  # builds the epoch's pipeline and its first batch: part of the fixed cost
        timed_train, timed_val = FirstBatchTimer(train_loader), FirstBatchTimer(val_loader)
        timed_train.setup = time.time() - t0
        m = train_one_epoch(model, opt, timed_train, epoch=epoch, schedule=schedule, peak_lr=lr,
                            device=device, epochs=budget.epochs)
        t_train = time.time() - t0
        top1, top5, _ = evaluate(model, timed_val, device)
        rec = EpochRecord(epoch + 1, m["train_loss"], m["train_top1_error"], top1, top5,
                          schedule.lr(lr, epoch), time.time() - t0, t_train, timed_train.setup + timed_train.first,
                          timed_val.first)
        result.history.append(rec)
        log(f"  {variant.name} seed {seed} epoch {rec.epoch}/{budget.epochs}: loss {rec.train_loss:.3f}, "
            f"train error {rec.train_error:.3f}, val top-1 error {top1:.3f} ({rec.seconds:.0f}s)")
        result.diverged = not math.isfinite(rec.train_loss)
        if result.diverged or (variant.stop_at and rec.train_error <= variant.stop_at):
            break  # a diverged run learns nothing more; a Figure 1 run has measured what it is for
    clean_train = make_loader(data_dir, "train", budget.batch_size, train=False, **common)
    result.final_train_error = evaluate(model, clean_train, device)[0]
    result.val_correct = per_image_correct(model, val_loader)
    result.train_correct = per_image_correct(model, clean_train)
    result.seconds = time.time() - start
    return result
