"""The training order across epochs and ranks: the pure order functions, then the DALI loader at a scale where the
shuffle buffer and the file order matter (40,000 tiny samples in 400 shard files, 4 ranks)."""
import io
import itertools
import shutil

import numpy as np
import pytest
import torch
from conftest import build
from PIL import Image

from pipeline import manifest as mf
from pipeline.epoch_order import FilePart, file_order, part_indexes, rank_parts
from pipeline.loader import make_loader
from pipeline.shard_writer import ShardWriter

FILES, PER_FILE, RANKS, BATCH = 400, 100, 4, 32


@pytest.mark.parametrize("counts, world", [([100] * 10 + [3], 4), ([5, 7, 1], 4), ([40] * 3, 7), ([10], 1)])
def test_ranks_split_every_epoch_exactly(counts, world):
    n = sum(counts)
    for epoch in range(3):
        order = file_order(len(counts), seed=1, epoch=epoch)
        assert sorted(order) == list(range(len(counts)))
        reads = [(p.file, i) for r in range(world) for p in rank_parts(counts, 1, epoch, r, world)
                 for i in range(p.start, p.end)]
        assert reads == [(f, i) for f in order for i in range(counts[f])]  # the whole order, once, rank by rank
        sizes = [sum(p.end - p.start for p in rank_parts(counts, 1, epoch, r, world)) for r in range(world)]
        assert max(sizes) - min(sizes) <= 1 and min(sizes) == n // world


def test_file_order_depends_on_seed_and_epoch_only():
    assert file_order(50, 0, 3) == file_order(50, 0, 3)
    assert len({tuple(file_order(50, s, e)) for s in range(3) for e in range(3)}) == 9


def test_part_indexes_list_only_the_parts_samples(tmp_path):
    idx = tmp_path / "a.idx"
    idx.write_text("v1.2 3\n" + "".join(f"jpg {512 * (2 * k + 1)} 10 {k}.jpg\n" for k in range(3)))
    whole, part = part_indexes([FilePart(0, 0, 3), FilePart(0, 1, 3)], [idx], [3], tmp_path)
    assert whole == str(idx)
    assert open(part).read() == "v1.2 2\njpg 1536 10 1.jpg\njpg 2560 10 2.jpg\n"
    with pytest.raises(ValueError, match="a.idx: 3 samples, the manifest says 4"):
        part_indexes([FilePart(0, 0, 2)], [idx], [4], tmp_path)


@pytest.fixture(scope="module")
def many_shards(tmp_path_factory):
    """FILES x PER_FILE samples of one 8 x 8 JPEG (only the order is under test), idx = position in file order."""
    tmp = tmp_path_factory.mktemp("many")
    Image.new("RGB", (8, 8), (200, 40, 40)).save(tmp / "one.png")
    (tmp / "src" / "train" / "c0").mkdir(parents=True)
    (tmp / "one.png").rename(tmp / "src" / "train" / "c0" / "one.png")
    out = tmp / "shards"
    assert build(out, "--src", tmp / "src", "--size", 8) == 0  # a real manifest: statistics, build settings
    man = mf.load(out)
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 40, 40)).save(buf, "JPEG", quality=90)
    shards = []
    for f in range(FILES):
        with ShardWriter(out / "train" / f"many-{f:06d}.tar") as w:
            for i in range(f * PER_FILE, (f + 1) * PER_FILE):
                w.add(i, 0, buf.getvalue())
        shards.append(w.info)
    man["splits"]["train"] = {"num_samples": FILES * PER_FILE, "shards": shards}
    mf.write(out, man)
    yield out
    shutil.rmtree(tmp, ignore_errors=True)  # ~230 MB of tar headers


def batches_of(loader):
    return torch.stack([idx for _, _, idx in loader]).numpy()  # (steps, batch) sample indices


def batch_pairs(batches):
    i, j = np.triu_indices(batches.shape[1], 1)
    a, b = batches[:, i].ravel(), batches[:, j].ravel()
    return set((np.minimum(a, b) * FILES * PER_FILE + np.maximum(a, b)).tolist())


@pytest.mark.slow
def test_every_epoch_a_new_part_for_every_rank_exactly_once(many_shards):
    n = FILES * PER_FILE
    loaders = [make_loader(many_shards, "train", BATCH, shard_id=r, num_shards=RANKS, crop=8, resize=8, seed=5)
               for r in range(RANKS)]
    assert loaders[0].spec.initial_fill == n // RANKS  # the default buffer (16384), capped by the share
    epochs = [[batches_of(ld) for ld in loaders] for _ in range(2)]  # [epoch][rank] -> (steps, batch)
    steps = (n // RANKS) // BATCH
    for e, ranks in enumerate(epochs):
        assert all(b.shape == (steps, BATCH) for b in ranks)  # ranks step together
        seen = np.concatenate([b.ravel() for b in ranks])
        assert len(np.unique(seen)) == len(seen)  # nothing twice, within or across ranks
        for r, b in enumerate(ranks):  # each rank reads its part of this epoch's order, all but < 1 batch of it
            part = {f * PER_FILE + i for p in rank_parts([PER_FILE] * FILES, 5, e, r, RANKS)
                    for f, i in itertools.product([p.file], range(p.start, p.end))}
            assert set(b.ravel().tolist()) <= part and len(part) - b.size < BATCH
    for r in range(RANKS):  # a rank keeps about 1/RANKS of its samples from one epoch to the next
        kept = len(np.intersect1d(epochs[0][r], epochs[1][r])) / epochs[0][r].size
        assert 0.12 < kept < 0.38, (r, kept)
    pairs = [set().union(*(batch_pairs(b) for b in ranks)) for ranks in epochs]
    chance = len(pairs[0]) * (BATCH - 1) / (n - 1)  # pairs that would meet again in a uniformly random order
    again = len(pairs[0] & pairs[1])
    assert again < 3 * chance, (again, chance)
    resumed = make_loader(many_shards, "train", BATCH, shard_id=2, num_shards=RANKS, crop=8, resize=8, seed=5,
                          epoch=1)
    assert np.array_equal(batches_of(resumed), epochs[1][2])
