"""The plots of a run: learning curves, the paper's Figure 3 (conv1 kernels) and Figure 4 (from the data
cluster/figure4.py computes)."""
import matplotlib

matplotlib.use("Agg")  # no display on cluster nodes
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def plot_learning_curves(history, path, num_classes=None):
    fig = learning_curves(history, num_classes)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def learning_curves(history, num_classes=None):
    """Training loss, validation error and the lr per epoch. The error axis fits the data (near chance a 0.99 -> 0.96
    change must show) with chance drawn in, and the lr is on a log axis, where a decay is a step down."""
    epochs = [h["epoch"] for h in history]
    fig, (ax_loss, ax_err, ax_lr) = plt.subplots(1, 3, figsize=(15, 4))
    ax_loss.plot(epochs, [h["train_loss"] for h in history], marker="o")
    ax_err.plot(epochs, [h["val_top1_error"] for h in history], marker="o", label="top-1")
    ax_err.plot(epochs, [h["val_top5_error"] for h in history], marker="o", label="top-5")
    if num_classes:
        ax_loss.axhline(np.log(num_classes), color="grey", ls="--", lw=1, label=f"chance: ln {num_classes}")
        ax_loss.legend(fontsize=8)
        ax_err.axhline(1 - 1 / num_classes, color="tab:blue", ls="--", lw=1, alpha=0.6, label="top-1 chance")
        ax_err.axhline(1 - min(5, num_classes) / num_classes, color="tab:orange", ls="--", lw=1, alpha=0.6,
                       label="top-5 chance")
    ax_loss.set(xlabel="epoch", ylabel="training loss", title="Training loss")
    ax_err.set(xlabel="epoch", ylabel="validation error", title="Validation error (axis fitted to the data)")
    ax_err.legend(fontsize=8)
    lrs = [h.get("lr") for h in history]
    if any(lr for lr in lrs):
        ax_lr.step(epochs, lrs, where="post", marker="o")
        ax_lr.set_yscale("log")
    ax_lr.set(xlabel="epoch", ylabel="learning rate (log)", title="Learning rate (at the end of each epoch)")
    for ax in (ax_loss, ax_err, ax_lr):
        ax.grid(alpha=0.3)
        ax.xaxis.get_major_locator().set_params(integer=True)
    fig.tight_layout()
    return fig


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


def short_name(name, width=18):
    """ImageNet names list synonyms ("tench, Tinca tinca"): the first one, cut to fit under a thumbnail."""
    first = name.split(",")[0].strip()
    return first if len(first) <= width else first[:width - 1] + "…"


def _thumbnail(ax, image, label, colour="black"):
    ax.imshow(image)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_xlabel(label, fontsize=8, color=colour)


def percent(p):
    if p < 1e-4:
        return "<0.01%"
    return f"{100 * p:.0f}%" if p >= 0.095 else f"{100 * p:.2g}%"


def _top5_bars(ax, prediction, names):
    """The five most probable classes as bars, each named inside the panel (names as tick labels were cut at the
    panel's left edge) with its probability at the right; the axis runs to the largest probability, so that a net
    that is still unsure (every class near 1/C) shows bars, and the percentages give the scale."""
    k = len(prediction.top_labels)
    probs = list(prediction.top_probs)
    colours = ["tab:red" if c == prediction.label else "tab:blue" for c in prediction.top_labels]
    ax.barh(range(k), probs, color=colours, alpha=0.35, height=0.85)
    for i, (c, p) in enumerate(zip(prediction.top_labels, probs)):
        ax.text(0.02, i, short_name(names[c], 17), transform=ax.get_yaxis_transform(), va="center", ha="left",
                fontsize=7)
        ax.text(0.98, i, percent(p), transform=ax.get_yaxis_transform(), va="center", ha="right", fontsize=7)
    ax.set_yticks([])
    ax.invert_yaxis()  # most probable on top, as in the paper
    top = max(max(probs, default=0), 1e-6) * 1.02
    ax.set_xlim(0, top)
    ax.set_xticks([0, top / 1.02], ["0", percent(top / 1.02)])
    ax.tick_params(axis="x", labelsize=6)


def figure4_title(data):
    if data.train_searched >= data.train_total:
        searched = f"all {data.train_total:,} training images"
    else:
        searched = (f"a seeded subset of {data.train_searched:,} of the {data.train_total:,} training images "
                    f"(seed {data.seed})")
    return f"Figure 4 (Krizhevsky et al., 2012); nearest neighbours searched among {searched}"


def plot_figure4(data, path):
    fig = figure4(data)
    fig.savefig(path, dpi=80)
    plt.close(fig)


def figure4(data):
    """The paper's Figure 4 from cluster.figure4.Figure4Data: predictions left, fc7 nearest neighbours right."""
    names = data.names
    fig = plt.figure(figsize=(22, 10.5))
    head, body = fig.subfigures(2, 1, height_ratios=[1, 20])
    left, right = body.subfigures(1, 2, width_ratios=[1.25, 1.5], wspace=0.02)
    cols = 4
    rows = max(1, int(np.ceil(len(data.predictions) / cols)))
    grid = left.add_gridspec(2 * rows, cols, height_ratios=[3, 2] * rows, hspace=0.35, wspace=0.12,
                             left=0.02, right=0.98, top=0.92, bottom=0.04)
    for i, p in enumerate(data.predictions):
        r, c = divmod(i, cols)
        _thumbnail(left.add_subplot(grid[2 * r, c]), p.image, short_name(names[p.label]))
        _top5_bars(left.add_subplot(grid[2 * r + 1, c]), p, names)
    left.suptitle("Top-5 predictions (red bar: the true class)", fontsize=11)
    width = 1 + max((len(row.neighbours) for row in data.rows), default=0)
    axes = right.subplots(max(1, len(data.rows)), width, squeeze=False,
                         gridspec_kw=dict(left=0.02, right=0.97, top=0.92, bottom=0.04, hspace=0.3))
    for ax in axes.flat:
        ax.axis("off")
    for r, row in enumerate(data.rows):
        _thumbnail(axes[r, 0], row.image, "query: " + short_name(names[row.label]))
        axes[r, 0].axis("on")
        for c, n in enumerate(row.neighbours, 1):
            colour = "tab:green" if n.label == row.label else "black"
            _thumbnail(axes[r, c], n.image, f"{short_name(names[n.label], 15)} ({n.distance:.3g})", colour)
            axes[r, c].axis("on")
    right.suptitle("Validation images (first column) and the training images nearest in fc7 feature space "
                   "(Euclidean; distance in brackets, green: same class)", fontsize=11)
    head.suptitle(figure4_title(data), fontsize=13)
    return fig
