"""The training step, the evaluation and the learning-rate schedule, without Ray: the Ray workers (cluster/worker.py)
and the single-process ablations (experiments/ablation/) run this same code. Sums across data-parallel ranks go through
torch.distributed when a process group is up, and are local otherwise.
"""
import math
import time
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F

from cluster.chance import ChanceLevel
from cluster.recipe import MAX_LR_DECAYS


@dataclass
class LrSchedule:
    """lr at every step: a linear ramp (the warmup) from base_lr to the peak, then the peak divided by 10 per decay.

    The peak is passed in, not stored as a setting, because it follows the number of replicas (cluster/recipe.py),
    which changes when an elastic run restarts with another world size or a run is resumed with another --workers.
    start() is told the peak at every (re)start: when it is higher than the one the run trained at, the rate ramps
    again, from where it was to the new one, as the launch rule warms up to a scaled rate (Goyal et al.) instead of
    jumping to it. state_dict keeps how far the decay has gone, that peak and the current ramp.

    plateau: torch's ReduceLROnPlateau rule (mode min, relative threshold 1e-4): `patience` epochs in a row without
    improvement are allowed and the next one divides the rate by 10 (patience 2: the third), at most MAX_LR_DECAYS
    times, never counted during a ramp, nor before the error first leaves chance (cluster/chance.py; known when
    num_classes is set and end_epoch is told the validation set's size). step: a decay every `step_size` epochs.
    milestones: a decay after each epoch count in `milestones`, as torch's MultiStepLR (the ablation's schedule:
    experiments/ablation/).

    warmup_steps: the run's first steps (counted from epoch 0 with steps_per_epoch, which the caller sets) are scaled
    by (step + 1) / warmup_steps, on top of the above: the paper preset's start (benchmarks/init_check.py).
    """
    base_lr: float
    warmup_epochs: int
    schedule: str = "plateau"
    patience: int = 2
    step_size: int = 30
    milestones: tuple = ()
    warmup_steps: int = 0
    steps_per_epoch: int = 0
    decays: int = 0
    best: float = math.inf
    bad_epochs: int = 0
    ramp_from: float | None = None  # the rate a ramp starts at (None: base_lr, the first warmup)
    ramp_start: int = 0  # its first epoch
    ramp_epochs: int | None = None  # its length (None: warmup_epochs)
    peak: float | None = None  # the peak the run last trained at (None: not started)
    num_classes: int = 0  # for the chance rule (0: every epoch counts, torch's rule as it is)
    left_chance: bool = False  # a validation error has been below chance by more than its noise
    epochs_at_chance: int = 0  # epochs past the ramp with the error still at chance

    @classmethod
    def from_config(cls, cfg, steps_per_epoch):
        """The schedule a run's recipe (a cluster.recipe.TrainConfig) declares."""
        return cls(cfg.base_lr, cfg.warmup_epochs, cfg.lr_schedule, cfg.lr_patience, cfg.lr_step_size,
                   tuple(cfg.lr_milestones), warmup_steps=cfg.warmup_steps, steps_per_epoch=steps_per_epoch,
                   num_classes=cfg.num_classes)

    def __post_init__(self):
        if self.ramp_from is None:
            self.ramp_from, self.ramp_epochs = self.base_lr, self.warmup_epochs

    def lr(self, peak, epoch, progress=0.0):
        """The rate for `epoch` (0-based) at `progress` (0..1) through it."""
        target = self._after_ramp(peak, epoch)
        if epoch < self._ramp_end():
            done = (epoch - self.ramp_start + progress) / self.ramp_epochs
            target = self.ramp_from + (target - self.ramp_from) * done
        return self._first_steps(epoch, progress) * target

    def _first_steps(self, epoch, progress):
        """The paper preset's start: the first warmup_steps steps' rate ramps from 1/warmup_steps of it."""
        if not self.warmup_steps:
            return 1.0
        step = round((epoch + progress) * self.steps_per_epoch)
        return min(1.0, (step + 1) / self.warmup_steps)

    def _after_ramp(self, peak, epoch):
        if self.schedule == "plateau":
            decays = self.decays
        elif self.schedule == "milestones":
            decays = sum(1 for m in self.milestones if epoch >= m)
        else:
            decays = epoch // self.step_size
        return peak * 0.1 ** decays

    def _ramp_end(self):
        return self.ramp_start + self.ramp_epochs

    def start(self, peak, epoch, ramp_epochs):
        """(Re)start at `epoch` with `peak` (this world size's). Returns what changed, to announce, or None.

        A higher peak than the run trained at ramps from the rate the run had to the new one over `ramp_epochs`
        (inside the first warmup too: it then heads for the new peak from where it is); a lower one applies at once
        (a smaller rate needs no warmup)."""
        old, self.peak = self.peak, peak
        if old is None or math.isclose(old, peak, rel_tol=1e-9):
            return None
        now, target = self.lr(old, epoch), self._after_ramp(peak, epoch)
        if target > now * (1 + 1e-9) and ramp_epochs > 0:
            self.ramp_from, self.ramp_start, self.ramp_epochs = now, epoch, ramp_epochs
            return (f"peak lr {old:g} -> {peak:g} (another world size): warming up from {now:.3g} to {target:.3g} "
                    f"over epochs {epoch + 1}-{epoch + ramp_epochs}")
        self.ramp_start, self.ramp_epochs = epoch, 0  # any ramp ends here
        return f"peak lr {old:g} -> {peak:g} (another world size): the rate goes from {now:.3g} to {target:.3g}"

    def end_epoch(self, epoch, val_error, val_images=0):
        """Record epoch `epoch`'s validation error (on `val_images` images); returns True when the rate was just
        divided by 10."""
        if epoch + 1 <= self._ramp_end():
            return False
        if self.num_classes and val_images and not self.left_chance:
            self.left_chance = ChanceLevel(self.num_classes, val_images).left(val_error)
            if not self.left_chance:  # never improved: not a plateau, and no decay is spent on it
                self.epochs_at_chance += 1
                return False
        if self.schedule != "plateau":
            return False
        if val_error < self.best * (1 - 1e-4):
            self.best, self.bad_epochs = val_error, 0
        else:
            self.bad_epochs += 1
        if self.bad_epochs > self.patience and self.decays < MAX_LR_DECAYS:
            self.decays, self.bad_epochs = self.decays + 1, 0
            return True
        return False

    STATE = ("decays", "best", "bad_epochs", "ramp_from", "ramp_start", "ramp_epochs", "peak", "left_chance",
             "epochs_at_chance")

    def state_dict(self):
        return {k: getattr(self, k) for k in self.STATE}

    def load_state_dict(self, state):
        # a checkpoint from before the ramp was stored keeps the first warmup and no peak (no re-warm); one from
        # before the chance rule starts it afresh (a run that learns leaves chance at its next epoch)
        for k in self.STATE:
            if k in state:
                setattr(self, k, state[k])


def training_augmentation(cfg):
    """The training loader's augmentation as the run declares it (evaluation loaders take none of it)."""
    return dict(random_resized_crop=cfg.random_resized_crop, crop_flip=cfg.crop_flip, lighting=cfg.lighting)


def loader_settings(cfg, rank, world, device):
    """What every loader of this rank shares (training, --test-only): its shard, the crop, and the run's declared
    inputs and preprocessing."""
    cuda = device.type == "cuda"
    # channels_last on a GPU: the loader's NHWC memory is what the model wants, so the loop's conversion is free
    return dict(shard_id=rank, num_shards=world, crop=cfg.crop, seed=cfg.seed, normalize=cfg.normalize,
                central_square=cfg.central_square, device="cuda" if cuda else "cpu",
                device_id=device.index if cuda else None, num_threads=cfg.threads, channels_last=cuda,
                prefetch=cfg.prefetch)


def ten_crop_batch(batch_size):
    """Images per batch of the ten-patch evaluation: each image is ten patches, so a tenth of the training batch
    keeps the patches per forward pass (and the memory) where training has them."""
    return max(1, batch_size // 10)


def make_optimizer(model, lr, momentum, wd, *, decay_biases, fused=False):
    """SGD with momentum. decay_biases=False decays the weights only, as cuda-convnet (the paper's code) did: its
    layers had a weight decay for weights and none for biases. fused=True: torch's fused kernel (the same update,
    fewer launches; every parameter must be on one kind of device), which the GPU check compares with the default."""
    decayed = [p for p in model.parameters() if decay_biases or p.dim() > 1]
    kept = [p for p in model.parameters() if not (decay_biases or p.dim() > 1)]
    groups = [{"params": decayed, "weight_decay": wd}] + ([{"params": kept, "weight_decay": 0.0}] if kept else [])
    return torch.optim.SGD(groups, lr=lr, momentum=momentum, **({"fused": True} if fused else {}))


def set_lr(opt, lr):
    for group in opt.param_groups:
        group["lr"] = lr


def all_sum(values, device):
    """Sum a list of numbers over every rank (one collective, one host sync); local without a process group."""
    t = torch.tensor(values, dtype=torch.float64, device=device)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(t)
    return t.tolist()


def autocast(amp, device):
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp and device.type == "cuda")


def train_one_epoch(model, opt, loader, *, epoch, schedule, peak_lr, device, amp=False, replicas=1, log=None,
                    print_freq=10, epochs=None, before_step=None):
    """One pass over `loader`. `model` is what gets called (the DDP wrapper in a cluster). Returns the epoch's
    train loss and top-1 error on the augmented batches (summed over ranks) and img/s over all replicas."""
    model.train()
    # Summed on the device: a .item() every step would make the host wait for the GPU at every step.
    loss_sum = torch.zeros((), device=device)
    wrong = torch.zeros((), dtype=torch.int64, device=device)
    seen, start, steps = 0, time.time(), len(loader)
    for step, (images, labels, _) in enumerate(loader):
        if before_step is not None:
            before_step(epoch, step)
        set_lr(opt, schedule.lr(peak_lr, epoch, step / steps))
        # On a GPU the loader hands both over on this stream already, in channels_last: these are then no-ops.
        # No host sync per step (tests/test_hot_loop_syncs.py): sums stay on the device until the print interval.
        images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        if device.type == "cuda":
            images = images.contiguous(memory_format=torch.channels_last)
        with autocast(amp, device):
            logits = model(images)
            loss = F.cross_entropy(logits, labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        loss_sum += loss.detach().float() * len(labels)
        wrong += (logits.detach().argmax(1) != labels).sum()
        seen += len(labels)
        if log and ((step + 1) % print_freq == 0 or step + 1 == steps):
            elapsed = time.time() - start
            log(f"epoch {epoch + 1}/{epochs or '?'} step {step + 1}/{steps} loss {loss_sum.item() / seen:.4f} "
                f"{seen * replicas / elapsed:.1f} img/s lr {opt.param_groups[0]['lr']:.2e} "
                f"eta {(steps - step - 1) * elapsed / (step + 1):.0f}s")
    total_loss, total_wrong, total_seen = all_sum([loss_sum.item(), wrong.item(), seen], device)
    total_seen = max(total_seen, 1)
    return {"train_loss": total_loss / total_seen, "train_top1_error": total_wrong / total_seen,
            "images_per_second": total_seen / (time.time() - start)}


@torch.no_grad()
def evaluate(model, loader, device, *, amp=False, ten_crop=False, progress=None):
    """(top-1 error, top-5 error, images) over this rank's shard, summed over ranks: every image counted once.
    With ten_crop the loader yields (N, 10, 3, H, W) and the softmax of the ten patches is averaged (the paper).
    progress: wraps the loader to show how far it is (cluster/progress.py)."""
    model.eval()
    top1 = torch.zeros((), dtype=torch.int64, device=device)  # on the device: no per-batch sync
    top5 = torch.zeros((), dtype=torch.int64, device=device)
    count = 0
    for images, labels, _ in (progress(loader) if progress else loader):
        n, labels = images.shape[0], labels.to(device)
        images = images.to(device).flatten(0, 1) if ten_crop else images.to(device)
        if device.type == "cuda":
            images = images.contiguous(memory_format=torch.channels_last)
        with autocast(amp, device):
            logits = model(images).float()
        probs = F.softmax(logits, dim=1).view(n, 10, -1).mean(1) if ten_crop else logits
        top = probs.topk(min(5, probs.shape[1]), dim=1).indices
        top1 += (top[:, 0] == labels).sum()
        top5 += (top == labels[:, None]).any(1).sum()
        count += len(labels)
    top1, top5, count = all_sum([top1.item(), top5.item(), count], device)
    count = max(count, 1)
    return 1 - top1 / count, 1 - top5 / count, int(count)
