"""Forward+backward time of one LRN layer: nn.LocalResponseNorm (per column) vs model/lrn.py's fast version (and,
with --compile, the fast version under torch.compile), on the shapes AlexNet normalises.

    python -m benchmarks.lrn_speed                          # CPU, batch 32, fp32, NCHW and channels_last
    python -m benchmarks.lrn_speed --device cuda -b 256 --bf16 --compile

Shapes: conv1 and conv2 outputs of one column (48x55x55, 128x27x27; the split form) and of both columns with
groups=2 (96x55x55; the grouped form). Repeats alternate between the implementations; the best of each is shown.
"""
import argparse
import time

import torch

from benchmarks.timing import sync
from model.lrn import FastLocalResponseNorm, GroupedLocalResponseNorm

SHAPES = {"conv1_column": (48, 55, 55, 1), "conv2_column": (128, 27, 27, 1), "conv1_grouped": (96, 55, 55, 2)}
PAPER = dict(size=5, alpha=5e-4, beta=0.75, k=2.0)  # torch's alpha convention: the paper's 1e-4 times n


def time_fwd_bwd(module, x, grad, iters, amp):
    def step():
        xi = x.detach().requires_grad_(True)
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=amp):
            y = module(xi)
        y.backward(grad.to(y.dtype))

    step()
    sync(x.device)
    start = time.perf_counter()
    for _ in range(iters):
        step()
    sync(x.device)
    return (time.perf_counter() - start) / iters * 1e3


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu", help="cpu or cuda[:N] (default: cpu)")
    p.add_argument("-b", "--batch-size", type=int, default=32, help="batch (default: 32)")
    p.add_argument("--iters", type=int, default=5, help="timed fwd+bwd passes per repeat (default: 5)")
    p.add_argument("--repeats", type=int, default=3, help="alternating repeats (default: 3)")
    p.add_argument("--bf16", action="store_true", help="bf16 input under autocast (default: fp32)")
    p.add_argument("--compile", action="store_true", help="also time the fast LRN under torch.compile (default: off)")
    args = p.parse_args(argv)
    dev = torch.device(args.device)
    print(f"{args.device}, {torch.get_num_threads()} threads, batch {args.batch_size}, "
          f"{'bf16 autocast' if args.bf16 else 'fp32'}: fwd+bwd ms, best of {args.repeats}")
    for shape_name, (c, h, w, groups) in SHAPES.items():
        impls = {"torch": GroupedLocalResponseNorm(groups=groups, **PAPER),
                 "fast": FastLocalResponseNorm(groups=groups, **PAPER)}
        if args.compile:
            impls["fast_compiled"] = torch.compile(FastLocalResponseNorm(groups=groups, **PAPER))
        for layout in (torch.contiguous_format, torch.channels_last):
            x = (torch.randn(args.batch_size, c, h, w, device=dev) * 50).relu().contiguous(memory_format=layout)
            if args.bf16:
                x = x.to(torch.bfloat16)
            grad = torch.randn_like(x)
            best = {name: float("inf") for name in impls}
            for _ in range(args.repeats):
                for name, module in impls.items():
                    best[name] = min(best[name], time_fwd_bwd(module, x, grad, args.iters, args.bf16))
            shown = "  ".join(f"{n} {t:8.2f}" for n, t in best.items())
            tag = "channels_last" if layout == torch.channels_last else "nchw"
            print(f"  {shape_name:14s} {tag:13s} {shown}   fast is {best['torch'] / best['fast']:.2f}x torch")


if __name__ == "__main__":
    main()
