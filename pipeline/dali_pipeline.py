"""The DALI pipeline graph behind pipeline/loader.py: read a shard stretch, decode, crop the view, normalise.

PipelineSpec is everything the graph depends on, resolved from the loader's options and the shards' manifest (one
decision per field), so that the graph reads as the view's three forms and one decode helper picks the cheapest
decode for each.
"""
from dataclasses import dataclass

import numpy as np
from nvidia.dali import fn, pipeline_def, types

from pipeline.loader_options import TEN_CROP_POSITIONS, View


@dataclass(frozen=True)
class PipelineSpec:
    view: View
    mixed: bool  # decode on the GPU ("mixed": Huffman on CPU threads, the rest on the GPU) or the CPU
    crop: int
    resize: int | None  # shorter side to resize to; None: the shards are at that scale already
    square: int | None  # side of the central square the crops come from; None: the whole image
    random_resized_crop: bool
    roi_decode: bool
    crop_flip: bool
    lighting: float
    mean: tuple
    std: tuple
    eigvec: tuple  # the training set's RGB PCA on the 0-255 scale (manifest), for the lighting noise
    eigval: tuple
    half: bool  # float16 out of DALI (bfloat16 is cast by the loader: DALI has no bfloat16 output)
    hwc: bool  # NHWC memory out of DALI (the loader views it as NCHW, channels_last)
    initial_fill: int
    hw_decoder_load: float
    preallocate: int  # 0: no hint


def _lighting_mean(spec):
    """Fold the paper's PCA lighting noise into a per-image mean: (x + d - mean) / std == (x - (mean - d)) / std,
    with d = eigvec @ (alpha * eigval) and alpha ~ N(0, lighting) drawn per image and per use.

    d is in grey levels, added to the 0-255 pixels before any normalisation, so it is the same noise under either
    input normalisation. Its size: the paper's formula with the eigenvalues of the covariance of pixel values on the
    0-1 scale (as fb.resnet.torch and others read it), converted to grey levels: d = 255 * V @ (alpha * eigval / 255^2)
    with the manifest's 0-255 eigenvalues. For ImageNet (largest 0-1 eigenvalue ~0.22) one alpha of 0.1 is ~5.5 grey
    levels. Read literally on the 0-255 scale (eigval ~14,000) it would be ~1,400 grey levels, more than the range."""
    alpha = fn.random.normal(shape=[3], stddev=spec.lighting)
    vec, val = np.asarray(spec.eigvec), np.asarray(spec.eigval) / 255.0
    shifted = []
    for c in range(3):
        delta = sum(float(vec[c, j] * val[j]) * alpha[j] for j in range(3))
        shifted.append(float(spec.mean[c]) - delta)
    return fn.stack(*shifted)


def _decode(jpegs, spec, position):
    """Decoded images the view's crops are then taken from, decoding no more pixels than the view needs.

    - random-resized crop (training): decode only the random window, then scale it to the crop;
    - shards at scale, training from the whole image: decode only the crop window (~40% fewer pixels for 224 of
      256); the crop after it is then the whole image;
    - shards at scale, crops from the central square: decode only the square;
    - otherwise decode all, resize if the shards are not at scale, and cut the central square if one is asked for.
    The centre view ignores the square: its crop is the same with or without it."""
    # The mixed decoder still Huffman-decodes on CPU threads; the hints only avoid reallocations.
    hints = dict(preallocate_width_hint=spec.preallocate, preallocate_height_hint=spec.preallocate) \
        if spec.preallocate else {}
    device = dict(device="mixed", hw_decoder_load=spec.hw_decoder_load, **hints) if spec.mixed else dict(device="cpu")
    training = spec.view is View.TRAINING
    square = spec.square if spec.view is not View.CENTRE else None
    if training and spec.random_resized_crop:
        images = fn.decoders.image_random_crop(jpegs, output_type=types.RGB, random_area=[0.08, 1.0],
                                               random_aspect_ratio=[3 / 4, 4 / 3], **device)
        return fn.resize(images, resize_x=spec.crop, resize_y=spec.crop)
    if training and spec.roi_decode and not spec.resize and not square:
        return fn.decoders.image_crop(jpegs, output_type=types.RGB, crop=(spec.crop, spec.crop), **position, **device)
    if square and not spec.resize:
        return fn.decoders.image_crop(jpegs, output_type=types.RGB, crop=(square, square), **device)
    images = fn.decoders.image(jpegs, output_type=types.RGB, **device)
    if spec.resize:
        images = fn.resize(images, resize_shorter=spec.resize)
    if square:
        images = fn.crop(images, crop=(square, square), out_of_bounds_policy="pad")
    return images


@pipeline_def
def dali_pipeline(tars, idxs, *, spec, shard_id, num_shards):
    """(images, labels, indices) of `spec`'s view over the shard files `tars` (with their DALI indexes `idxs`)."""
    training = spec.view is View.TRAINING
    # Training: the reader gets only this epoch's stretch of this rank (shard 0 of 1), parsed lazily so that the
    # parse runs in DALI's threads, not under the GIL in build(). Evaluation: a fixed part, padded to whole batches.
    # tensor_init_bytes=0: the default reserves 1 MB per output of each buffered sample, which memory-mapped samples
    # never use and which makes dropping a pipeline (under the GIL) slower (docs/BENCHMARKS.md).
    jpegs, labels, indices = fn.readers.webdataset(
        paths=tars, index_paths=idxs, ext=["jpg", "cls64", "idx64"],
        dtypes=[types.UINT8, types.INT64, types.INT64], missing_component_behavior="error",
        shard_id=shard_id, num_shards=num_shards, stick_to_shard=not training, pad_last_batch=not training,
        random_shuffle=training, initial_fill=spec.initial_fill, lazy_init=training, tensor_init_bytes=0,
        name="reader")
    # Without crop_flip (the ablation's "no augmentation"): the centre crop, never mirrored; no random ops are made.
    position = (dict(crop_pos_x=fn.random.uniform(range=(0.0, 1.0)), crop_pos_y=fn.random.uniform(range=(0.0, 1.0)))
                if training and spec.crop_flip else dict(crop_pos_x=0.5, crop_pos_y=0.5))
    images = _decode(jpegs, spec, position)
    normalise = dict(crop=(spec.crop, spec.crop), std=list(spec.std), dtype=types.FLOAT16 if spec.half else types.FLOAT,
                     output_layout="HWC" if spec.hwc else "CHW", out_of_bounds_policy="pad")
    mean = list(spec.mean)
    if spec.view is View.TRAINING:
        out = fn.crop_mirror_normalize(
            images, mirror=fn.random.coin_flip(probability=0.5) if spec.crop_flip else 0, **position,
            mean=_lighting_mean(spec) if spec.lighting > 0 else mean, **normalise)
    elif spec.view is View.TEN_PATCHES:
        out = fn.stack(*[fn.crop_mirror_normalize(images, crop_pos_x=x, crop_pos_y=y, mirror=m, mean=mean, **normalise)
                         for x, y in TEN_CROP_POSITIONS for m in (0, 1)])
    else:
        out = fn.crop_mirror_normalize(images, mean=mean, **normalise)
    # Labels go to the GPU inside the pipeline with mixed decode: the step needs them there, and a host-to-device
    # copy from pageable memory in the training loop would make the host wait. Indices stay on the host (metadata).
    return out, labels.gpu() if spec.mixed else labels, indices
