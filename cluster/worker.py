"""The per-worker training loop: one AlexNet replica (two columns on this worker's devices), its DALI shard, DDP
across replicas, the paper's recipe per image, and a report + checkpoint every epoch.

Runs inside a Ray Train worker (see cluster/launch.py); every rank runs the same code. Works on CPU with gloo
(both columns on the CPU) and on GPUs with NCCL (or gloo when replicas share a GPU).

A worker writes nothing itself: what the run leaves (metrics.jsonl, TensorBoard, summary, figures) is written on the
driver's side from what workers report (cluster/outputs.py), and checkpoints go to Ray's storage. So a rank may sit
on any node, and the storage may be a shared path or a cloud URI.
"""
import os
import sys
import tempfile

import ray.train
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from cluster import checkpoints
from cluster.build_model import build_model
from cluster.chance import STUCK_AFTER_EPOCHS, ChanceLevel, stuck_message
from cluster.grad_compression import register as register_compression
from cluster.loop import (
    LrSchedule,
    evaluate,
    loader_settings,
    make_optimizer,
    ten_crop_batch,
    train_one_epoch,
    training_augmentation,
)
from cluster.progress import timed_lines
from cluster.recipe import DEFAULT_WARMUP_EPOCHS
from model import compile_for_speed
from pipeline.loader import make_loader

FAILURE_ENV = "ALEXNET_INJECT_FAILURE"  # "EPOCH:STEP", for tests only: read by launch.py, never in config.json


def replica_devices(cfg):
    """This worker's (column 0, column 1) devices. Ray Train sets CUDA_VISIBLE_DEVICES to the GPUs of every worker
    on the node; get_devices() names this worker's own (a second 2-GPU worker on a node gets cuda:2 and cuda:3)."""
    if not cfg.use_gpu:
        return torch.device("cpu"), torch.device("cpu")
    devices = ray.train.torch.get_devices()
    second = devices[1] if len(devices) > 1 else devices[0]
    return devices[0], torch.device("cpu") if cfg.column1_device == "cpu" else second


def build_replica(cfg, devices):
    """(model, trainable): the split model placed on `devices`, wrapped in DDP when there are several replicas.

    DDP gets device_ids=None because the module spans two devices; Ray's prepare_model would instead move the
    whole model to the first GPU and pass device_ids=[that GPU]."""
    model = build_model(cfg)
    model.place(devices[0], devices[1], output_device=devices[0])
    if devices[0].type == "cuda":
        model.to(memory_format=torch.channels_last)
    if cfg.compile:  # in place, before DDP wraps it: checkpoints keep their keys (model/compile.py)
        compile_for_speed(model)
    trainable = model
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        trainable = DistributedDataParallel(model, device_ids=None)
        register_compression(trainable, cfg.grad_compression, devices)
    return model, trainable


def failure_hook(inject_at, rank, world, start_epoch):
    """The fault-tolerance test's hook ($ALEXNET_INJECT_FAILURE): rank 1 of the live world (rank 0 alone) raises
    at (epoch, step) `inject_at`, in an attempt that started from scratch only, so the restart from the checkpoint
    goes through. The live world, not --workers: after an elastic shrink rank 1 may not exist."""
    if inject_at is None or start_epoch > 0 or rank != min(1, world - 1):
        return None

    def hook(epoch, step):
        if (epoch, step) == tuple(inject_at):
            raise RuntimeError(f"injected failure at epoch {epoch}, step {step} ({FAILURE_ENV})")
    return hook


def _verified_state(cfg, log):
    """The state of the newest checkpoint that matches its digest: Ray's latest, else (damaged) the newest intact
    one before it in the run's list, named as it is passed over. None when the run has no checkpoint yet."""
    latest = ray.train.get_checkpoint()
    if latest is None:
        return None
    candidates = [latest] + [ray.train.Checkpoint(e.where) for e in reversed(checkpoints.listed(cfg.storage, cfg.name))
                             if os.path.basename(e.where) != os.path.basename(latest.path)]
    damaged = []
    for ckpt in candidates:
        with ckpt.as_directory() as d:
            try:
                state = checkpoints.load_state(d)
            except checkpoints.CheckpointError as e:
                damaged.append((ckpt.path, str(e).split(": ", 1)[-1]))
                if log:
                    log(f"checkpoint {ckpt.path}: {damaged[-1][1]}; trying the one before it")
                continue
        if damaged and log:
            log(f"resuming from {ckpt.path} (after epoch {state['epoch'] + 1}), the newest intact checkpoint")
        return state
    raise checkpoints.CheckpointError("no intact checkpoint: " + "; ".join(f"{p}: {why}" for p, why in damaged))


def _load_checkpoint(model, opt, schedule, cfg, log):
    state = _verified_state(cfg, log)
    if state is None:
        return 0
    model.load_state_dict(state["model"])
    opt.load_state_dict(state["optimizer"])  # its lr is overwritten every step from the schedule
    schedule.load_state_dict(state["schedule"])
    return state["epoch"] + 1


def _stdout_log(msg):
    # Not print(): Train V2 patches print into its logger and the line reaches the driver twice.
    sys.stdout.write(msg + "\n")
    sys.stdout.flush()


def train_loop_per_worker(loop_config):
    cfg = loop_config["config"]  # a cluster.recipe.TrainConfig
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.set_num_threads(cfg.threads)
    devices = replica_devices(cfg)
    device = devices[0]
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed input shapes: let cuDNN pick its fastest kernels once
    log = _stdout_log if rank == 0 else None
    global_batch, peak_lr = cfg.recipe(world)  # this world's size, which an elastic restart may have changed
    loader_kw = loader_settings(cfg, rank, world, device)
    train_loader = make_loader(cfg.data, "train", cfg.batch_size, train=True, **training_augmentation(cfg),
                               **loader_kw)
    val_loader = make_loader(cfg.data, "val", cfg.batch_size, train=False, **loader_kw)
    model, trainable = build_replica(cfg, devices)
    opt = make_optimizer(model, peak_lr, cfg.momentum, cfg.wd, decay_biases=cfg.decay_biases)
    schedule = LrSchedule.from_config(cfg, steps_per_epoch=len(train_loader))
    start_epoch = _load_checkpoint(model, opt, schedule, cfg, log)
    # another world size than the checkpoint's (elastic restart, --resume --workers): the launch rule again, a
    # warmup over --warmup-epochs (5 when the run had none) from the rate the run had to the new peak
    change = schedule.start(peak_lr, start_epoch, cfg.warmup_epochs or DEFAULT_WARMUP_EPOCHS)
    if log:
        log(f"{world} replica(s), global batch {global_batch}, peak lr {peak_lr:g}"
            + (f"; resuming at epoch {start_epoch + 1} from the latest checkpoint" if start_epoch else "")
            + (f"; {change}" if change else ""))
    before_step = failure_hook(loop_config.get("inject_failure"), rank, world, start_epoch)
    node = ray.get_runtime_context().get_node_id()
    for epoch in range(start_epoch, cfg.epochs):
        train_loader.set_epoch(epoch)  # the order of epoch e is a function of (seed, e, rank, world)
        metrics = train_one_epoch(trainable, opt, train_loader, epoch=epoch, schedule=schedule, peak_lr=peak_lr,
                                  device=device, amp=cfg.amp, replicas=world, log=log, print_freq=cfg.print_freq,
                                  epochs=cfg.epochs, before_step=before_step)
        lr = opt.param_groups[0]["lr"]
        top1, top5, n = evaluate(model, val_loader, device, amp=cfg.amp, progress=(
            lambda it, e=epoch + 1: timed_lines(it, len(it), f"epoch {e} validation", log)) if log else None)
        schedule.end_epoch(epoch, top1, n)
        metrics.update(epoch=epoch + 1, val_top1_error=top1, val_top5_error=top5, val_images=n, lr=lr,
                       replicas=world, global_batch_size=global_batch)
        if epoch + 1 == cfg.epochs:  # the paper's ten patches, once, carried by the last checkpointed report
            train_loader.close()  # it already built a next epoch that will not come: free it before another loader
            ten_loader = make_loader(cfg.data, "val", ten_crop_batch(cfg.batch_size), train=False, ten_crop=True,
                                     **loader_kw)
            progress = (lambda it: timed_lines(it, len(it), "final 10-crop evaluation", log)) if log else None
            metrics["val_top1_error_10crop"], metrics["val_top5_error_10crop"], _ = evaluate(
                model, ten_loader, device, amp=cfg.amp, ten_crop=True, progress=progress)
            ten_loader.close()
        if log:
            log(f"epoch {epoch + 1}/{cfg.epochs}: train loss {metrics['train_loss']:.4f}, val top-1 error "
                f"{top1:.4f}, top-5 error {top5:.4f} ({n} images), {metrics['images_per_second']:.1f} img/s, "
                f"{world} replica(s)")
        if log and not schedule.left_chance and schedule.epochs_at_chance == STUCK_AFTER_EPOCHS:
            log(stuck_message(STUCK_AFTER_EPOCHS, top1, ChanceLevel(cfg.num_classes, n), cfg.preset))
        with tempfile.TemporaryDirectory() as tmp:
            checkpoint, upload = None, None
            if rank == 0:
                checkpoints.write({"model": model.state_dict(), "optimizer": opt.state_dict(),
                                   "schedule": schedule.state_dict(), "epoch": epoch, "metrics": metrics}, tmp)
                checkpoint = ray.train.Checkpoint.from_directory(tmp)
                # read back against its digest in storage before Ray registers it (and deletes the oldest)
                upload = checkpoints.VerifiedUpload(cfg.storage, cfg.name, ray_storage=ctx.get_storage())
            # every rank reports (a barrier in Train V2); the driver's callback reads rank 0's metrics and every
            # rank's node
            ray.train.report({**metrics, "node": node, "rank": rank}, checkpoint=checkpoint,
                             checkpoint_upload_fn=upload)
