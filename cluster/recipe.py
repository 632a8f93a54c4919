"""One typed description of a training run: what the launcher resolves, writes to config.json, sends to every
worker, and reads back on --resume. Also the recipe rules that depend on the number of replicas.

The paper trained one replica with batch 128 at lr 0.01. With N replicas of b images the global batch is N*b, so the
rate follows it linearly (Goyal et al. 2017, "Accurate, Large Minibatch SGD"): lr = base_lr * N*b / 128, reached
by a linear warmup from base_lr over the first warmup epochs. Workers apply the rule to the world size they actually
have, so an elastic run that shrinks or grows (or a --resume with another --workers) re-applies it at the restart,
warming up again to a higher peak (cluster/loop.py LrSchedule.start).
"""
import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

CONFIG_FILE = "config.json"
REFERENCE_BATCH = 128  # the paper's batch, for which base_lr is the rate
DEFAULT_WARMUP_EPOCHS = 5  # Goyal et al.: 5 epochs of linear warmup when the scaled rate is larger
MAX_LR_DECAYS = 3  # the paper divided the rate by 10 three times
GRAD_COMPRESSIONS = ("none", "bf16", "fp16")  # --grad-compression: the all-reduce's dtype (cluster/grad_compression.py)
INPUTS = {"paper": "0-255 minus the per-channel mean (the paper's)", "std": "minus the mean, divided by the std"}


@dataclass
class Preset:
    """Defaults a preset fills in for flags the user did not give."""
    batch_size: int
    epochs: int
    crop: int
    init: str
    lr_patience: int
    normalize: str  # input normalisation (pipeline/stats.py)
    central_square: bool  # crops and ten patches from the central square of the image (the paper), or anywhere
    decay_biases: bool  # weight decay on the biases too (False: weights only, as cuda-convnet)
    warmup_steps: int  # the first steps' lr ramps up from 1/N (benchmarks/init_check.py: the paper init needs it)
    lr: float  # for a global batch of 128


# paper: section 5 of the paper, with the paper's inputs and preprocessing, plus a 50-step warmup: on the 10-class
# embedded set the paper's init diverged at lr 0.01 without one (benchmarks/init_check.py; docs/BENCHMARKS.md).
# demo: learns the embedded demo set within minutes on a laptop: crop 112 of the whole image (an adaptive pool keeps
# fc6's 6x6), Kaiming fan-out init on the paper's inputs (its logits depend on the image from the first step; the
# paper's N(0, 0.01) and biases of 1 make them nearly constant), lr 0.0025 per 128 images (on these inputs 0.01
# jumped back to chance by step 10 on every seed and 0.005 rebounded in epoch 2; docs/BENCHMARKS.md), batch 32, and
# a patience longer than the run (300 noisy validation images cut the rate after epoch 5 once).
PRESETS = {
    "paper": Preset(batch_size=128, epochs=90, crop=224, init="paper", lr_patience=2, normalize="paper",
                    central_square=True, decay_biases=False, warmup_steps=50, lr=0.01),
    "demo": Preset(batch_size=32, epochs=10, crop=112, init="kaiming", lr_patience=10, normalize="paper",
                   central_square=False, decay_biases=False, warmup_steps=0, lr=0.0025),
}


@dataclass
class TrainConfig:
    """Every resolved setting the workers use; config.json is this, as JSON."""
    # data and model
    data: str
    num_classes: int
    preset: str
    crop: int
    normalize: str  # "paper": 0-255 minus the per-channel mean; "std": also / std (pipeline/stats.py)
    central_square: bool
    init: str
    activation: str
    lrn: bool
    overlapping_pool: bool
    dropout: float
    random_resized_crop: bool
    # recipe (per replica; see recipe() for what follows from the world size)
    batch_size: int
    epochs: int
    base_lr: float
    lr_scaling: str
    warmup_epochs: int
    warmup_steps: int
    momentum: float
    wd: float
    decay_biases: bool
    lr_schedule: str
    lr_patience: int
    lr_step_size: int
    seed: int
    # replicas and devices
    workers: int
    min_workers: int
    resize_check_s: float
    gpus_per_worker: float
    cpus_per_worker: float
    column1_device: str
    backend: str
    threads: int
    amp: bool
    compile: bool
    # the run
    name: str
    output_dir: str
    storage: str
    max_failures: int
    wait_for_resources: bool
    print_freq: int
    address: str | None = None
    grad_compression: str = "none"  # dtype of the gradients all-reduced between replicas (cluster/grad_compression.py)
    # derived for --workers, written for people (workers recompute them for the world they get)
    global_batch_size: int = 0
    lr: float = 0.0

    @property
    def use_gpu(self):
        return self.gpus_per_worker > 0

    @property
    def run_dir(self):
        return Path(self.output_dir) / self.name

    def recipe(self, replicas):
        """(global batch, peak lr) for `replicas` data-parallel replicas."""
        global_batch = replicas * self.batch_size
        return global_batch, scaled_lr(self.base_lr, global_batch, self.lr_scaling)

    def with_derived(self):
        """A copy with global_batch_size and lr filled in for --workers replicas."""
        global_batch, lr = self.recipe(self.workers)
        return dataclasses.replace(self, global_batch_size=global_batch, lr=lr)

    def save(self, run_dir):
        (Path(run_dir) / CONFIG_FILE).write_text(json.dumps(dataclasses.asdict(self), indent=1) + "\n")

    @classmethod
    def load(cls, run_dir):
        path = Path(run_dir) / CONFIG_FILE
        saved = json.loads(path.read_text())
        saved.pop("inject_failure", None)  # a test hook that earlier versions kept here
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(saved) - names)
        if unknown:
            raise ValueError(f"{path}: unknown settings {unknown}: written by another version of this code?")
        return cls(**saved)


def scaled_lr(base_lr, global_batch, scaling):
    if scaling == "none":
        return base_lr
    if scaling == "linear":
        return base_lr * global_batch / REFERENCE_BATCH
    raise ValueError(f"lr scaling must be 'linear' or 'none', got {scaling!r}")


def default_warmup_epochs(base_lr, peak_lr):
    """Warm up only when the scaled rate is larger than the paper's (a large global batch)."""
    return DEFAULT_WARMUP_EPOCHS if peak_lr > base_lr * (1 + 1e-9) else 0


def describe(cfg):
    """The one-paragraph recipe the launcher prints at start."""
    rule = (f"{cfg.base_lr:g} x {cfg.global_batch_size}/{REFERENCE_BATCH}" if cfg.lr_scaling == "linear"
            else f"{cfg.base_lr:g}, not scaled")
    warm = f", warmup {cfg.warmup_epochs} epochs from {cfg.base_lr:g}" if cfg.warmup_epochs else ", no warmup"
    warm += f", the first {cfg.warmup_steps} steps ramped up from 1/{cfg.warmup_steps}" if cfg.warmup_steps else ""
    decay = (f"lr / 10 when {cfg.lr_patience + 1} epochs in a row do not improve val error (patience "
             f"{cfg.lr_patience}; at most {MAX_LR_DECAYS} times)"
             if cfg.lr_schedule == "plateau" else f"lr / 10 every {cfg.lr_step_size} epochs")
    replicas = f"{cfg.workers}" if cfg.min_workers == cfg.workers else f"{cfg.min_workers}-{cfg.workers}"
    return (f"preset {cfg.preset}: {replicas} replica(s) x batch {cfg.batch_size} = global batch "
            f"{cfg.global_batch_size}; lr {cfg.lr:g} ({rule}){warm}; {decay}; {cfg.epochs} epochs, crop {cfg.crop}"
            f"{' of the central square' if cfg.central_square else ''}, {cfg.init} init; inputs: "
            f"{INPUTS[cfg.normalize]}; weight decay {cfg.wd:g} on "
            f"{'weights and biases' if cfg.decay_biases else 'weights only'}")
