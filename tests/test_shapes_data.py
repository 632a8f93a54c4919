"""The ablation set (pipeline/shapes_data.py): deterministic, named in the manifest, and its class is a shape that
colour cannot give away and the training crops and flips keep."""
import io
import json

import numpy as np
import pytest
import torch
from conftest import build
from PIL import Image

from pipeline import demo_data, shapes_data

NUM_CLASSES = len(shapes_data.SHAPES_CLASSES)


def test_same_seed_same_bytes_other_seed_other_bytes():
    a = shapes_data.shapes_jpeg("train", 7, 3, seed=0)
    assert a == shapes_data.shapes_jpeg("train", 7, 3, seed=0)
    assert a != shapes_data.shapes_jpeg("train", 7, 3, seed=1)
    assert a != shapes_data.shapes_jpeg("val", 7, 3, seed=0)
    assert a != shapes_data.shapes_jpeg("train", 8, 3, seed=0)


def test_build_is_deterministic_and_names_its_classes(tmp_path):
    outs = [tmp_path / "a", tmp_path / "b"]
    for out in outs:
        assert build(out, "--demo-set", "shapes", "--size", 64, "--demo-train-per-class", 2,
                     "--demo-val-per-class", 1) == 0
    a, b = (json.loads((out / "manifest.json").read_text()) for out in outs)
    assert a["classes"] == shapes_data.SHAPES_CLASSES
    assert a["names"] == ["disc", "triangle", "square", "star", "cross", "ring", "crescent", "heart", "arrow",
                          "bowtie"]
    assert a["build"]["demo_set"] == "shapes"
    assert a["splits"]["train"]["num_samples"] == 2 * NUM_CLASSES and a["splits"]["val"]["num_samples"] == NUM_CLASSES
    for split in ("train", "val"):
        assert [s["sha256"] for s in a["splits"][split]["shards"]] == \
            [s["sha256"] for s in b["splits"][split]["shards"]]


def test_a_demo_set_with_a_source_is_refused(tmp_path, capsys):
    assert build(tmp_path / "s", "--src", tmp_path, "--demo-set", "shapes") == 2
    assert "--demo-set shapes builds an embedded set and --src" in capsys.readouterr().err
    assert not (tmp_path / "s").exists()


def test_rebuilding_an_out_dir_with_the_other_set_is_refused(tmp_path, capsys):
    out = tmp_path / "s"
    assert build(out, "--demo-set", "shapes", "--size", 64, "--demo-train-per-class", 1, "--demo-val-per-class", 0) == 0
    assert build(out, "--demo-set", "colours", "--size", 64, "--demo-train-per-class", 1,
                 "--demo-val-per-class", 0) == 2
    assert "demo_set: 'shapes' there, 'colours' now" in capsys.readouterr().err


def test_every_training_crop_keeps_most_of_the_object():
    """Scaled to 128 on the shorter side, every 112 x 112 crop (the four extreme ones bound the rest) keeps at least
    40% of the object's pixels (the largest objects in the widest frames lose the most), for every class and many
    draws; a flip is another draw of the same class."""
    worst = 1.0
    for label, name in enumerate(shapes_data.SHAPES_NAMES):
        for n in range(40):
            rng = np.random.default_rng([5, label, n])
            short = int(rng.integers(170, 213))  # render()'s frames
            w, h = (int(short * rng.uniform(1, 4 / 3)), short) if n % 2 else (short, int(short * rng.uniform(1, 4 / 3)))
            mask = np.asarray(shapes_data._object_mask(name, w, h, rng)[0]) > 127
            kept = int(round(shapes_data.CROP_FRACTION * short))
            total = mask.sum()
            assert total > 0.03 * short * short, f"{name}: object of {total} px is too small to see"
            for x0 in (0, w - kept):
                for y0 in (0, h - kept):
                    worst = min(worst, mask[y0:y0 + kept, x0:x0 + kept].sum() / total)
    assert worst >= 0.4


def colour_histograms(jpegs, bins=4):
    """Per-image joint RGB histogram (bins^3 cells, fractions of pixels), at most 96 px on the longer side."""
    feats = []
    for data in jpegs:
        img = Image.open(io.BytesIO(data)).convert("RGB")
        img.thumbnail((96, 96))
        q = (np.asarray(img, dtype=np.int64) * bins) // 256
        cells = (q[..., 0] * bins + q[..., 1]) * bins + q[..., 2]
        feats.append(np.bincount(cells.ravel(), minlength=bins ** 3) / cells.size)
    return np.array(feats, dtype=np.float32)


def linear_probe_accuracy(x_train, y_train, x_val, y_val, num_classes, *, steps=300, wd=1e-3):
    """Validation accuracy of multinomial logistic regression (standardised features, L2, full-batch L-BFGS)."""
    mean, std = x_train.mean(0), x_train.std(0) + 1e-6
    xt, xv = torch.tensor((x_train - mean) / std), torch.tensor((x_val - mean) / std)
    yt = torch.tensor(y_train)
    torch.manual_seed(0)
    layer = torch.nn.Linear(xt.shape[1], num_classes)
    opt = torch.optim.LBFGS(layer.parameters(), max_iter=steps, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(layer(xt), yt) + wd * layer.weight.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        return float((layer(xv).argmax(1).numpy() == np.asarray(y_val)).mean())


def probe(make_jpeg, num_classes, train_per_class=40, val_per_class=20):
    data = {}
    for split, per_class in (("train", train_per_class), ("val", val_per_class)):
        labels = [c for c in range(num_classes) for _ in range(per_class)]
        jpegs = [make_jpeg(split, n, c) for n, c in enumerate(labels)]
        data[split] = (colour_histograms(jpegs), np.array(labels))
    return linear_probe_accuracy(*data["train"], *data["val"], num_classes)


@pytest.mark.slow
def test_colour_histograms_do_not_give_the_shape_away():
    """The set's criterion: a linear classifier on colour histograms scores at most ~2x chance on the shapes set,
    while the same probe reads the colours demo set almost perfectly (so the probe itself works)."""
    chance = 1 / NUM_CLASSES
    shapes = probe(lambda split, n, c: shapes_data.shapes_jpeg(split, n, c, seed=0), NUM_CLASSES)
    colours = probe(lambda split, n, c: demo_data.demo_jpeg(split, n, c, len(demo_data.DEMO_CLASSES), seed=0),
                    len(demo_data.DEMO_CLASSES), train_per_class=10, val_per_class=5)
    assert colours >= 0.9, f"the probe is too weak to test anything: {colours:.2f} on the colours set"
    assert shapes <= 2 * chance, f"colour histograms classify shapes at {shapes:.2f} (chance {chance:.2f})"
