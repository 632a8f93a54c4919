"""Chosen samples of a split read straight from its shards, and the evaluation view of one image, without DALI.

For code that needs a few images in an ordinary process (the figures of a finished run), not for training:

    positions = subset_positions(manifest, "train", limit=20000, seed=0)   # a bounded, seeded part of the split
    for sample in iter_samples(data_dir, manifest, "train", positions):    # Sample(jpg, label, idx, position)
        pixels = eval_view(sample.jpg, crop=224)                           # what the evaluation loader shows

A sample's *position* is its place in the split's shards taken in manifest order (shard 0's samples first); the
DALI index file next to each tar gives every member's byte offset, so any sample is one seek away.
"""
import bisect
import io
from dataclasses import dataclass

import numpy as np
from PIL import Image

from pipeline import manifest as mf
from pipeline.loader_options import resized_shorter
from pipeline.stats import input_normalization


@dataclass(frozen=True)
class Sample:
    jpg: bytes
    label: int  # the `cls` member
    idx: int  # the `idx` member: the sample's index within its split, as the loader reports it
    position: int  # its place in the split's shard order: what iter_samples takes


class SplitShards:
    """The shard files of one split, and where each sample's members lie in them (from the .idx files)."""

    def __init__(self, data_dir, manifest, split):
        self.files = mf.split_files(data_dir, manifest, split)
        counts = [entry["num_samples"] for _, _, entry in self.files]
        self.starts = np.concatenate([[0], np.cumsum(counts)]).tolist()  # position of each shard's first sample
        self.num_samples = self.starts[-1]
        self._offsets = {}  # shard number -> [{member: (offset, size)}], parsed on first use

    def locate(self, position):
        """(shard number, sample number within the shard) of a split position."""
        if not 0 <= position < self.num_samples:
            raise IndexError(f"sample position {position} is outside the split's {self.num_samples} samples")
        shard = bisect.bisect_right(self.starts, position) - 1
        return shard, position - self.starts[shard]

    def members(self, shard):
        if shard not in self._offsets:
            tar, idx, entry = self.files[shard]
            lines = idx.read_text().splitlines()
            if len(lines) != entry["num_samples"] + 1:
                raise mf.ManifestError(f"{idx}: {len(lines) - 1} samples listed, the manifest says "
                                       f"{entry['num_samples']}. Rebuild the shards.")
            table = []
            for line in lines[1:]:  # per member: "ext offset size name" (DALI's wds2idx format v1.2)
                fields = line.split()
                table.append({fields[i]: (int(fields[i + 1]), int(fields[i + 2])) for i in range(0, len(fields), 4)})
            self._offsets[shard] = table
        return self._offsets[shard]


def _read_member(f, tar, table, name):
    if name not in table:
        raise mf.ManifestError(f"{tar}: a sample has no {name!r} member. Rebuild the shards.")
    offset, size = table[name]
    f.seek(offset)
    data = f.read(size)
    if len(data) != size:
        raise mf.ManifestError(f"{tar}: truncated at byte {offset + len(data)}. Rebuild or restore the shards.")
    return data


def iter_samples(data_dir, manifest, split, positions):
    """Yield the Sample at each position, in the order given; each shard file is opened once per run of positions
    that fall inside it, so positions sorted by shard read sequentially."""
    shards = SplitShards(data_dir, manifest, split)
    current, f = None, None
    try:
        for position in positions:
            shard, number = shards.locate(int(position))
            if shard != current:
                if f is not None:
                    f.close()
                current, f = shard, mf.open_shard(shards.files[shard][0])
            tar, table = shards.files[shard][0], shards.members(shard)[number]
            label = int(_read_member(f, tar, table, "cls"))
            idx = int(_read_member(f, tar, table, "idx"))
            yield Sample(_read_member(f, tar, table, "jpg"), label, idx, int(position))
    finally:
        if f is not None:
            f.close()


def read_samples(data_dir, manifest, split, positions):
    return list(iter_samples(data_dir, manifest, split, positions))


def subset_positions(manifest, split, limit, seed):
    """Positions of at most `limit` samples of a split: whole shard files in a seeded random order, the last one
    cut short. Shards hold globally shuffled samples, so whole files are a fair sample and read sequentially."""
    if limit < 1:
        raise ValueError(f"the subset size must be >= 1, got {limit}")
    shards = manifest["splits"][split]["shards"]
    starts = np.concatenate([[0], np.cumsum([s["num_samples"] for s in shards])])
    positions = []
    for shard in np.random.default_rng([seed, 0]).permutation(len(shards)):
        take = min(int(shards[shard]["num_samples"]), limit - len(positions))
        positions.extend(range(int(starts[shard]), int(starts[shard]) + take))
        if len(positions) == limit:
            break
    return positions


def eval_view(jpg, crop):
    """The evaluation loader's view of an image as uint8 HWC: shorter side scaled to round(crop * 256 / 224), then
    the centre crop x crop (pipeline/loader.py does the same with DALI)."""
    with Image.open(io.BytesIO(jpg)) as im:
        im = im.convert("RGB")
        size = resized_shorter(*im.size, round(crop * 256 / 224))
        if size != im.size:
            im = im.resize(size, Image.BILINEAR)
        left, top = (size[0] - crop + 1) // 2, (size[1] - crop + 1) // 2  # DALI rounds half a pixel up
        return np.asarray(im.crop((left, top, left + crop, top + crop)), dtype=np.uint8)


def normalise(views, stats, normalize):
    """uint8 HWC views -> float32 NCHW, (x - mean) / std per channel on the 0-255 scale with the run's declared input
    normalisation (pipeline/stats.py; "paper": no division), as the loader's crop_mirror_normalize does."""
    mean, std = input_normalization(stats, normalize)
    x = np.stack(views).astype(np.float32)
    x = (x - np.asarray(mean, dtype=np.float32)) / np.asarray(std, dtype=np.float32)
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))
