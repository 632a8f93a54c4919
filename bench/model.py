"""Forward+backward img/s of the split AlexNet vs the single-device (grouped) form on the same device.

    python bench/model.py                      # CPU, batch 32 (fp32)
    python bench/model.py --device cuda        # GPU, batch 128, bf16 autocast + channels_last

The split form runs each column as its own kernels and concatenates at conv3/fc6/fc7/fc8; the grouped form runs
one grouped convolution per layer. Target: the split costs <= 10% over single-device on the same device.
"""
import argparse
import json
import sys
from pathlib import Path

sys.path[0] = str(Path(__file__).resolve().parents[1])  # the repo root, not bench/ (this file is not `model`)

import torch  # noqa: E402

from bench.timing import fwd_bwd_images_per_second  # noqa: E402
from model import AlexNet, GroupedAlexNet  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    p.add_argument("-b", "--batch-size", type=int, default=None, help="batch (default: 32 on CPU, 128 on GPU)")
    p.add_argument("--iters", type=int, default=None, help="timed steps (default: 5 on CPU, 30 on GPU)")
    p.add_argument("--repeats", type=int, default=3, help="alternating repeats of the pair (default: 3)")
    args = p.parse_args(argv)
    gpu = args.device.startswith("cuda")
    batch = args.batch_size or (128 if gpu else 32)
    kw = dict(amp=gpu, channels_last=gpu, iters=args.iters or (30 if gpu else 5), warmup=2)
    torch.manual_seed(0)
    grouped = GroupedAlexNet().to(args.device)
    split = AlexNet().place(args.device, args.device)
    if gpu:
        grouped.to(memory_format=torch.channels_last)
        split.to(memory_format=torch.channels_last)
    rates = {"single": [], "split": []}
    for _ in range(args.repeats):  # alternate, so drift of the machine hits both alike
        rates["single"].append(fwd_bwd_images_per_second(grouped, batch, 224, args.device, **kw))
        rates["split"].append(fwd_bwd_images_per_second(split, batch, 224, args.device, **kw))
    best = {k: max(v) for k, v in rates.items()}
    result = {"device": torch.cuda.get_device_name() if gpu else "cpu", "threads": torch.get_num_threads(),
              "batch": batch, "single_img_s": best["single"], "split_img_s": best["split"],
              "split_overhead": best["single"] / best["split"] - 1, "all": rates}
    print(json.dumps(result, indent=1))
    print(f"single-device {best['single']:.1f} img/s, split {best['split']:.1f} img/s: "
          f"split costs {100 * result['split_overhead']:+.1f}% (target <= 10%)")


if __name__ == "__main__":
    main()
