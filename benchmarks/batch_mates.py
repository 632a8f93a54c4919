"""How often two samples that shared a batch in one epoch share one again in the next, against chance: the loader's
file order (pipeline/epoch_order.py) through a simulation of DALI's shuffle buffer (each draw picks a random sample
of the buffer and refills its place with the next one read), no images involved.

    python -m benchmarks.batch_mates --samples 1281167 --ranks 8 --buffer 16384   # ImageNet: ~1 min, 6.5 GB
    python -m benchmarks.batch_mates --samples 1281167 --ranks 4 --buffer 1024 --fixed   # the old fixed order

The formula in epoch_order.py, 1 + F*N/(4*B^2), is printed beside the measurement.
"""
import argparse

import numpy as np

from pipeline.epoch_order import rank_parts


def rank_epoch(order, buffer, batch, steps, rng):
    """The batches a rank yields from `order` (sample ids in reading order), as (steps, batch)."""
    order, draws = order.tolist(), rng.random(steps * batch).tolist()  # plain Python: this loop is the cost
    buf, out, nxt = order[:buffer], [], buffer
    for u in draws:
        i = int(u * len(buf))
        out.append(buf[i])
        if nxt < len(order):
            buf[i], nxt = order[nxt], nxt + 1
        else:
            buf[i] = buf[-1]
            buf.pop()
    return np.array(out).reshape(steps, batch)


def batch_pairs(batches, n):
    i, j = np.triu_indices(batches.shape[1], 1)
    a, b = batches[:, i].ravel(), batches[:, j].ravel()
    return np.minimum(a, b).astype(np.int64) * n + np.maximum(a, b)  # unique: a sample is in one batch an epoch


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--samples", type=int, default=320000, help="samples in the split, N (default: 320000)")
    p.add_argument("--ranks", type=int, default=4, help="data-parallel ranks (default: 4)")
    p.add_argument("--file-size", type=int, default=1000, help="samples per shard file, F (default: 1000)")
    p.add_argument("--buffer", type=int, default=8192, help="shuffle buffer, B (default: 8192)")
    p.add_argument("-b", "--batch-size", type=int, default=256, help="batch per rank (default: 256)")
    p.add_argument("--fixed", action="store_true",
                   help="the old order instead: every rank the same contiguous part every epoch (default: off)")
    args = p.parse_args(argv)
    n, f = args.samples, args.file_size
    counts = [f] * (n // f)
    n = sum(counts)
    steps = (n // args.ranks) // args.batch_size
    epochs = []
    for epoch in range(2):
        batches = []
        for r in range(args.ranks):
            if args.fixed:
                order = np.arange(n * r // args.ranks, n * (r + 1) // args.ranks)
            else:
                order = np.concatenate([np.arange(p.file * f + p.start, p.file * f + p.end)
                                        for p in rank_parts(counts, 0, epoch, r, args.ranks)])
            rng = np.random.default_rng([epoch, r])
            batches.append(rank_epoch(order, min(args.buffer, len(order)), args.batch_size, steps, rng))
        epochs.append(batch_pairs(np.concatenate(batches), n))
    again = len(np.intersect1d(epochs[0], epochs[1], assume_unique=True))
    chance = len(epochs[0]) * (args.batch_size - 1) / (n - 1)
    kind = "the old fixed order" if args.fixed else "the loader's order"
    print(f"{kind}, N={n} ranks={args.ranks} F={f} B={args.buffer} batch={args.batch_size}: "
          f"{again} pairs met again, chance {chance:.0f}: {again / chance:.2f}x "
          f"(1 + F*N/(4*B^2) = {1 + f * n / (4 * args.buffer ** 2):.2f})")


if __name__ == "__main__":
    main()
