"""Forward+backward img/s of named ways to run one AlexNet replica (benchmarks/model_variants.py), or where their time
goes (--profile).

    python -m benchmarks.model_speed                               # CPU, batch 32, fp32: torch's LRN vs the fast one
    python -m benchmarks.model_speed --variants single,fast_lrn          # the split's cost over single-device (grouped)
    python -m benchmarks.model_speed --device cuda -b 128 256 --variants torch_lrn,fast_lrn,fast_lrn_cudnn,compiled
    python -m benchmarks.model_speed --device cuda -b 256 --variants torch_lrn,compiled --profile --out prof/

Variants: torch_lrn (nn.LocalResponseNorm, the replica before the fast LRN), fast_lrn (model/lrn.py), fast_lrn_cudnn
(+ cudnn.benchmark), compiled (+ torch.compile), compiled_torch_lrn, cudagraphs (compile mode reduce-overhead,
GPU only), no_lrn (the ceiling), single / single_torch_lrn (grouped convolutions on one device). Split variants
put both columns on --device. Repeats alternate over all (variant, batch) pairs; the best of each is reported.
"""
import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path

import torch

from benchmarks.model_variants import build, cudnn_benchmark, measure, parse_variants
from benchmarks.profiling import markdown_table, profile_fwd_bwd


def get_args_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu", help="cpu or cuda[:N] (default: cpu)")
    p.add_argument("--variants", default="torch_lrn,fast_lrn",
                   help="comma-separated variant names, see above (default: torch_lrn,fast_lrn)")
    p.add_argument("-b", "--batch-size", type=int, nargs="+", default=None,
                   help="one or more batch sizes (default: 32 on CPU, 256 on GPU)")
    p.add_argument("--crop", type=int, default=224, help="input size (default: 224)")
    p.add_argument("--iters", type=int, default=None, help="timed steps per repeat (default: 5 on CPU, 30 on GPU)")
    p.add_argument("--repeats", type=int, default=3, help="alternating repeats of every variant (default: 3)")
    p.add_argument("--amp", action=argparse.BooleanOptionalAction, default=None,
                   help="bf16 autocast (default: on for CUDA, off on CPU)")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                   help="channels_last weights and input (default: on for CUDA, off on CPU)")
    p.add_argument("--compile-backend", default="inductor",
                   help="torch.compile backend of the compiled variants: inductor, aot_eager or eager "
                        "(default: inductor)")
    p.add_argument("--profile", action="store_true",
                   help="instead of timing, profile each variant at the first batch size and print its top kernels "
                        "(default: off)")
    p.add_argument("--top", type=int, default=15, help="kernels listed per profile (default: 15)")
    p.add_argument("--out", type=Path, default=None,
                   help="folder for model_bench.json (and chrome traces with --profile) (default: none)")
    return p


def run_profiles(args, variants, batch, kw):
    results = {}
    for v in variants:
        model = build(v, args.device, channels_last=kw["channels_last"], compile_backend=args.compile_backend)
        trace = args.out / f"trace_{v.name}.json" if args.out else None
        with cudnn_benchmark(v.cudnn_benchmark):
            prof = profile_fwd_bwd(model, batch, args.crop, args.device, amp=kw["amp"],
                                   channels_last=kw["channels_last"], top=args.top, trace_path=trace)
        results[v.name] = prof.as_dict()
        unit = "GPU kernels" if prof.device_kind == "cuda" else "CPU ops"
        print(f"\n{v.name}, batch {batch}: {prof.wall_ms_per_step:.1f} ms/step wall, {unit} "
              f"{prof.kernel_ms_per_step:.1f} ms/step\n{markdown_table(prof.top)}")
        del model
    return results


def main(argv=None):
    args = get_args_parser().parse_args(argv)
    try:
        variants = parse_variants(args.variants)
    except ValueError as e:
        get_args_parser().error(str(e))
    gpu = args.device.startswith("cuda")
    if gpu and not torch.cuda.is_available():
        get_args_parser().error(f"--device {args.device}: no CUDA device here (use --device cpu)")
    batches = args.batch_size or [256 if gpu else 32]
    kw = dict(amp=gpu if args.amp is None else args.amp,
              channels_last=gpu if args.channels_last is None else args.channels_last)
    result = {"device": torch.cuda.get_device_name(torch.device(args.device)) if gpu else "cpu",
              "threads": torch.get_num_threads(), "crop": args.crop, **kw}
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
    if args.profile:
        result["profiles"] = run_profiles(args, variants, batches[0], kw)
    else:
        timings = measure(variants, args.device, batches, crop=args.crop, iters=args.iters or (30 if gpu else 5),
                          repeats=args.repeats, compile_backend=args.compile_backend, **kw)
        result["timings"] = [asdict(t) | {"best_img_s": t.best} for t in timings]
        print(f"{result['device']}, {result['threads']} threads, amp={kw['amp']}, "
              f"channels_last={kw['channels_last']}, best of {args.repeats}:")
        for b in batches:
            rows = [t for t in timings if t.batch == b]
            base = rows[0].best
            for t in rows:
                shown = t.error or f"{t.best:,.1f} img/s" + (f"  ({t.best / base:.2f}x {rows[0].variant})"
                                                             if base and t is not rows[0] else "")
                print(f"  batch {b:4d}  {t.variant:20s} {shown}")
    if args.out:
        (args.out / "model_bench.json").write_text(json.dumps(result, indent=1))
    else:
        print(json.dumps(result, indent=1))
    return 1 if any(t.get("error") for t in result.get("timings", [])) else 0


if __name__ == "__main__":
    sys.exit(main())
