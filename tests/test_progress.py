"""Progress of long phases: timed lines from a worker (the final 10-crop evaluation) and a bar for --test-only."""
import torch

from cluster.loop import evaluate
from cluster.progress import timed_lines


class Clock:
    def __init__(self, step):
        self.now, self.step = 0.0, step

    def __call__(self):
        self.now += self.step
        return self.now


def test_timed_lines_say_how_far_and_how_long_at_most_every_interval():
    lines = []
    items = list(timed_lines(range(10), 10, "final 10-crop evaluation", lines.append, every_s=20, clock=Clock(6)))
    assert items == list(range(10))  # nothing lost or reordered
    # a batch every 6 s: a line after 4 batches (24 s), 8 (48 s); none at the end (the caller prints the result)
    assert lines == ["final 10-crop evaluation: 4/10 batches (40%), about 36s left",
                     "final 10-crop evaluation: 8/10 batches (80%), about 12s left"]


def test_a_short_phase_says_nothing():
    lines = []
    list(timed_lines(range(3), 3, "x", lines.append, every_s=15, clock=Clock(1)))
    assert lines == []


def test_evaluate_goes_through_the_progress_wrapper_and_counts_every_image():
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 6)
    batches = [(torch.randn(5, 4), torch.randint(0, 6, (5,)), None) for _ in range(3)]
    seen = []

    def progress(it):
        for item in it:
            seen.append(len(item[1]))
            yield item
    wrapped = evaluate(model, batches, torch.device("cpu"), progress=progress)
    assert seen == [5, 5, 5] and wrapped == evaluate(model, batches, torch.device("cpu"))
