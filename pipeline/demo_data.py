"""The embedded demo dataset: procedurally drawn, deterministic from a seed, ImageNet-like sizes (300-500 px).

Each class has its own hue and its own texture scale, painted over the whole frame, so the class survives any
crop and any flip; random shapes in random colours are drawn on top as clutter, so the net has to look past them.
"""
import colorsys
import io

import numpy as np
from PIL import Image, ImageDraw

DEMO_CLASSES = [f"demo{i:02d}" for i in range(10)]
DEMO_NAMES = ["red", "orange", "yellow", "lime", "green", "teal", "cyan", "blue", "violet", "magenta"]


def class_colour(label, num_classes):
    r, g, b = colorsys.hsv_to_rgb(label / num_classes, 0.75, 0.85)
    return np.array([r, g, b]) * 255


def render(label, num_classes, rng):
    """One demo picture of class `label` as a PIL RGB image, drawn with the numpy Generator `rng`."""
    w, h = (int(v) for v in rng.integers(300, 501, size=2))
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    period = 12 + 4 * (label % 4)  # texture scale: a second cue besides hue
    angle = rng.uniform(0, np.pi)
    wave = np.sin((xx * np.cos(angle) + yy * np.sin(angle)) * (2 * np.pi / period))
    base = class_colour(label, num_classes) * rng.uniform(0.7, 1.1)
    img = base[None, None, :] * (0.8 + 0.2 * wave[..., None]) + rng.normal(0, 12, (h, w, 3))
    pic = Image.fromarray(img.clip(0, 255).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(pic)
    for _ in range(int(rng.integers(2, 6))):  # clutter in colours unrelated to the class
        x0, y0 = int(rng.integers(0, w - 40)), int(rng.integers(0, h - 40))
        x1, y1 = x0 + int(rng.integers(20, w // 3)), y0 + int(rng.integers(20, h // 3))
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)([x0, y0, x1, y1], fill=colour)
    return pic


def demo_jpeg(split, number, label, num_classes, seed):
    """The JPEG bytes of demo image `number` of `split`: the same bytes for the same arguments, on any machine."""
    split_code = {"train": 0, "val": 1}[split]
    rng = np.random.default_rng([seed, split_code, number])
    buf = io.BytesIO()
    render(label, num_classes, rng).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def demo_inputs(split, per_class, num_classes=len(DEMO_CLASSES)):
    """[(name, label)] for one split; names are what the manifest and error messages show."""
    labels = [c for c in range(num_classes) for _ in range(per_class)]
    return [(f"demo:{split}/{DEMO_CLASSES[c]}/{n:06d}", c) for n, c in enumerate(labels)]


def write_demo_tree(root, *, train_per_class, val_per_class, num_classes=len(DEMO_CLASSES), seed=0,
                    flat_val=False):
    """Write the demo set as an ImageNet-style tree (train/<wnid>/*.JPEG, val/...), for tests and benchmarks.

    flat_val=True writes val/*.JPEG plus a Kaggle-style LOC_val_solution.csv, as the real ImageNet val comes.
    """
    from pathlib import Path
    root = Path(root)
    rows = []
    for split, per_class in (("train", train_per_class), ("val", val_per_class)):
        for number, (_, label) in enumerate(demo_inputs(split, per_class, num_classes)):
            wnid = DEMO_CLASSES[label]
            stem = f"{wnid}_{number:06d}"
            if split == "val" and flat_val:
                path = root / "val" / f"ILSVRC2012_val_{number:08d}.JPEG"
                rows.append(f"{path.stem},{wnid} 1 1 10 10")
            else:
                path = root / split / wnid / f"{stem}.JPEG"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(demo_jpeg(split, number, label, num_classes, seed))
    if flat_val:
        (root / "LOC_val_solution.csv").write_text("ImageId,PredictionString\n" + "\n".join(rows) + "\n")
    return root
