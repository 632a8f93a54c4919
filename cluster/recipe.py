"""Every training setting, declared once: TrainConfig's fields. Each carries its flag, help, --help group, preset
values and --resume rule (cluster/setting.py); launch.py's flags, PRESETS, config.json and the --resume check are
derived from them. Adding a setting is one field here (docs/DEVELOPING.md), plus the code that uses it.

The recipe rules that depend on the number of replicas: the paper trained one replica with batch 128 at lr 0.01.
With N replicas of b images the global batch is N*b, so the rate follows it linearly (Goyal et al. 2017, "Accurate,
Large Minibatch SGD"): lr = base_lr * N*b / 128, reached by a linear warmup from base_lr over the first warmup
epochs. Workers apply the rule to the world size they actually have, so an elastic run that shrinks or grows (or a
--resume with another --replicas) re-applies it at the restart, warming up again to a higher peak
(cluster/loop.py LrSchedule.start).
"""
import argparse
import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

from cluster.setting import derived, from_saved, make_presets, setting

CONFIG_FILE = "config.json"
DEFAULT_DATA = Path("data/shards")
REFERENCE_BATCH = 128  # the paper's batch, for which base_lr is the rate
DEFAULT_WARMUP_EPOCHS = 5  # Goyal et al.: 5 epochs of linear warmup when the scaled rate is larger
MAX_LR_DECAYS = 3  # the paper divided the rate by 10 three times
GRAD_COMPRESSIONS = ("none", "bf16", "fp16")  # --grad-compression: the all-reduce's dtype (cluster/grad_compression.py)
INPUTS = {"paper": "0-255 minus the per-channel mean (the paper's)", "std": "minus the mean, divided by the std"}

DATA, CLUSTER, RECIPE = "data", "replicas and the Ray cluster", "recipe"
MODEL, SPEED, RUN = "model and augmentation", "speed", "run, outputs and checkpoints"


def epoch_list(text):
    """--lr-milestones '90,102': the epochs after which the rate is divided by 10 once more (torch's MultiStepLR
    milestones: epoch indices from 0, so 90 is the 91st epoch)."""
    try:
        epochs = tuple(int(e) for e in text.split(",") if e.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a comma-separated list of epochs: {text!r}") from None
    if any(e < 1 for e in epochs) or list(epochs) != sorted(set(epochs)):
        raise argparse.ArgumentTypeError(f"epochs must be increasing and >= 1, got {text!r}")
    return epochs


# The presets' values and why they are what they are: docs/TRAINING.md, "Presets" (the demo's rate and init were
# chosen by measurement: docs/BENCHMARKS.md).
@dataclass
class TrainConfig:
    """Every resolved setting the workers use; config.json is this, as JSON. Fields in --help's order."""
    data: str = setting(None, "shard folder from pipeline/build_shards.py, or s3://bucket/prefix", "--data",
                        "--data-path", group=DATA, parse=str,  # str: Path("s3://b/p") would fold the "//"
                        default_text=f"{DEFAULT_DATA}; the demo set is built there if missing")
    preset: str = setting(None, "defaults for the flags marked 'from --preset' that you leave out", group=DATA,
                          choices=("demo", "paper"),
                          default_text="demo on the embedded demo set, paper otherwise")
    num_classes: int = setting(None, "classes in the shards' manifest", group=DATA, no_flag=True)
    # replicas and the Ray cluster
    workers: int = setting(4, "data-parallel AlexNet replicas, one Ray worker each (--workers: the same flag)",
                           "--replicas", "--workers", group=CLUSTER, metavar="N", resumable=True)
    min_workers: int = setting(None, "elastic: keep training with as few as this many replicas when nodes are lost, "
                               "and grow back to --replicas when they return", "--min-replicas", "--min-workers",
                               group=CLUSTER, metavar="M", default_text="--replicas, not elastic", resumable=True)
    resize_check_s: float = setting(60.0, "elastic runs: seconds between looks for room to grow back to --replicas; "
                                    "growing restarts the replicas from the latest checkpoint", group=CLUSTER,
                                    resumable=True)
    gpus_per_worker: float = setting(None, "GPUs per replica: 2 puts the columns on two GPUs, 1 both on one, a "
                                     "fraction such as 0.5 lets replicas share a GPU (with gloo)", group=CLUSTER,
                                     default_text="2 with GPUs, 0 without", resumable=True)
    column1_device: str = setting("gpu", "where column 1 runs: on the replica's second GPU (or its only one), or on "
                                  "the CPU to cross devices on a one-GPU node (slow)", group=CLUSTER,
                                  choices=("gpu", "cpu"), resumable=True)
    backend: str = setting(None, "torch.distributed backend between replicas", group=CLUSTER, choices=("nccl", "gloo"),
                           default_text="nccl with whole GPUs, gloo otherwise", resumable=True)
    cpus_per_worker: float = setting(None, "CPUs reserved per replica, fractions allowed", group=CLUSTER,
                                     default_text="the cluster's CPUs / workers, at most 8", resumable=True)
    address: str = setting(None, "an existing Ray cluster: auto, HOST:6379 or ray://HOST:10001", group=CLUSTER,
                           default_text="$RAY_ADDRESS, else a new local cluster", resumable=True, absent=None)
    # recipe (per replica; see recipe() for what follows from the world size)
    batch_size: int = setting(None, "images per replica per step", "-b", "--batch-size", group=RECIPE,
                              presets={"paper": 128, "demo": 32})
    epochs: int = setting(None, "epochs to train", group=RECIPE, presets={"paper": 90, "demo": 10}, resumable=True)
    base_lr: float = setting(None, "learning rate for a global batch of 128, scaled with the global batch", "--lr",
                             group=RECIPE, metavar="LR", presets={"paper": 0.01, "demo": 0.0025})
    lr_scaling: str = setting("linear", "linear: lr x global batch / 128; none: --lr as it is", group=RECIPE,
                              choices=("linear", "none"))
    warmup_epochs: int = setting(None, "epochs of linear warmup from --lr to the scaled rate", "--warmup-epochs",
                                 "--lr-warmup-epochs", group=RECIPE,
                                 default_text=f"{DEFAULT_WARMUP_EPOCHS} when the scaled rate is larger, else 0")
    warmup_steps: int = setting(None, "the first N steps' lr ramps linearly from 1/N of it", group=RECIPE,
                                presets={"paper": 50, "demo": 0})
    momentum: float = setting(0.9, "SGD momentum", group=RECIPE)
    wd: float = setting(5e-4, "weight decay", "--wd", "--weight-decay", group=RECIPE)
    decay_biases: bool = setting(None, "weight decay on the biases too (False: weights only, as cuda-convnet)",
                                 group=RECIPE, no_flag=True, presets={"paper": False, "demo": False})
    lr_schedule: str = setting("plateau", "plateau: lr / 10 when val error stops improving, at most 3 times, not "
                               "during warmup; step: every --lr-step-size epochs; milestones: at each of "
                               "--lr-milestones", group=RECIPE, choices=("plateau", "step", "milestones"))
    lr_patience: int = setting(None, "epochs in a row without improvement allowed; the next one divides lr by 10, as "
                               "in torch's ReduceLROnPlateau", group=RECIPE, presets={"paper": 2, "demo": 10})
    lr_step_size: int = setting(30, "epochs per lr / 10 with --lr-schedule step", group=RECIPE)
    lr_milestones: tuple = setting((), "with --lr-schedule milestones: lr / 10 after each of these epochs, as torch's "
                                   "MultiStepLR counts them (90,102: from the 91st and the 103rd)", group=RECIPE,
                                   parse=epoch_list, metavar="E1,E2", absent=())
    crop: int = setting(None, "training/eval crop size", group=RECIPE, presets={"paper": 224, "demo": 112})
    # model and augmentation
    init: str = setting(None, "weight init", group=MODEL, choices=("paper", "kaiming"),
                        presets={"paper": "paper", "demo": "kaiming"})
    normalize: str = setting(None, "input normalisation: paper = 0-255 pixels minus the training set's per-channel "
                             "mean, as the paper trained; std = also divided by the per-channel std", group=MODEL,
                             choices=("paper", "std"), presets={"paper": "paper", "demo": "paper"})
    central_square: bool = setting(None, "crops and ten patches from the central square of the image (the paper), "
                                   "or anywhere; off with --random-resized-crop", group=MODEL, no_flag=True,
                                   presets={"paper": True, "demo": False})
    activation: str = setting("relu", "nonlinearity", group=MODEL, choices=("relu", "tanh"))
    lrn: bool = setting(True, "drop local response normalisation", "--no-lrn", group=MODEL, action="store_false",
                        default_text="LRN on")
    overlapping_pool: bool = setting(True, "pooling z=2, s=2 instead of the paper's overlapping z=3, s=2",
                                     "--no-overlap", group=MODEL, action="store_false", default_text="overlapping")
    dropout: float = setting(0.5, "probability of zeroing each output of fc6 and fc7, one mask per neuron shared by "
                             "both columns (section 4.2)", group=MODEL)
    random_resized_crop: bool = setting(False, "modern random-resized crops instead of the paper's fixed-scale crops",
                                        group=MODEL, action="store_true")
    crop_flip: bool = setting(True, "train on the centre crop, unflipped, instead of the paper's random crops and "
                              "horizontal flips (section 4.1)", "--no-crop-flip", group=MODEL, action="store_false",
                              default_text="random crops and flips", absent=True)
    lighting: float = setting(0.1, "std of the PCA lighting noise (section 4.1); 0 turns it off", group=MODEL,
                              absent=0.1)
    # speed
    amp: bool = setting(False, "bf16 autocast on GPU; not the paper's fp32 recipe", group=SPEED, action="store_true")
    compile: bool = setting(False, "torch.compile each replica", group=SPEED, action="store_true", resumable=True)
    grad_compression: str = setting("none", "dtype of the gradients all-reduced between replicas: bf16/fp16 halve "
                                    "AlexNet's 244 MB per step (DDP's compression hooks; weights and optimizer stay "
                                    "fp32)", group=SPEED, choices=GRAD_COMPRESSIONS, absent="none")
    threads: int = setting(None, "CPU threads per worker for DALI and torch", "-j", "--threads", group=SPEED,
                           default_text="its CPUs", resumable=True)
    prefetch: int = setting(2, "batches each loader prepares ahead (DALI's prefetch queue depth); more smooths a "
                            "decode that varies from batch to batch, at the cost of GPU memory", group=SPEED,
                            resumable=True, absent=2)
    # the run, its outputs and checkpoints
    seed: int = setting(0, "data order and augmentation seed", group=RUN)
    output_dir: str = setting("runs", "where runs go", group=RUN, parse=Path)
    name: str = setting(None, "run name, a folder under --output-dir", group=RUN, default_text="the start time")
    storage: str = setting(None, "where Ray keeps checkpoints: a path every node sees, or a URI such as "
                           "s3://bucket/runs", group=RUN, default_text="--output-dir")
    max_failures: int = setting(0, "restart from the latest checkpoint this many times when a worker or node dies",
                                group=RUN, resumable=True)
    wait_for_resources: bool = setting(False, "wait for the cluster to grow instead of stopping when it is too small",
                                       group=RUN, action="store_true", resumable=True)
    print_freq: int = setting(10, "progress line every N steps", group=RUN, resumable=True)
    # derived for --replicas, written for people (workers recompute them for the world they get)
    global_batch_size: int = derived(0)
    lr: float = derived(0.0)

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
        """A copy with global_batch_size and lr filled in for --replicas replicas."""
        global_batch, lr = self.recipe(self.workers)
        return dataclasses.replace(self, global_batch_size=global_batch, lr=lr)

    def save(self, run_dir):
        (Path(run_dir) / CONFIG_FILE).write_text(json.dumps(dataclasses.asdict(self), indent=1) + "\n")

    @classmethod
    def load(cls, run_dir):
        path = Path(run_dir) / CONFIG_FILE
        saved = json.loads(path.read_text())
        saved.pop("inject_failure", None)  # a test hook that earlier versions kept here
        return from_saved(cls, saved, path)


PRESETS = make_presets(TrainConfig)


def preset_config(preset, **changes):
    """A TrainConfig of the declared defaults with `preset`'s values, then `changes`: a run described without the
    command line (the ablation, the benchmarks). Settings resolved from a cluster (threads, devices) stay None
    unless given."""
    values = dataclasses.asdict(PRESETS[preset])
    return dataclasses.replace(TrainConfig(), preset=preset, **{**values, **changes})


def scaled_lr(base_lr, global_batch, scaling):
    if scaling == "none":
        return base_lr
    if scaling == "linear":
        return base_lr * global_batch / REFERENCE_BATCH
    raise ValueError(f"lr scaling must be 'linear' or 'none', got {scaling!r}")


def default_warmup_epochs(base_lr, peak_lr):
    """Warm up only when the scaled rate is larger than the paper's (a large global batch)."""
    return DEFAULT_WARMUP_EPOCHS if peak_lr > base_lr * (1 + 1e-9) else 0


def describe_decay(cfg):
    if cfg.lr_schedule == "plateau":
        return (f"lr / 10 when {cfg.lr_patience + 1} epochs in a row do not improve val error (patience "
                f"{cfg.lr_patience}; at most {MAX_LR_DECAYS} times)")
    if cfg.lr_schedule == "milestones":
        epochs = ", ".join(map(str, cfg.lr_milestones))
        return f"lr / 10 after epochs {epochs}" if epochs else "lr never decayed"
    return f"lr / 10 every {cfg.lr_step_size} epochs"


def describe(cfg):
    """The one-paragraph recipe the launcher prints at start."""
    rule = (f"{cfg.base_lr:g} x {cfg.global_batch_size}/{REFERENCE_BATCH}" if cfg.lr_scaling == "linear"
            else f"{cfg.base_lr:g}, not scaled")
    warm = f", warmup {cfg.warmup_epochs} epochs from {cfg.base_lr:g}" if cfg.warmup_epochs else ", no warmup"
    warm += f", the first {cfg.warmup_steps} steps ramped up from 1/{cfg.warmup_steps}" if cfg.warmup_steps else ""
    replicas = f"{cfg.workers}" if cfg.min_workers == cfg.workers else f"{cfg.min_workers}-{cfg.workers}"
    augment = "" if cfg.crop_flip and cfg.lighting == 0.1 else (
        f"; augmentation: {'random crops and flips' if cfg.crop_flip else 'centre crop, no flips'}, "
        f"{'PCA lighting ' + format(cfg.lighting, 'g') if cfg.lighting else 'no PCA lighting'}")
    return (f"preset {cfg.preset}: {replicas} replica(s) x batch {cfg.batch_size} = global batch "
            f"{cfg.global_batch_size}; lr {cfg.lr:g} ({rule}){warm}; {describe_decay(cfg)}; {cfg.epochs} epochs, crop "
            f"{cfg.crop}{' of the central square' if cfg.central_square else ''}, {cfg.init} init; inputs: "
            f"{INPUTS[cfg.normalize]}; weight decay {cfg.wd:g} on "
            f"{'weights and biases' if cfg.decay_biases else 'weights only'}{augment}")
