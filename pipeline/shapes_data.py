"""The embedded ablation set ("shapes"): one object per picture, and the class is the object's shape.

Procedurally drawn and deterministic from a seed, like the colour demo set (demo_data.py), ImageNet-like in form
(aspect up to 4:3), drawn at 170-212 px on the shorter side: a little above the 128 px the ablation stores
and trains at, so the resize still averages the edges, and cheaper to draw than ImageNet's 300-500 px.
Unlike the demo set, nothing global gives the class away:
- the object's colour, the background's two colours, its gradient and the noise are drawn independently of
  the class from one distribution, so a colour histogram says nothing about it;
- every shape is scaled to a drawn pixel area (the same distribution for every class), so the share of pixels in
  the object's colour says nothing either;
- position, tilt (up to 20 degrees either way), size, stretch and mirror image vary within each class, and a few
  strokes and specks of clutter cross the frame (clutter never forms a closed shape, so it cannot be mistaken for
  another class).
The object's centre stays in the part of the frame that every 112-of-128 (or 224-of-256) crop keeps, and every
class is closed under a horizontal flip (a mirrored object is another member of its class), so the class survives
the training augmentation.
"""
import functools
import io
import math

import numpy as np
from PIL import Image, ImageDraw

SHAPES_CLASSES = [f"shape{i:02d}" for i in range(10)]
SHAPES_NAMES = ["disc", "triangle", "square", "star", "cross", "ring", "crescent", "heart", "arrow", "bowtie"]
PREFIX = "shapes:"
RAW = 256  # resolution of the reference masks that set each shape's unit area
CROP_FRACTION = 112 / 128  # the paper's 224 of 256: the share of the shorter side a training crop keeps
# How hard the set is: hard enough that the recipe's techniques matter within the ablation's budget, easy enough
# to be learnt in it. Smaller objects, fuller gradients, more clutter and free rotation left the net at chance; a
# plain background with one large object let every variant do equally well. What each setting measured:
# docs/BENCHMARKS.md ("The ablation's budget": the shapes set); the ablation's results: experiments/ablation/REPORT.md.
MAX_TILT = 20  # degrees either way
AREA = (0.08, 0.25)  # object area, a share of the shorter side squared
CLUTTER = (0, 3)  # strokes and specks per picture, [low, high)
GRADIENT = 0.6  # how far the background blends from its first colour towards its second
NOISE = (2, 10)  # sensor noise, standard deviation range in grey levels
CONTRAST = 110.0  # least RGB distance between the object's colour and the background's mean colour


def _regular(n, radius=1.0, phase=0.0):
    return [(radius * math.cos(phase + 2 * math.pi * k / n), radius * math.sin(phase + 2 * math.pi * k / n))
            for k in range(n)]


def _star(points=5, inner=0.42):
    return [(r * math.cos(math.pi * k / points - math.pi / 2), r * math.sin(math.pi * k / points - math.pi / 2))
            for k, r in zip(range(2 * points), [1.0, inner] * points)]


def _heart(n=96):
    pts = []
    for k in range(n):
        t = 2 * math.pi * k / n
        x = 16 * math.sin(t) ** 3
        y = -(13 * math.cos(t) - 5 * math.cos(2 * t) - 2 * math.cos(3 * t) - math.cos(4 * t))
        pts.append((x / 17, y / 17))
    return pts


# Each shape: a list of (polygon, fill) drawn in order on a 0/1 mask, in unit coordinates (about -1..1).
# fill 0 cuts a hole (ring, crescent): the object is what is left, still one closed silhouette.
_DISC = _regular(72)
SHAPES = {
    "disc": [(_DISC, 1)],
    "triangle": [(_regular(3, phase=-math.pi / 2), 1)],
    "square": [(_regular(4, phase=math.pi / 4), 1)],
    "star": [(_star(), 1)],
    "cross": [([(-0.3, -1), (0.3, -1), (0.3, -0.3), (1, -0.3), (1, 0.3), (0.3, 0.3), (0.3, 1), (-0.3, 1),
                (-0.3, 0.3), (-1, 0.3), (-1, -0.3), (-0.3, -0.3)], 1)],
    "ring": [(_DISC, 1), (_regular(72, 0.6), 0)],
    "crescent": [(_DISC, 1), ([(x + 0.55, y - 0.1) for x, y in _regular(72, 0.85)], 0)],
    "heart": [(_heart(), 1)],
    "arrow": [([(-1, -0.22), (0.15, -0.22), (0.15, -0.6), (1, 0), (0.15, 0.6), (0.15, 0.22), (-1, 0.22)], 1)],
    "bowtie": [([(-1, -0.8), (0, -0.12), (1, -0.8), (1, 0.8), (0, 0.12), (-1, 0.8)], 1)],
}
assert list(SHAPES) == SHAPES_NAMES


@functools.lru_cache(maxsize=None)
def unit_area(name):
    """Area of a shape in unit coordinates, measured on a RAW x RAW mask (so holes are subtracted exactly as drawn)."""
    mask = Image.new("L", (RAW, RAW), 0)
    draw = ImageDraw.Draw(mask)
    half = RAW / 2
    for poly, fill in SHAPES[name]:
        draw.polygon([(half + 0.45 * RAW * x, half + 0.45 * RAW * y) for x, y in poly], fill=255 * fill)
    return float((np.asarray(mask) > 127).mean()) * (RAW / (0.45 * RAW)) ** 2


def _random_colour(rng, away_from=None, min_distance=CONTRAST):
    """A random RGB colour, at least `min_distance` from `away_from` so the object always stands out."""
    while True:
        c = rng.integers(0, 256, 3).astype(np.float32)
        if away_from is None or np.linalg.norm(c - away_from) >= min_distance:
            return c


def _background(w, h, rng):
    """Two colours blended along a random gradient: colour that varies per image and carries no class. Returns the
    (h, w, 3) float32 picture and its mean colour."""
    xx = np.arange(w, dtype=np.float32)[None, :]
    yy = np.arange(h, dtype=np.float32)[:, None]
    a = _random_colour(rng)
    b = a + np.float32(GRADIENT) * (_random_colour(rng) - a)
    angle = rng.uniform(0, 2 * np.pi)
    c, s = np.float32(np.cos(angle)), np.float32(np.sin(angle))
    t = xx * c + yy * s  # ranges between the corners' values
    corners = [0.0, (w - 1) * c, (h - 1) * s, (w - 1) * c + (h - 1) * s]
    t = (t - min(corners)) / np.float32(max(max(corners) - min(corners), 1e-6))
    img = a[None, None] + (b - a)[None, None] * t[..., None]
    return img, (a + b) / 2


def _object_mask(name, w, h, rng):
    """0/255 mask of one object of shape `name`: drawn area, rotation, stretch, mirror and position."""
    short = min(w, h)
    area = rng.uniform(*AREA) * short * short  # pixels; the same range for every class
    stretch = math.exp(rng.uniform(-0.2, 0.2))  # x vs y, before rotation
    scale = math.sqrt(area / unit_area(name))
    sx, sy = scale * stretch, scale / stretch
    # Upright within +-20 degrees, as most ImageNet objects are: a free rotation would leave ~80 pictures per class
    # to cover every orientation of the shape.
    rot, mirror = np.radians(rng.uniform(-MAX_TILT, MAX_TILT)), rng.random() < 0.5
    cos, sin = math.cos(rot), math.sin(rot)
    parts = []
    for poly, fill in SHAPES[name]:
        pts = []
        for x, y in poly:
            x, y = (-x if mirror else x) * sx, y * sy
            pts.append((cos * x - sin * y, sin * x + cos * y))
        parts.append((pts, fill))
    reach = max(math.hypot(x, y) for pts, _ in parts for x, y in pts)
    # The centre lies where every training crop (CROP_FRACTION of the shorter side, anywhere along the longer side)
    # keeps it with a margin of half the object's reach, capped at 0.2 of the shorter side so a 4:3 frame still has
    # room along its longer side: no crop cuts more than ~60% of the largest objects (a test measures it).
    kept, margin = CROP_FRACTION * short, min(0.5 * reach, 0.2 * short)
    cx, cy = (rng.uniform(side - kept + margin, kept - margin) for side in (w, h))
    mask = Image.new("L", (w, h), 0)
    draw = ImageDraw.Draw(mask)
    for pts, fill in parts:
        draw.polygon([(cx + x, cy + y) for x, y in pts], fill=255 * fill)
    return mask, (cx, cy)


def _clutter(draw, w, h, rng):
    """Open strokes and specks in random colours: edges everywhere, none of them a closed shape."""
    for _ in range(int(rng.integers(*CLUTTER))):
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        if rng.random() < 0.6:
            n = int(rng.integers(2, 5))
            pts = [(float(rng.uniform(0, w)), float(rng.uniform(0, h))) for _ in range(n)]
            draw.line(pts, fill=colour, width=int(rng.integers(1, 4)))
        else:
            x, y, r = float(rng.uniform(0, w)), float(rng.uniform(0, h)), float(rng.uniform(1.5, 5))
            draw.ellipse([x - r, y - r, x + r, y + r], fill=colour)


def render(label, rng, *, size=None):
    """One picture of class `label` as a PIL RGB image, drawn with the numpy Generator `rng`.

    size=(w, h) fixes the frame (tests); by default its shorter side is drawn from 170-212 px, aspect at most 4:3."""
    if size is None:
        short = int(rng.integers(170, 213))
        long_ = int(short * rng.uniform(1.0, 4 / 3))
        w, h = (long_, short) if rng.random() < 0.5 else (short, long_)
    else:
        w, h = size
    img, bg_mean = _background(w, h, rng)
    mask, _ = _object_mask(SHAPES_NAMES[label], w, h, rng)
    obj = _random_colour(rng, away_from=bg_mean, min_distance=CONTRAST)
    shade = 1 + np.float32(rng.uniform(-0.15, 0.15)) * np.linspace(-1, 1, w, dtype=np.float32)[None, :, None]
    alpha = (np.asarray(mask, dtype=np.float32) / 255.0)[..., None]
    img += alpha * (obj[None, None] * shade - img)
    img += rng.standard_normal((h, w, 3), dtype=np.float32) * np.float32(rng.uniform(*NOISE))  # sensor noise
    pic = Image.fromarray(img.clip(0, 255).astype(np.uint8), "RGB")
    _clutter(ImageDraw.Draw(pic), w, h, rng)
    return pic


def shapes_jpeg(split, number, label, seed, *, quality=90):
    """The JPEG bytes of picture `number` of `split`: the same bytes for the same arguments, on any machine."""
    split_code = {"train": 0, "val": 1}[split]
    rng = np.random.default_rng([seed, 1000 + split_code, number])  # a stream of its own, apart from the demo set's
    buf = io.BytesIO()
    render(label, rng).save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def shapes_inputs(split, per_class):
    """[(name, label)] for one split; names are what the manifest and error messages show."""
    labels = [c for c in range(len(SHAPES_CLASSES)) for _ in range(per_class)]
    return [(f"{PREFIX}{split}/{SHAPES_CLASSES[c]}/{n:06d}", c) for n, c in enumerate(labels)]
