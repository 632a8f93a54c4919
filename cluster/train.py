"""The per-worker training loop: one AlexNet replica (two columns on this worker's two devices), its DALI shard,
DDP across replicas, the paper's recipe, and a report + checkpoint every epoch.

Runs inside a Ray Train worker (see cluster/launch.py); every rank runs the same code. Works on CPU with gloo
(both columns on the CPU) and on GPUs with NCCL.
"""
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import ray.train
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel

from model import AlexNet
from pipeline.loader import make_loader

CHECKPOINT_FILE = "checkpoint.pt"


def replica_devices(use_gpu):
    """This worker's (column 0, column 1) devices. Inside a Ray worker CUDA_VISIBLE_DEVICES holds only its own
    GPUs, so they are cuda:0 and cuda:1 here whatever their global numbers."""
    if not use_gpu:
        return torch.device("cpu"), torch.device("cpu")
    devices = ray.train.torch.get_devices()
    return devices[0], devices[1] if len(devices) > 1 else devices[0]


def build_replica(cfg, devices):
    """(model, trainable): the split model placed on `devices`, wrapped in DDP when there are several replicas.

    DDP gets device_ids=None because the module spans two devices; Ray's prepare_model would instead move the
    whole model to the first GPU and pass device_ids=[that GPU]."""
    model = AlexNet(cfg["num_classes"], activation=cfg["activation"], lrn=cfg["lrn"],
                    overlapping_pool=cfg["overlapping_pool"], dropout=cfg["dropout"], init=cfg["init"])
    model.place(devices[0], devices[1], output_device=devices[0])
    if devices[0].type == "cuda":
        model.to(memory_format=torch.channels_last)
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        return model, DistributedDataParallel(model, device_ids=None)
    return model, model


def make_optimizer(cfg, model):
    opt = torch.optim.SGD(model.parameters(), lr=cfg["lr"], momentum=cfg["momentum"], weight_decay=cfg["wd"])
    if cfg["lr_schedule"] == "step":
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=cfg["lr_step_size"], gamma=0.1)
    else:  # the paper: divide by 10 when validation error stops improving, at most three times (min_lr)
        sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="min", factor=0.1, patience=cfg["lr_patience"],
                                                           min_lr=cfg["lr"] * 1e-3 * 0.999)
    return opt, sched


def _autocast(cfg, device):
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg["amp"] and device.type == "cuda")


def _all_sum(values, device):
    t = torch.tensor(values, dtype=torch.float64, device=device)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(t)
    return t.tolist()


def _maybe_fail(cfg, epoch, step, rank):
    """Test hook (--inject-failure): rank 1 (or 0 alone) raises once at (epoch, step) to exercise Ray's restart."""
    spec = cfg.get("inject_failure")
    if spec and rank == min(1, cfg["workers"] - 1) and (epoch, step) == tuple(spec["at"]):
        marker = Path(spec["marker"])
        if not marker.exists():
            marker.write_text(f"failed at epoch {epoch} step {step}\n")
            raise RuntimeError(f"injected failure at epoch {epoch}, step {step} (--inject-failure)")


def train_one_epoch(cfg, model, trainable, opt, loader, epoch, device, rank, log):
    model.train()
    # Summed on the device: a .item() every step would make the host wait for the GPU at every step.
    loss_sum, seen, start = torch.zeros((), device=device), 0, time.time()
    steps = len(loader)
    for step, (images, labels, _) in enumerate(loader):
        _maybe_fail(cfg, epoch, step, rank)
        images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        if device.type == "cuda":
            images = images.contiguous(memory_format=torch.channels_last)
        with _autocast(cfg, device):
            loss = F.cross_entropy(trainable(images), labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        loss_sum += loss.detach().float() * len(labels)
        seen += len(labels)
        if rank == 0 and ((step + 1) % cfg["print_freq"] == 0 or step + 1 == steps):
            rate = seen * cfg["workers"] / (time.time() - start)
            eta = (steps - step - 1) * (time.time() - start) / (step + 1)
            log(f"epoch {epoch + 1}/{cfg['epochs']} step {step + 1}/{steps} loss {loss_sum.item() / seen:.4f} "
                f"{rate:.1f} img/s lr {opt.param_groups[0]['lr']:.2e} eta {eta:.0f}s")
    total_loss, total_seen = _all_sum([loss_sum.item(), seen], device)
    return {"train_loss": total_loss / max(total_seen, 1), "images_per_second": total_seen / (time.time() - start)}


@torch.no_grad()
def evaluate(cfg, model, loader, device, ten_crop=False):
    """Top-1/top-5 error over this rank's shard, summed over ranks: every validation image counted once."""
    model.eval()
    top1 = top5 = torch.zeros((), dtype=torch.int64, device=device)  # on the device: no per-batch sync
    count = 0
    for images, labels, _ in loader:
        images, labels = images.to(device), labels.to(device)
        with _autocast(cfg, device):
            if ten_crop:  # the paper: average the softmax of the ten patches
                n = images.shape[0]
                probs = F.softmax(model(images.flatten(0, 1)).float(), dim=1).view(n, 10, -1).mean(1)
            else:
                probs = model(images).float()
        k = min(5, probs.shape[1])
        top = probs.topk(k, dim=1).indices
        top1 = top1 + (top[:, 0] == labels).sum()
        top5 = top5 + (top == labels[:, None]).any(1).sum()
        count += len(labels)
    top1, top5, count = _all_sum([top1.item(), top5.item(), count], device)
    return 1 - top1 / count, 1 - top5 / count, int(count)


def _save_checkpoint(path, model, opt, sched, epoch, cfg, history):
    torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                "epoch": epoch, "config": json.loads(json.dumps(cfg)), "history": history,
                "loader": {"seed": cfg["seed"], "next_epoch": epoch + 1}}, path)


def _load_checkpoint(model, opt, sched):
    ckpt = ray.train.get_checkpoint()
    if ckpt is None:
        return 0, []
    with ckpt.as_directory() as d:
        state = torch.load(os.path.join(d, CHECKPOINT_FILE), map_location="cpu", weights_only=True)
    model.load_state_dict(state["model"])
    opt.load_state_dict(state["optimizer"])
    sched.load_state_dict(state["scheduler"])
    return state["epoch"] + 1, state["history"]


def _stdout_log(msg):
    # Not print(): Train V2 patches print into its logger and the line reaches the driver twice.
    sys.stdout.write(msg + "\n")
    sys.stdout.flush()


def train_loop_per_worker(cfg):
    ctx = ray.train.get_context()
    rank = ctx.get_world_rank()
    torch.set_num_threads(cfg["threads"])
    devices = replica_devices(cfg["use_gpu"])
    device = devices[0]
    log = _stdout_log if rank == 0 else (lambda msg: None)
    loader_kw = dict(shard_id=rank, num_shards=ctx.get_world_size(), crop=cfg["crop"], seed=cfg["seed"],
                     device="cuda" if cfg["use_gpu"] else "cpu", device_id=device.index if cfg["use_gpu"] else None,
                     num_threads=cfg["threads"], dtype="float32")
    train_loader = make_loader(cfg["data"], "train", cfg["batch_size"], train=True,
                               random_resized_crop=cfg["random_resized_crop"], **loader_kw)
    val_loader = make_loader(cfg["data"], "val", cfg["batch_size"], train=False, **loader_kw)
    model, trainable = build_replica(cfg, devices)
    opt, sched = make_optimizer(cfg, model)
    start_epoch, history = _load_checkpoint(model, opt, sched)
    if start_epoch:
        log(f"resuming at epoch {start_epoch + 1} from the latest checkpoint")
    run_dir = Path(cfg["run_dir"])
    tb = None
    if rank == 0:
        from torch.utils.tensorboard import SummaryWriter
        tb = SummaryWriter(run_dir / "tensorboard", purge_step=start_epoch + 1)  # a restart rewrites, not repeats
    for epoch in range(start_epoch, cfg["epochs"]):
        train_loader.set_epoch(epoch)  # order and augmentation of epoch N are the same on a resumed run
        metrics = train_one_epoch(cfg, model, trainable, opt, train_loader, epoch, device, rank, log)
        top1, top5, n = evaluate(cfg, model, val_loader, device)
        lr = opt.param_groups[0]["lr"]
        sched.step(top1) if cfg["lr_schedule"] == "plateau" else sched.step()
        metrics.update(epoch=epoch + 1, val_top1_error=top1, val_top5_error=top5, val_images=n, lr=lr)
        history.append(metrics)
        log(f"epoch {epoch + 1}/{cfg['epochs']}: train loss {metrics['train_loss']:.4f}, val top-1 error {top1:.4f}, "
            f"top-5 error {top5:.4f} ({n} images), {metrics['images_per_second']:.1f} img/s")
        with tempfile.TemporaryDirectory() as tmp:
            checkpoint = None
            if rank == 0:
                # rewritten from the checkpointed history: an epoch re-run after a failure appears once
                (run_dir / "metrics.jsonl").write_text("".join(json.dumps(h) + "\n" for h in history))
                for key in ("train_loss", "val_top1_error", "val_top5_error", "images_per_second", "lr"):
                    tb.add_scalar(key, metrics[key], epoch + 1)
                tb.flush()
                _save_checkpoint(os.path.join(tmp, CHECKPOINT_FILE), model, opt, sched, epoch, cfg, history)
                checkpoint = ray.train.Checkpoint.from_directory(tmp)
            ray.train.report(metrics, checkpoint=checkpoint)  # every rank: it is a barrier in Train V2
    ten_loader = make_loader(cfg["data"], "val", max(1, cfg["batch_size"] // 10), train=False, ten_crop=True,
                             **loader_kw)
    top1_10, top5_10, _ = evaluate(cfg, model, ten_loader, device, ten_crop=True)
    final = dict(history[-1]) if history else {}
    final.update(final=True, val_top1_error_10crop=top1_10, val_top5_error_10crop=top5_10)
    log(f"10-crop: val top-1 error {top1_10:.4f}, top-5 error {top5_10:.4f}")
    if rank == 0:
        (run_dir / "final_metrics.json").write_text(json.dumps(final, indent=1) + "\n")
        tb.close()
    ray.train.report(final)
