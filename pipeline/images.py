"""Decode any input image completely and turn it into a baseline 8-bit RGB JPEG that libjpeg-turbo and nvJPEG
both decode. DALI cannot skip a bad sample at train time, so every image is decoded here and anything that does not
decode is reported (never written)."""
import contextlib
import io
from typing import NamedTuple

import numpy as np
from PIL import Image, ImageFile

# The builder's decompression-bomb limit: ~11000 x 11000 px, 360 MB as RGB. ImageNet's photos are a few hundred
# pixels a side (mostly around 500 x 375) and camera photos a few thousand: only a bomb or a huge scan is skipped.
MAX_PIXELS = 120_000_000
STATS_PIXELS = 512  # pixels sampled per image for the dataset's mean/std/PCA


class BadImage(Exception):
    """The input cannot become a sample; the message is the reason recorded in the manifest."""


class Prepared(NamedTuple):
    """One input made ready for a shard."""
    jpeg: bytes  # baseline RGB JPEG
    pixels: np.ndarray  # (STATS_PIXELS, 3) uint8 sample for the dataset's statistics
    upscale: float  # how much the shorter side was enlarged to reach --size (1.0: not enlarged)


@contextlib.contextmanager
def _builder_limits():
    """PIL's guards are process-wide settings, and a launcher that builds the demo set imports this module: set the
    builder's own only while it decodes, and give the process back what it had. Fixed values, not inherited ones,
    so that which inputs a build skips does not depend on who imported PIL before it."""
    saved = Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES
    Image.MAX_IMAGE_PIXELS = MAX_PIXELS  # PIL warns above it and refuses above twice it; we refuse above it
    ImageFile.LOAD_TRUNCATED_IMAGES = False  # a truncated file is an error, not a grey half-image
    try:
        yield
    finally:
        Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES = saved


def _to_rgb(img):
    """Any PIL mode -> 8-bit RGB. Alpha is composited over white; 16-bit and float data are rescaled, not clipped."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N"):
        arr = np.asarray(img, dtype=np.float32) / 257.0
        img = Image.fromarray(arr.clip(0, 255).astype(np.uint8), "L")
    elif img.mode in ("I", "F"):
        arr = np.asarray(img, dtype=np.float32)
        top = 65535.0 if arr.max() > 255 else 255.0
        img = Image.fromarray((arr * (255.0 / top)).clip(0, 255).astype(np.uint8), "L")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, rgba)
    return img if img.mode == "RGB" else img.convert("RGB")


def _is_baseline_rgb_jpeg(img):
    # PIL marks progressive JPEGs with "progressive"/"progression"; 3-channel 8-bit RGB is mode "RGB".
    return (img.format == "JPEG" and img.mode == "RGB"
            and not img.info.get("progressive") and not img.info.get("progression"))


# The name of resize_shorter's method, recorded with a run (cluster/run_inputs.py) so that what classifies its images
# later can tell whether it still resizes the way the shards were made. Change it with resize_shorter.
RESIZE_METHOD = "box-down-bilinear-up"


def resize_shorter(img, size):
    """Scale so that the shorter side is `size` (up or down), keeping the aspect ratio.

    Downscaling averages areas (BOX, what OpenCV calls INTER_AREA): as alias-free as bilinear for these ratios and
    cheaper, and resizing is the builder's largest cost (docs/BENCHMARKS.md, "Shard builder").
    Upscaling (images smaller than `size`) is bilinear."""
    w, h = img.size
    scale = size / min(w, h)
    new = (max(1, round(w * scale)), max(1, round(h * scale)))
    if new == img.size:
        return img
    return img.resize(new, Image.BOX if scale < 1 else Image.BILINEAR, reducing_gap=3.0)


def center_crop(img, size):
    w, h = img.size
    left, top = (w - size) // 2, (h - size) // 2
    return img.crop((left, top, left + size, top + size))


def prepare(data, *, size=256, crop=False, quality=90, max_upscale=0.0):
    """Raw file bytes -> Prepared (baseline RGB JPEG bytes, pixel sample, upscale factor).

    size > 0 resizes the shorter side to `size` (the paper's 256); size == 0 keeps a baseline RGB JPEG's original
    bytes and re-encodes only what must be. max_upscale > 0 refuses an image whose shorter side would have to be
    enlarged more than that many times. Raises BadImage with the reason.
    """
    if not data:
        raise BadImage("empty file")
    try:
        with _builder_limits():
            img = Image.open(io.BytesIO(data))
            if img.width * img.height > MAX_PIXELS:
                raise BadImage(f"too large to decode safely ({img.width}x{img.height} px, limit {MAX_PIXELS} px)")
            fmt = img.format
            upscale = max(1.0, size / max(1, min(img.size))) if size else 1.0
            if max_upscale and upscale > max_upscale:
                raise BadImage(f"too small: {img.width}x{img.height} px would be enlarged {upscale:.2f}x to reach "
                               f"{size} on the shorter side (--max-upscale {max_upscale:g})")
            if size and fmt == "JPEG":
                img.draft("RGB", (size, size))  # decode at 1/2, 1/4 or 1/8 scale when still >= size: fast, low memory
            keep_original = size == 0 and not crop and _is_baseline_rgb_jpeg(img)
            img.load()  # the full decode: truncated or corrupt data fails here
            if getattr(img, "n_frames", 1) > 1:
                img.seek(0)
            img.info["format"] = fmt
            rgb = _to_rgb(img)
    except BadImage:
        raise
    except Image.DecompressionBombError as e:
        raise BadImage(f"too large to decode safely: {e}") from None
    except (OSError, SyntaxError, ValueError, Image.UnidentifiedImageError) as e:
        reason = "not an image (unrecognised format)" if isinstance(e, Image.UnidentifiedImageError) else str(e)
        raise BadImage(f"cannot decode: {reason}") from None
    if size:
        rgb = resize_shorter(rgb, size)
    if crop:
        rgb = center_crop(rgb, size if size else min(rgb.size))
    if keep_original:
        out = data
    else:
        buf = io.BytesIO()
        rgb.save(buf, "JPEG", quality=quality, optimize=False, progressive=False)
        out = buf.getvalue()
    return Prepared(out, sample_pixels(rgb), upscale)


def sample_pixels(img):
    """STATS_PIXELS pixels of img on a nearest-neighbour 32x16 grid: enough for the statistics' sums, and no copy
    of the whole image."""
    return np.asarray(img.resize((32, STATS_PIXELS // 32), Image.NEAREST)).reshape(-1, 3)
