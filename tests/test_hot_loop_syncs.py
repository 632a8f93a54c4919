"""The training loop makes no host sync per step outside its print interval: no .item(), .cpu(), .tolist(),
.numpy() or bool(tensor) per step (on a GPU each waits for every queued kernel). Counted on CPU, where the calls are
the same; gpu_check's fed steps run under torch.cuda.set_sync_debug_mode("warn") on a GPU."""
import pytest
import torch
from torch import nn

from cluster.loop import LrSchedule, make_optimizer, train_one_epoch

SYNCING = ("item", "cpu", "tolist", "numpy", "__bool__")


class Batches:
    def __init__(self, n, batch=4):
        g = torch.Generator().manual_seed(0)
        self.data = [(torch.randn(batch, 3, 8, 8, generator=g), torch.randint(0, 3, (batch,), generator=g),
                      torch.arange(batch)) for _ in range(n)]

    def __len__(self):
        return len(self.data)

    def __iter__(self):
        return iter(self.data)


@pytest.fixture
def sync_calls(monkeypatch):
    calls = []
    for name in SYNCING:
        original = getattr(torch.Tensor, name)

        def counted(self, *args, _name=name, _original=original, **kwargs):
            calls.append(_name)
            return _original(self, *args, **kwargs)
        monkeypatch.setattr(torch.Tensor, name, counted)
    return calls


@pytest.mark.parametrize("steps, print_freq, logged", [(12, 100, 1), (12, 4, 3)])
def test_train_one_epoch_syncs_only_at_its_print_interval_and_end(sync_calls, steps, print_freq, logged):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3))
    opt = make_optimizer(model, 0.01, 0.9, 5e-4, decay_biases=False)
    lines = []
    train_one_epoch(model, opt, Batches(steps), epoch=0, schedule=LrSchedule(0.01, 0), peak_lr=0.01,
                    device=torch.device("cpu"), log=lines.append, print_freq=print_freq)
    assert len(lines) == logged
    # per log line: the running loss's .item(); at the end: the loss and error sums (one all_sum) and its .tolist()
    assert sync_calls.count("item") == logged + 2 and sync_calls.count("tolist") == 1
    assert not {"cpu", "numpy", "__bool__"} & set(sync_calls), sync_calls
