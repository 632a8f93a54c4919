"""The run's figures as a reader sees them: Figure 4's class names inside their panels and its top-5 bars visible at
any probability, at 1,000 classes and at 10; learning curves that show small changes near chance and the lr."""
import numpy as np
import pytest

from cluster.figure4 import Figure4Data, Neighbour, NeighbourRow, Prediction
from cluster.figures import figure4, learning_curves

LONG_NAMES = ["knee pad", "piggy bank, penny bank", "Greater Swiss Mountain dog", "African hunting dog, hyena dog",
              "three-toed sloth, ai, Bradypus tridactylus", "crossword puzzle, crossword", "electric locomotive",
              "Shetland sheepdog, Shetland sheep dog", "tench, Tinca tinca", "computer keyboard, keypad"]


def fake_figure4(num_classes, unsure):
    """Figure4Data with ImageNet's long names; `unsure`: a net near chance (every probability close to 1/C)."""
    rng = np.random.default_rng(0)
    names = [LONG_NAMES[i % 10] for i in range(num_classes)]

    def img():
        return rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)
    predictions = []
    for i in range(8):
        labels = [int(c) for c in rng.choice(num_classes, 5, replace=False)]
        probs = (1 / num_classes + rng.uniform(0, 0.3 / num_classes, 5)) if unsure else rng.dirichlet(np.ones(5))
        predictions.append(Prediction(img(), labels[0], i, labels, sorted(probs.tolist(), reverse=True)))
    rows = [NeighbourRow(img(), 1, r, [Neighbour(img(), 2, j, 10.0 + j) for j in range(6)]) for r in range(5)]
    return Figure4Data(predictions, rows, names, 100, 100, 0)


@pytest.mark.parametrize("num_classes, unsure", [(1000, True), (10, False)])
def test_figure4_names_stay_inside_their_panels_and_bars_show(num_classes, unsure):
    fig = figure4(fake_figure4(num_classes, unsure))
    renderer = fig.canvas.get_renderer()
    fig.draw(renderer)
    whole = fig.bbox
    bar_panels = [ax for ax in fig.get_axes() if ax.patches]
    assert len(bar_panels) == 8
    for ax in bar_panels:
        box = ax.get_window_extent(renderer)
        texts = [t for t in ax.texts if t.get_text()]
        assert len(texts) == 10  # a name and a probability per bar
        for t in texts:
            ext = t.get_window_extent(renderer)
            assert box.x0 <= ext.x0 and ext.x1 <= box.x1, f"{t.get_text()!r} crosses its panel's edge"
        widths = [p.get_width() for p in ax.patches]
        # the most probable bar spans the panel whatever the probabilities (at 1,000 classes they are ~0.1%)
        assert max(widths) / ax.get_xlim()[1] > 0.9
    for ax in fig.get_axes():  # every thumbnail's label inside the figure
        label = ax.xaxis.label
        if label.get_text():
            ext = label.get_window_extent(renderer)
            assert whole.x0 <= ext.x0 and ext.x1 <= whole.x1, f"{label.get_text()!r} is cut at the figure's edge"


def test_learning_curves_show_small_changes_near_chance_and_the_lr():
    history = [{"epoch": e + 1, "train_loss": 6.95 - 0.01 * e, "val_top1_error": 0.999 - 0.003 * e,
                "val_top5_error": 0.995 - 0.01 * e, "lr": 0.01 * 0.1 ** (e // 4)} for e in range(10)]
    fig = learning_curves(history, num_classes=1000)
    loss, err, lr = fig.get_axes()
    low, high = err.get_ylim()
    assert high - low < 0.2  # on a 0-1 axis a 0.999 -> 0.972 change was a flat line
    assert low <= 0.905 and high >= 0.999  # the data and the top-1 chance line are in view
    assert lr.get_yscale() == "log"
    assert sorted(set(lr.get_lines()[0].get_ydata())) == pytest.approx([1e-4, 1e-3, 1e-2])
    assert any("ln 1000" in t.get_text() for t in loss.get_legend().get_texts())
