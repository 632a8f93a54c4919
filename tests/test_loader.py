"""The DALI loader on CPU: exactly-once sharding, labels stay with pixels, augmentation geometry, lighting,
determinism, and clear errors for broken shards. The GPU test compares mixed decode with CPU decode."""
import collections
import json

import numpy as np
import pytest
import torch
from conftest import build
from PIL import Image

from pipeline import manifest as mf
from pipeline.epoch_order import rank_parts
from pipeline.loader import make_loader
from pipeline.stats import input_normalization

COLOURS = [(220, 30, 30), (30, 200, 40), (40, 60, 220), (230, 220, 40), (200, 40, 200)]


def colour_tree(root, n, size=(80, 64)):
    """n solid images; class k is colour k (the class is visible in every pixel, after any crop or flip)."""
    for i in range(n):
        k = i % len(COLOURS)
        d = root / "train" / f"c{k}"
        d.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", size, COLOURS[k]).save(d / f"{i:05d}.JPEG", quality=95)
    return root


@pytest.fixture(scope="module")
def colour_shards(tmp_path_factory):
    """1003 samples (odd on purpose) of 5 colour classes, shorter side 64, 100 samples per shard."""
    tmp = tmp_path_factory.mktemp("colour")
    out = tmp / "shards"
    assert build(out, "--src", colour_tree(tmp / "src", 1003), "--size", 64, "--shard-size", 100, "-j", 2) == 0
    return out


@pytest.fixture(scope="module")
def gradient_shards(tmp_path_factory):
    """Images whose red channel is the x coordinate and green the y coordinate: crops and flips are measurable."""
    tmp = tmp_path_factory.mktemp("gradient")
    x = np.linspace(0, 255, 256)
    arr = np.stack([np.tile(x, (256, 1)), np.tile(x[:, None], (1, 256)), np.full((256, 256), 128.0)], -1)
    for i in range(64):
        d = tmp / "src" / "train" / "g"
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(arr.astype(np.uint8)).save(d / f"{i}.png")
    out = tmp / "shards"
    assert build(out, "--src", tmp / "src", "--size", 256, "--quality", 98) == 0
    return out


def unnormalise(images, data_dir, normalize="paper"):
    mean, std = input_normalization(mf.load(data_dir)["stats"], normalize)
    return images * torch.tensor(std).view(1, 3, 1, 1) + torch.tensor(mean).view(1, 3, 1, 1)


def nearest_colour(images, data_dir):
    rgb = unnormalise(images, data_dir).mean(dim=(2, 3))
    return torch.cdist(rgb, torch.tensor(COLOURS, dtype=torch.float32)).argmin(1)


def test_eval_shards_cover_every_sample_exactly_once(colour_shards):
    seen = collections.Counter()
    lengths = []
    for shard in range(4):
        loader = make_loader(colour_shards, "train", 32, shard_id=shard, num_shards=4, train=False, crop=56)
        batches = list(loader)
        lengths.append((len(loader), len(batches)))
        for images, labels, indices in batches:
            assert images.shape[1:] == (3, 56, 56) and images.dtype == torch.float32
            assert labels.dtype == torch.int64 and indices.dtype == torch.int64
            seen.update(indices.tolist())
    assert sorted(seen) == list(range(1003)) and set(seen.values()) == {1}
    assert all(a == b for a, b in lengths)


@pytest.mark.parametrize("batch, ten_crop", [(8, False), (1, True)])
def test_no_empty_eval_batch_when_a_shard_divides_by_the_batch(demo_shards, batch, ten_crop):
    """50 val samples over 3 shards are 16/17/17: the 16-sample shard divides by 8 (and 1) but DALI reads it for as
    many batches as the 17-sample ones need. An empty batch broke the 10-crop evaluation (an elastic run at 3)."""
    seen = []
    for shard in range(3):
        loader = make_loader(demo_shards, "val", batch, shard_id=shard, num_shards=3, train=False, crop=32,
                             ten_crop=ten_crop)
        sizes = [len(labels) for _, labels, _ in loader]
        assert len(sizes) == len(loader) and min(sizes) > 0
        seen.append(sum(sizes))
    assert seen == [16, 17, 17]


def test_labels_stay_with_their_pixels(colour_shards):
    for train in (True, False):
        loader = make_loader(colour_shards, "train", 50, shard_id=1, num_shards=3, train=train, crop=56)
        for images, labels, _ in loader:
            assert torch.equal(nearest_colour(images, colour_shards), labels)


def test_training_epochs_are_equal_length_on_every_shard_and_a_function_of_the_epoch(colour_shards):
    loaders = [make_loader(colour_shards, "train", 32, shard_id=s, num_shards=4, crop=56, seed=3) for s in range(4)]
    assert {len(ld) for ld in loaders} == {(1003 // 4) // 32}
    ld = loaders[1]
    epoch = lambda loader: [torch.cat(t) for t in zip(*loader)]  # noqa: E731  (images, labels, indices)
    continued = [epoch(ld) for _ in range(3)]  # epochs 0, 1, 2, each prepared in the background
    assert [(s.epoch, s.prepared) for s in ld.epoch_timings] == [(0, False), (1, True), (2, True)]
    jumped = make_loader(colour_shards, "train", 32, shard_id=1, num_shards=4, crop=56, seed=3, epoch=2)
    for a, b in zip(continued[2], epoch(jumped)):  # a resume at epoch 2: the same samples, order and augmentation
        assert torch.equal(a, b)
    ld.set_epoch(0)  # a jump back, past the prepared epoch 3
    for a, b in zip(continued[0], epoch(ld)):
        assert torch.equal(a, b)
    counts = [e["num_samples"] for e in mf.load(colour_shards)["splits"]["train"]["shards"]]
    starts = np.cumsum([0] + counts)  # a sample's idx is its position in the build's file order
    for e, (_, _, idx) in enumerate(continued):
        stretch = {i for p in rank_parts(counts, 3, e, 1, 4) for i in range(starts[p.file] + p.start,
                                                                            starts[p.file] + p.end)}
        assert len(idx) == len(ld) * 32 and len(set(idx.tolist())) == len(idx) and set(idx.tolist()) <= stretch
    assert not torch.equal(continued[0][2], continued[1][2])
    other = make_loader(colour_shards, "train", 32, shard_id=1, num_shards=4, crop=56, seed=4)
    assert not torch.equal(continued[0][2], epoch(other)[2])


def test_crop_and_flip_ranges(gradient_shards):
    loader = make_loader(gradient_shards, "train", 64, crop=224, lighting=0.0)
    images, _, _ = next(iter(loader))
    rgb = unnormalise(images, gradient_shards)
    red_row = rgb[:, 0, 112, :]  # red = x coordinate (0..255 across the 256 px source)
    flipped = red_row[:, 0] > red_row[:, -1]
    assert 10 < flipped.sum() < 54  # p = 0.5 over 64 images
    left = torch.where(flipped, red_row[:, -1], red_row[:, 0])  # the source x where the crop starts
    assert left.min() >= -3 and left.max() <= 32 + 3  # x offset in [0, 256 - 224]
    assert left.max() - left.min() > 10  # and it does vary
    green_top = rgb[:, 1, 0, 112]
    assert green_top.min() >= -3 and green_top.max() <= 35 and green_top.max() - green_top.min() > 10


def test_eval_center_crop_and_ten_crop_geometry(gradient_shards):
    centre, _, _ = next(iter(make_loader(gradient_shards, "train", 4, train=False, crop=224)))
    ten, _, _ = next(iter(make_loader(gradient_shards, "train", 4, train=False, crop=224, ten_crop=True)))
    assert ten.shape == (4, 10, 3, 224, 224)
    assert torch.allclose(ten[:, 8], centre)  # patch 8 = centre, unflipped
    for k in range(0, 10, 2):
        assert torch.allclose(ten[:, k + 1], ten[:, k].flip(-1))  # each patch is followed by its mirror
    red = unnormalise(ten[:, 0], gradient_shards)[:, 0, 112, 0]  # top-left patch starts at x = 0
    assert red.abs().max() < 4
    red = unnormalise(ten[:, 2], gradient_shards)[:, 0, 112, -1]  # top-right patch ends at x = 255
    assert (red - 255).abs().max() < 4


def test_lighting_noise_has_the_paper_statistics(colour_shards):
    st = mf.load(colour_shards)["stats"]
    vec, val = np.array(st["eigvec"]), np.array(st["eigval"])
    expected = np.sqrt(((vec * (val / 255.0)) ** 2).sum(1) * 0.1**2)  # per-channel sd of d, 0-255 scale
    loader = make_loader(colour_shards, "train", 200, crop=56, lighting=0.1)
    images, labels, _ = next(iter(loader))
    means = unnormalise(images, colour_shards).mean(dim=(2, 3)).numpy()
    spread = [means[labels.numpy() == k] - means[labels.numpy() == k].mean(0) for k in range(5)]
    measured = np.concatenate(spread).std(0)
    assert np.allclose(measured, expected, rtol=0.3), (measured, expected)
    plain, plain_labels, _ = next(iter(make_loader(colour_shards, "train", 200, crop=56, lighting=0.0)))
    flat = unnormalise(plain, colour_shards).mean(dim=(2, 3)).numpy()
    assert max(flat[plain_labels.numpy() == k].std(0).max() for k in range(5)) < 0.2 * expected.min()


def test_bf16_and_fp16_outputs(colour_shards):
    for dtype, torch_dtype in (("float16", torch.float16), ("bfloat16", torch.bfloat16)):
        images, _, _ = next(iter(make_loader(colour_shards, "train", 8, train=False, crop=56, dtype=dtype)))
        assert images.dtype == torch_dtype


def test_small_images_are_scaled_up(tmp_path):
    src = colour_tree(tmp_path / "src", 10, size=(40, 30))
    assert build(tmp_path / "s", "--src", src, "--size", 0) == 0  # originals kept: smaller than the crop
    images, labels, _ = next(iter(make_loader(tmp_path / "s", "train", 5, crop=224)))
    assert images.shape == (5, 3, 224, 224)
    assert torch.equal(nearest_colour(images, tmp_path / "s"), labels)


@pytest.fixture
def small_copy(demo_shards, tmp_path):
    import shutil
    dst = tmp_path / "shards"
    shutil.copytree(demo_shards, dst)
    return dst


@pytest.mark.parametrize("damage, message", [
    ("missing_tar", "missing"),
    ("missing_idx", "missing"),
    ("truncated_tar", "bytes, the manifest says"),
    ("unknown_format", "manifest version"),
    ("no_manifest", "not found"),
])
def test_broken_shards_give_clear_errors(small_copy, damage, message):
    tar = small_copy / "val" / "val-000000.tar"
    if damage == "missing_tar":
        tar.unlink()
    elif damage == "missing_idx":
        tar.with_suffix(".idx").unlink()
    elif damage == "truncated_tar":
        tar.write_bytes(tar.read_bytes()[:10000])
    elif damage == "unknown_format":
        m = json.loads((small_copy / "manifest.json").read_text())
        m["version"] = 99
        (small_copy / "manifest.json").write_text(json.dumps(m))
    elif damage == "no_manifest":
        (small_copy / "manifest.json").unlink()
    with pytest.raises(mf.ManifestError, match=message) as e:
        make_loader(small_copy, "val", 8, train=False)
    if damage in ("missing_tar", "truncated_tar"):
        assert str(tar) in str(e.value)


def test_corrupt_bytes_are_caught_with_verify(small_copy):
    tar = small_copy / "val" / "val-000000.tar"
    data = bytearray(tar.read_bytes())
    data[3000] ^= 0xFF
    tar.write_bytes(bytes(data))
    make_loader(small_copy, "val", 8, train=False)  # same size: the cheap check passes
    with pytest.raises(mf.ManifestError, match="sha256"):
        make_loader(small_copy, "val", 8, train=False, verify=True)


def test_bad_arguments(demo_shards):
    with pytest.raises(ValueError, match="fewer than one batch"):
        make_loader(demo_shards, "train", 100, num_shards=4)
    with pytest.raises(ValueError, match="shard_id"):
        make_loader(demo_shards, "train", 4, shard_id=4, num_shards=4)
    with pytest.raises(mf.ManifestError, match="no shards for split 'test'"):
        make_loader(demo_shards, "test", 4)
    with pytest.raises(ValueError, match="normalize must be one of paper, std, got 'unit'"):
        make_loader(demo_shards, "val", 4, train=False, normalize="unit")
    with pytest.raises(ValueError, match="central_square"):
        make_loader(demo_shards, "train", 4, random_resized_crop=True, central_square=True)


@pytest.mark.gpu
def test_mixed_decode_matches_cpu_decode(demo_shards):
    cpu, labels_cpu, idx_cpu = next(iter(make_loader(demo_shards, "val", 16, train=False)))
    gpu, labels_gpu, idx_gpu = next(iter(make_loader(demo_shards, "val", 16, train=False, device="cuda")))
    assert gpu.is_cuda and torch.equal(idx_cpu, idx_gpu.cpu()) and torch.equal(labels_cpu, labels_gpu.cpu())
    assert (gpu.cpu() - cpu).abs().mean() < 3  # grey levels; nvJPEG and libjpeg-turbo differ by rounding


def test_random_resized_crop_option(colour_shards):
    loader = make_loader(colour_shards, "train", 40, crop=48, random_resized_crop=True)
    images, labels, _ = next(iter(loader))
    assert images.shape == (40, 3, 48, 48)
    assert torch.equal(nearest_colour(images, colour_shards), labels)


@pytest.mark.parametrize("view", [dict(train=False), dict(train=False, ten_crop=True), dict(train=True, lighting=0.1)])
def test_paper_inputs_are_0_255_minus_the_mean_and_std_only_divides(demo_shards, view):
    """The same samples and augmentation under both settings: "paper" is exactly "std" times the std."""
    mean, std = (torch.tensor(v).view(3, 1, 1) for v in input_normalization(mf.load(demo_shards)["stats"], "std"))
    batch = {n: next(iter(make_loader(demo_shards, "train", 16, crop=64, normalize=n, seed=3, **view)))
             for n in ("paper", "std")}
    paper, scaled = batch["paper"][0], batch["std"][0]
    assert torch.equal(batch["paper"][2], batch["std"][2])
    torch.testing.assert_close(paper, scaled * std, rtol=1e-4, atol=1e-3)
    assert -mean.max() - 1 <= paper.min() and paper.max() <= 255 - mean.min() + 1  # 0-255 minus the mean
    assert paper.std() > 20 and 0.3 < scaled.std() < 3


def test_paper_inputs_have_mean_about_0_over_the_training_set(demo_shards):
    images = torch.cat([b[0] for b in make_loader(demo_shards, "train", 40, train=False, crop=64)])
    assert len(images) == 120
    # the manifest's mean is of the whole images (downsampled); these are centre crops: a few grey levels apart
    assert images.mean(dim=(0, 2, 3)).abs().max() < 8 and images.std() > 30


@pytest.fixture(scope="module")
def wide_gradient_shards(tmp_path_factory):
    """384x256 images whose red channel is the x coordinate (0..255 over 384 px): the central square is x 64..319."""
    tmp = tmp_path_factory.mktemp("wide")
    x = np.linspace(0, 255, 384)
    arr = np.stack([np.tile(x, (256, 1)), np.full((256, 384), 128.0), np.full((256, 384), 128.0)], -1)
    d = tmp / "src" / "train" / "g"
    d.mkdir(parents=True)
    for i in range(32):
        Image.fromarray(arr.astype(np.uint8)).save(d / f"{i}.png")
    out = tmp / "shards"
    assert build(out, "--src", tmp / "src", "--size", 256, "--quality", 98) == 0
    return out


@pytest.mark.parametrize("central_square, lowest, highest", [(True, 64, 96), (False, 0, 160)])
def test_training_crops_come_from_the_central_square(wide_gradient_shards, central_square, lowest, highest):
    loader = make_loader(wide_gradient_shards, "train", 32, crop=224, lighting=0.0, central_square=central_square)
    red = unnormalise(next(iter(loader))[0], wide_gradient_shards)[:, 0, 112, :]
    left = torch.minimum(red[:, 0], red[:, -1]) * 383 / 255  # the source x where the crop starts (flips included)
    assert left.min() >= lowest - 3 and left.max() <= highest + 3
    assert left.max() - left.min() > 10


def test_ten_patches_come_from_the_central_square(wide_gradient_shards):
    ten, _, _ = next(iter(make_loader(wide_gradient_shards, "train", 2, train=False, crop=224, ten_crop=True,
                                      central_square=True)))
    x = unnormalise(ten.flatten(0, 1), wide_gradient_shards).view(2, 10, 3, 224, 224)[:, :, 0, 112] * 383 / 255
    assert (x[:, 0, 0] - 64).abs().max() < 3 and (x[:, 2, -1] - 319).abs().max() < 3  # top-left, top-right
    centre, _, _ = next(iter(make_loader(wide_gradient_shards, "train", 2, train=False, crop=224,
                                         central_square=True)))
    torch.testing.assert_close(ten[:, 8], centre, atol=1.5, rtol=0)  # the centre patch: the loader's centre crop


@pytest.mark.parametrize("view", [dict(train=True, lighting=0.1), dict(train=False, ten_crop=True)])
def test_channels_last_is_the_same_batch_in_nhwc_memory(demo_shards, view):
    """channels_last=True: NHWC memory out of DALI, seen as NCHW without a copy; the same numbers as the default."""
    plain, labels, idx = next(iter(make_loader(demo_shards, "train", 8, crop=64, seed=2, **view)))
    nhwc, labels_cl, idx_cl = next(iter(make_loader(demo_shards, "train", 8, crop=64, seed=2, channels_last=True,
                                                    **view)))
    assert nhwc.shape == plain.shape and torch.equal(nhwc, plain)
    assert torch.equal(labels, labels_cl) and torch.equal(idx, idx_cl)
    flat = nhwc.flatten(0, 1) if nhwc.dim() == 5 else nhwc  # ten patches: what evaluation feeds the model
    assert flat.is_contiguous(memory_format=torch.channels_last) and not flat.is_contiguous()


def test_options_have_one_name_each_and_unknown_ones_are_named(demo_shards):
    from pipeline.loader_options import LoaderOptions, View
    assert View.of(True, ten_crop=True) is View.TRAINING and View.of(False, True) is View.TEN_PATCHES
    assert View.of(False) is View.CENTRE
    with pytest.raises(TypeError, match=r"unknown option\(s\) \['rrc'\]"):
        make_loader(demo_shards, "train", 4, rrc=True)
    with pytest.raises(ValueError, match="prefetch"):
        make_loader(demo_shards, "train", 4, prefetch=0)
    with pytest.raises(ValueError, match="handoff must be one of stream, host"):
        make_loader(demo_shards, "train", 4, handoff="async")
    loader = make_loader(demo_shards, "val", 4, train=False, prefetch=3, crop=32)
    assert loader.options == LoaderOptions(prefetch=3, crop=32) and loader.view is View.CENTRE
    # DALI's own iterator (a host wait per GPU batch) gives the same batches; on a CPU the two are the same path
    host = make_loader(demo_shards, "train", 8, crop=32, seed=4, handoff="host")
    stream = make_loader(demo_shards, "train", 8, crop=32, seed=4)
    for a, b in zip(host, stream):
        assert all(torch.equal(x, y) for x, y in zip(a, b))


@pytest.mark.gpu
def test_gpu_batches_come_on_the_device_without_a_torch_host_sync(demo_shards):
    loader = make_loader(demo_shards, "train", 8, crop=64, device="cuda", channels_last=True)
    batches = iter(loader)
    next(batches)  # the epoch's first batch was prepared (and synchronised) while the pipeline was built
    torch.cuda.set_sync_debug_mode("error")  # any synchronising torch call in the hand-off raises
    try:
        images, labels, _ = next(batches)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert images.is_cuda and labels.is_cuda and images.is_contiguous(memory_format=torch.channels_last)
    loader.close()
