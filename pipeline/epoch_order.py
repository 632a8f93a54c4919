"""Which training samples each rank reads in an epoch: a pure function of (seed, epoch, rank, world size).

Epoch e puts the split's shard files in an order drawn from (seed, e), the same on every rank, and concatenates
them; rank r of W reads its contiguous stretch [N*r//W, N*(r+1)//W) of that concatenation (mostly whole files; at
most one partial file at each end), then shuffles it through DALI's buffer. So every epoch covers each sample once
across ranks, a rank's samples change from epoch to epoch (about 1/W of them stay on the rank, given many more
files than ranks), and a run that resumes at epoch k, even with another world size, reads what an uninterrupted
run of that size reads. torchvision's DistributedSampler permutes samples; files are the finest unit that keeps
reads sequential.

Batch-mates: two samples that shared a batch in one epoch share one again in the next about 1 + F*N/(4*B^2) times
as often as chance (F samples per shard file, N in the split, B the loader's shuffle buffer); benchmarks/batch_mates.py
simulates it for ImageNet, and docs/BENCHMARKS.md has its figures beside the old fixed order's. Smaller shard files
or a larger buffer bring it nearer 1.

The order uses SHA-256 rather than a library RNG so that it never changes with a numpy or Python upgrade.
"""
import hashlib
from dataclasses import dataclass
from pathlib import Path

from pipeline import shard_writer


@dataclass(frozen=True)
class FilePart:
    """Samples [start, end) of file `file` (its position in the manifest's list of the split's shards)."""
    file: int
    start: int
    end: int


def shard_range(n, shard_id, num_shards):
    """The [start, end) of `n` samples that part `shard_id` of `num_shards` gets (DALI's reader splits the same way)."""
    return n * shard_id // num_shards, n * (shard_id + 1) // num_shards


def file_order(num_files, seed, epoch):
    """The files' order in `epoch`: a permutation of range(num_files), the same wherever it is computed."""
    return sorted(range(num_files), key=lambda i: hashlib.sha256(f"{seed} {epoch} {i}".encode()).digest())


def rank_parts(counts, seed, epoch, rank, world):
    """The FileParts rank `rank` of `world` reads in `epoch`, in reading order; counts[i] = samples in file i."""
    start, end = shard_range(sum(counts), rank, world)
    parts, offset = [], 0
    for f in file_order(len(counts), seed, epoch):
        lo, hi = max(start, offset), min(end, offset + counts[f])
        if lo < hi:
            parts.append(FilePart(f, lo - offset, hi - offset))
        offset += counts[f]
        if offset >= end:
            break
    return parts


def part_indexes(parts, idx_paths, counts, out_dir):
    """One DALI index path per part: the file's own .idx for a whole file, else a new index of just the part's
    lines, written to out_dir (DALI reads whole files only; an index that lists part of a tar is still valid).
    Giving DALI only this rank's files, not all of them, keeps its index parsing and metadata to 1/W."""
    paths = []
    for p in parts:
        if (p.start, p.end) == (0, counts[p.file]):
            paths.append(str(idx_paths[p.file]))
            continue
        lines = Path(idx_paths[p.file]).read_text().splitlines()[1:]  # line 0 is the "<version> <count>" header
        if len(lines) != counts[p.file]:
            raise ValueError(f"{idx_paths[p.file]}: {len(lines)} samples, the manifest says {counts[p.file]}. "
                             "Check the shards with python pipeline/build_shards.py --verify --out DIR.")
        path = Path(out_dir) / f"{p.file}-{p.start}-{p.end}.idx"
        path.write_text(f"{shard_writer.INDEX_VERSION} {p.end - p.start}\n"
                        + "".join(line + "\n" for line in lines[p.start:p.end]))
        paths.append(str(path))
    return paths
