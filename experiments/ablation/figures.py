"""The ablation report's figures (report.py): every variant's curves, and Figure 1 as the paper drew
it."""
import math

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt


def plot_curves(results_by_variant, labels, path):
    """One panel per variant: training error (as trained) and validation top-1 error vs epoch, every seed."""
    n = len(results_by_variant)
    cols = min(4, n)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3.2 * rows), squeeze=False, sharey=True)
    for ax, (name, runs) in zip(axes.flat, results_by_variant.items()):
        for i, r in enumerate(runs):
            epochs = [h.epoch for h in r.history]
            ax.plot(epochs, [h.train_error for h in r.history], color="tab:blue", alpha=0.8,
                    label="train (as trained)" if i == 0 else None)
            ax.plot(epochs, [h.val_top1_error for h in r.history], color="tab:red", alpha=0.8,
                    label="val top-1" if i == 0 else None)
        ax.set(title=labels[name], xlabel="epoch", ylim=(0, 1))
        ax.grid(alpha=0.3)
    for ax in axes.flat[n:]:
        ax.axis("off")
    axes[0, 0].set_ylabel("error")
    axes[0, 0].legend(loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def plot_figure1(relu_runs, tanh_runs, path, error):
    """The paper's Figure 1: training error vs epoch, ReLU solid, tanh dashed, the 25% line."""
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for runs, style, name in ((relu_runs, "-", "ReLU"), (tanh_runs, "--", "tanh")):
        for i, r in enumerate(runs):
            ax.plot([h.epoch for h in r.history], [h.train_error for h in r.history], style, color="k",
                    alpha=0.9 if i == 0 else 0.45, label=name if i == 0 else None)
    ax.axhline(error, color="tab:gray", lw=0.8)
    ax.set(xlabel="epoch", ylabel="training error rate (as trained)", ylim=(0, 1),
           title="ReLU (solid) vs tanh (dashed), as in the paper's Figure 1")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
