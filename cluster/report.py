"""What a finished run leaves for people: summary.json, learning curves and the paper's Figure 3 (conv1 kernels)."""
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display on cluster nodes
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def read_metrics(run_dir):
    path = Path(run_dir) / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []


def plot_learning_curves(history, path):
    epochs = [h["epoch"] for h in history]
    fig, (ax_loss, ax_err) = plt.subplots(1, 2, figsize=(10, 4))
    ax_loss.plot(epochs, [h["train_loss"] for h in history], marker="o")
    ax_loss.set(xlabel="epoch", ylabel="training loss", title="Training loss")
    ax_err.plot(epochs, [h["val_top1_error"] for h in history], marker="o", label="top-1")
    ax_err.plot(epochs, [h["val_top5_error"] for h in history], marker="o", label="top-5")
    ax_err.set(xlabel="epoch", ylabel="validation error", title="Validation error", ylim=(0, 1))
    ax_err.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def kernel_grid(weights, cols=8):
    """(48, 3, k, k) kernels -> one RGB image, each kernel contrast-stretched on its own, 1 px gaps."""
    n, _, k, _ = weights.shape
    rows = int(np.ceil(n / cols))
    grid = np.ones((rows * (k + 1) - 1, cols * (k + 1) - 1, 3))
    for i, w in enumerate(weights):
        w = w.transpose(1, 2, 0)
        w = (w - w.min()) / max(w.max() - w.min(), 1e-12)
        r, c = divmod(i, cols)
        grid[r * (k + 1):r * (k + 1) + k, c * (k + 1):c * (k + 1) + k] = w
    return grid


def plot_conv1(conv1_weight, path):
    """Figure 3 of the paper: the 96 conv1 kernels, column 0's 48 above column 1's 48."""
    w = np.asarray(conv1_weight, dtype=np.float32)
    half = w.shape[0] // 2
    fig, axes = plt.subplots(2, 1, figsize=(6, 7))
    for ax, block, title in zip(axes, (w[:half], w[half:]), ("column 0 (GPU 1)", "column 1 (GPU 2)")):
        ax.imshow(kernel_grid(block), interpolation="nearest")
        ax.set_title(f"conv1 kernels, {title}")
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_outputs(run_dir, final_metrics, conv1_weight, *, workers, devices):
    """summary.json + learning_curves.png + conv1_kernels.png in run_dir; returns their paths."""
    run_dir = Path(run_dir)
    history = read_metrics(run_dir)
    last = history[-1] if history else {}
    summary = {
        "val_top1_error": last.get("val_top1_error"),
        "val_top5_error": last.get("val_top5_error"),
        "val_top1_error_10crop": final_metrics.get("val_top1_error_10crop"),
        "val_top5_error_10crop": final_metrics.get("val_top5_error_10crop"),
        "epochs": last.get("epoch", 0),
        "images_per_second": last.get("images_per_second"),
        "train_loss": last.get("train_loss"),
        "workers": workers,
        "devices": devices,
    }
    paths = {"summary": run_dir / "summary.json", "curves": run_dir / "learning_curves.png",
             "kernels": run_dir / "conv1_kernels.png", "metrics": run_dir / "metrics.jsonl",
             "tensorboard": run_dir / "tensorboard"}
    paths["summary"].write_text(json.dumps(summary, indent=1) + "\n")
    if history:
        plot_learning_curves(history, paths["curves"])
    if conv1_weight is not None:
        plot_conv1(conv1_weight, paths["kernels"])
    return summary, paths


def write_figures(run_dir, history, conv1_weight):
    """learning_curves.png and conv1_kernels.png in run_dir; returns the paths written."""
    run_dir, paths = Path(run_dir), []
    if history:
        paths.append(run_dir / "learning_curves.png")
        plot_learning_curves(history, paths[-1])
    if conv1_weight is not None:
        paths.append(run_dir / "conv1_kernels.png")
        plot_conv1(conv1_weight, paths[-1])
    return paths
