"""launch.py --test-only: the paper's 10-crop top-1/top-5 error of a finished (or stopped) run's checkpoint on the
validation set, in this process, without Ray (the evaluation torchvision's references call --test-only).

    python cluster/launch.py --name my-run --test-only [--output-dir runs] [--data SHARDS] [-j 8]

The net is built from the run's config.json (cluster/report.py's single-device form, which loads the split net's
state_dict), the validation loader is cluster/worker.py's last-epoch 10-crop loader, and the numbers come from
cluster/loop.py's evaluate: the same definitions as a run's val_top1_error_10crop / val_top5_error_10crop.
"""
import dataclasses
import os
import sys
from pathlib import Path

import torch

from cluster.loop import evaluate, loader_settings, ten_crop_batch
from cluster.progress import bar
from cluster.recipe import TrainConfig
from cluster.report import ReportError, RunSettings, load_model_state, trained_model
from cluster.trained_run import RunError, final_checkpoint
from pipeline import manifest as mf
from pipeline import object_store
from pipeline.loader import make_loader


def test_only(args):
    """Print and return 0, or an error naming what is missing and return 2."""
    if not args.name:
        print("error: --test-only needs --name RUN (a folder under --output-dir)", file=sys.stderr)
        return 2
    run_dir = args.output_dir.resolve() / args.name
    try:
        cfg = TrainConfig.load(run_dir)
    except FileNotFoundError:
        print(f"error: --test-only: no run at {run_dir} (config.json missing). Check --output-dir and --name.",
              file=sys.stderr)
        return 2
    except ValueError as e:  # not JSON, or settings this version does not know (the message names them)
        print(f"error: --test-only: {run_dir / 'config.json'}: {e}", file=sys.stderr)
        return 2
    data = cfg.data if args.data is None else args.data if object_store.is_uri(args.data) else \
        str(Path(args.data).resolve())
    try:
        mf.load(data)
        checkpoint = final_checkpoint(run_dir, cfg.storage, cfg.name)
        settings = RunSettings.from_config({**vars(cfg), "data": data}, run_dir / "config.json")
        model = trained_model(settings, load_model_state(checkpoint, run_dir))
    except (ReportError, RunError, mf.ManifestError) as e:
        print(f"error: --test-only: {e}", file=sys.stderr)
        return 2
    device = torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    threads = args.threads or min(8, os.cpu_count() or 1)
    torch.set_num_threads(threads)
    # the run's own inputs and preprocessing (normalisation, central square), as its workers evaluated
    loader = make_loader(data, "val", ten_crop_batch(cfg.batch_size), train=False, ten_crop=True,
                         **loader_settings(dataclasses.replace(cfg, threads=threads), 0, 1, device))
    try:
        top1, top5, n = evaluate(model.to(device), loader, device, amp=cfg.amp, ten_crop=True,
                                 progress=lambda it: bar(it, len(it), "10-crop evaluation"))
    finally:
        loader.close()
    print(f"{run_dir.name}: 10-crop val top-1 error {top1:.4f}, top-5 error {top5:.4f} ({n} images, checkpoint "
          f"{checkpoint}, data {data}, {device})")
    return 0
