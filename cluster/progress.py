"""Progress for phases that can take minutes (the final 10-crop evaluation, --test-only): a tqdm bar where the
output is a terminal of this process, and timed lines inside a Ray worker, whose output reaches the driver line by
line (a bar's carriage returns would arrive as one line per refresh, or not at all)."""
import sys
import time

from tqdm import tqdm

EVERY_S = 15.0  # seconds between progress lines from a worker


def bar(iterable, total, what):
    """tqdm on stderr, as the shard builder shows its progress."""
    return tqdm(iterable, total=total, desc=what, unit="batch", mininterval=1.0, file=sys.stderr)


def timed_lines(iterable, total, what, log, every_s=EVERY_S, clock=time.monotonic):
    """Yield from iterable; every `every_s` seconds log 'what: done/total batches (pct), eta'. A phase shorter than
    every_s says nothing, and the last line is the caller's (its result)."""
    start = last = clock()
    for done, item in enumerate(iterable, 1):
        yield item
        now = clock()
        if now - last >= every_s and done < total:
            last = now
            eta = (now - start) / done * (total - done)
            log(f"{what}: {done}/{total} batches ({100 * done / total:.0f}%), about {eta:.0f}s left")
