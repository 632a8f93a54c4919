"""Step options the GPU check compares keep the paper's arithmetic: fused SGD makes the same update as the default
(foreach) SGD, in float64."""
import torch
from torch import nn

from cluster.loop import make_optimizer


def test_fused_sgd_is_the_same_update_in_float64():
    torch.manual_seed(0)
    models = [nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3)).double() for _ in range(2)]
    models[1].load_state_dict(models[0].state_dict())
    opts = [make_optimizer(m, 0.1, 0.9, 5e-4, decay_biases=False, fused=f) for m, f in zip(models, (False, True))]
    assert opts[1].defaults["fused"] and not opts[0].defaults.get("fused")
    x, y = torch.randn(8, 6, dtype=torch.float64), torch.randint(0, 3, (8,))
    for _ in range(3):
        for m, opt in zip(models, opts):
            opt.zero_grad()
            nn.functional.cross_entropy(m(x), y).backward()
            opt.step()
    for a, b in zip(*(m.parameters() for m in models)):
        torch.testing.assert_close(a, b, rtol=1e-13, atol=1e-15)
    assert [g["weight_decay"] for g in opts[1].param_groups] == [5e-4, 0.0]  # biases not decayed, as before
