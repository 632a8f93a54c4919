"""An image file -> the patches a run's net takes, with PIL and numpy: the steps of cluster/run_inputs.py's
Preprocessing, done as the shard builder and the validation loader do them, by the same code where it can be.

- The builder's step is pipeline/images.py's prepare itself (its decode, resize and JPEG re-encode), so a file
  becomes the very bytes the shards would hold for it.
- The loader's steps (pipeline/loader.py, DALI) are redone here: its resize of the shorter side (DALI's linear
  filter with antialiasing; PIL's BILINEAR, the closest of PIL's filters, weights edge pixels a little
  differently), the central square, the crops (DALI puts a
  crop at floor(pos * (extent - crop) + 0.5), pos from pipeline/loader_options.py's TEN_CROP_POSITIONS), and
  (x - mean) / std.
  tests/test_classify.py measures what is left against the loader on the same images.
"""
import io
import math

import numpy as np
import torch
from PIL import Image

from pipeline.images import RESIZE_METHOD, BadImage, prepare
from pipeline.loader_options import TEN_CROP_POSITIONS, resized_shorter


class PreprocessError(Exception):
    """The run's preprocessing cannot be redone by this code; the message says why."""


def check_supported(prep):
    if prep.build.resize_method != RESIZE_METHOD:
        raise PreprocessError(f"the run's shards were resized with {prep.build.resize_method!r}, and this code's "
                              f"builder resizes with {RESIZE_METHOD!r}: its inputs cannot be reproduced here.")


def _anchor(pos, extent, size):
    return math.floor(pos * (extent - size) + 0.5)


def _crop(arr, size, pos_x, pos_y):
    """DALI's crop of an HWC array at a relative position. Always inside the image: the loader's resize makes the
    shorter side at least the crop (the loader would pad; nothing it is given here needs that)."""
    h, w = arr.shape[:2]
    y, x = _anchor(pos_y, h, size), _anchor(pos_x, w, size)
    if y < 0 or x < 0:
        raise PreprocessError(f"a {w}x{h} image is smaller than the {size}x{size} crop")
    return arr[y:y + size, x:x + size]


def _loader_resize(img, shorter):
    """DALI's resize_shorter: the shorter side to `shorter`, the other scaled and rounded."""
    size = resized_shorter(*img.size, shorter)
    return img if size == img.size else img.resize(size, Image.BILINEAR)


def shard_image(data, prep):
    """Raw file bytes -> the image as the loader decodes it from the shards (HWC uint8 RGB), before its own
    resize. Raises BadImage (with the reason) for what the builder would have skipped."""
    b = prep.build
    jpeg = prepare(data, size=b.size, crop=b.center_crop, quality=b.quality).jpeg
    with Image.open(io.BytesIO(jpeg)) as img:
        return img.convert("RGB")


def patches(data, prep, *, ten_crop=False):
    """Raw file bytes -> float32 (P, 3, crop, crop), P = 1 (the centre) or 10 (the paper's patches, in the
    loader's order: each position unflipped then flipped), normalised. Raises BadImage."""
    return image_patches(shard_image(data, prep), prep, ten_crop=ten_crop)


def image_patches(img, prep, *, ten_crop=False):
    """The loader's part of patches(): a PIL RGB image as the shards hold it -> (P, 3, crop, crop)."""
    if prep.loader_resize:
        img = _loader_resize(img, prep.loader_resize)
    arr = np.asarray(img)
    if prep.central_square and ten_crop:  # the loader's centre crop skips the square: it is the same crop
        arr = _crop(arr, prep.central_square, 0.5, 0.5)
    spots = TEN_CROP_POSITIONS if ten_crop else [(0.5, 0.5)]
    crops = [_crop(arr, prep.crop, x, y) for x, y in spots]
    if ten_crop:
        crops = [c for crop in crops for c in (crop, crop[:, ::-1])]
    x = torch.from_numpy(np.stack(crops).astype(np.float32)).permute(0, 3, 1, 2)
    mean = torch.tensor(prep.mean, dtype=torch.float32).view(1, 3, 1, 1)
    std = torch.tensor(prep.std, dtype=torch.float32).view(1, 3, 1, 1)
    return ((x - mean) / std).contiguous()


__all__ = ["BadImage", "PreprocessError", "check_supported", "image_patches", "patches",
           "shard_image"]
