"""Classify image files with a trained run: the top-5 classes and their probabilities, by name.

    python -m cluster.classify --name my-run photo.jpg more/photos/        # top-5 of each, centre crop
    python -m cluster.classify --name my-run --ten-crop photo.jpg          # the paper's ten patches, averaged
    python -m cluster.classify --run runs/my-run big/folder --out results.csv   # or .jsonl; a progress bar
    python -m cluster.classify --checkpoint runs/my-run/checkpoint_2026-12-05_15-11-50.070930 photo.jpg

The images go through the preprocessing the run trained with (cluster/preprocess.py): the shard builder's resize of
the shorter side and JPEG re-encode, the validation loader's resize, crop and input normalisation, all read from the
run folder (inputs.json, config.json; an older run reads its shards' manifest.json, --data). Ten patches: the softmax
of the ten is averaged, as the run's 10-crop evaluation does. Folders are searched for image files (by extension);
a file that cannot be read or decoded is reported by name and skipped, and the exit code is then 1 (2: the run
itself cannot be used). CPU or GPU (--device); the net is the single-device form of the two columns.
"""
import argparse
import csv
import json
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from cluster.preprocess import BadImage, PreprocessError, check_supported, patches
from cluster.trained_run import RunError, add_run_arguments, open_run, run_folder, shown

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm", ".jfif"}


@dataclass
class Result:
    path: str
    top: list  # [(class index, probability)], most probable first; [] when the file failed
    error: str | None = None


def get_args_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("images", nargs="+", type=Path, help="image files, or folders searched for them")
    add_run_arguments(p)
    p.add_argument("--ten-crop", action="store_true",
                   help="average the paper's ten patches (corners and centre, each also mirrored) (default: centre "
                        "crop)")
    p.add_argument("-k", "--top-k", type=int, default=5, help="classes per image (default: 5)")
    p.add_argument("-b", "--batch-size", type=int, default=32, help="images per forward pass (default: 32)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                   help="auto: the first GPU when there is one (default: auto)")
    p.add_argument("-j", "--threads", type=int, default=None,
                   help="threads that decode and resize images (default: the CPUs, at most 8)")
    p.add_argument("--out", type=Path, default=None,
                   help="write every result to this .csv or .jsonl file instead of printing each (default: print)")
    return p


def find_images(paths):
    """(files to classify in order, [Result] for named paths that do not exist). Named files are always tried."""
    files, missing = [], []
    for p in paths:
        if p.is_dir():
            files += sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS
                            and not any(part.startswith(".") for part in f.relative_to(p).parts))
        elif p.is_file():
            files.append(p)
        else:
            missing.append(Result(str(p), [], "no such file or folder"))
    return files, missing


def _prepare(path, prep, ten_crop):
    try:
        return patches(path.read_bytes(), prep, ten_crop=ten_crop), None
    except OSError as e:
        return None, f"cannot read: {e.strerror or e}"
    except (BadImage, PreprocessError) as e:
        return None, str(e)


@torch.inference_mode()
def classify(run, files, *, ten_crop=False, top_k=5, batch_size=32, device="cpu", threads=None, progress=None):
    """Yield a Result per file, in order."""
    model = run.model.to(device)
    k = min(top_k, run.num_classes)
    with ThreadPoolExecutor(threads or min(8, os.cpu_count() or 1)) as pool:
        for start in range(0, len(files), batch_size):
            chunk = files[start:start + batch_size]
            prepared = list(pool.map(lambda f: _prepare(f, run.preprocessing, ten_crop), chunk))
            good = [x for x, error in prepared if error is None]
            if good:
                x = torch.cat(good).to(device)
                probs = F.softmax(model(x).float(), dim=1)
                if ten_crop:
                    probs = probs.view(len(good), 10, -1).mean(1)
                values, indices = probs.topk(k, dim=1)
                tops = iter(list(zip(i, v)) for i, v in zip(indices.tolist(), values.tolist()))
            for f, (_, error) in zip(chunk, prepared):
                yield Result(str(f), next(tops) if error is None else [], error)
            if progress is not None:
                progress.update(len(chunk))


def write_results(results, out, inputs):
    """results into a .csv (one row per file, rank columns) or .jsonl file."""
    if out.suffix.lower() == ".jsonl":
        with open(out, "w") as fh:
            for r in results:
                row = {"path": r.path, "top": [{"class": inputs.classes[i], "name": inputs.label(i), "probability": p}
                                               for i, p in r.top]}
                fh.write(json.dumps({**row, "error": r.error} if r.error else row) + "\n")
        return
    k = max((len(r.top) for r in results), default=0)
    with open(out, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "error"] + [f"{c}{n}" for n in range(1, k + 1) for c in ("class", "name", "prob")])
        for r in results:
            w.writerow([r.path, r.error or ""] + [v for i, p in r.top for v in (inputs.classes[i], inputs.label(i),
                                                                              f"{p:.6f}")])


def print_result(r, inputs):
    if r.error:
        print(f"{r.path}: skipped: {r.error}", file=sys.stderr)
        return
    print(r.path)
    for i, p in r.top:
        print(f"  {100 * p:6.2f}%  {inputs.label(i)}")
    sys.stdout.flush()  # in order with the skipped files' lines on stderr


def main(argv=None):
    args = get_args_parser().parse_args(argv)
    if args.out is not None and args.out.suffix.lower() not in (".csv", ".jsonl"):
        print(f"error: --out {args.out}: give a .csv or a .jsonl file", file=sys.stderr)
        return 2
    if args.top_k < 1 or args.batch_size < 1:
        print("error: --top-k and --batch-size must be >= 1", file=sys.stderr)
        return 2
    if args.device == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda: torch sees no GPU here (use --device cpu)", file=sys.stderr)
        return 2
    device = torch.device("cuda:0" if args.device != "cpu" and torch.cuda.is_available() else "cpu")
    try:
        run = open_run(run_folder(args.name, args.output_dir, args.run, args.checkpoint),
                       checkpoint=args.checkpoint, data=args.data)
        check_supported(run.preprocessing)
    except (RunError, PreprocessError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    files, results = find_images(args.images)
    if not files and not results:
        print(f"error: no image files in {', '.join(map(str, args.images))} (looked for "
              f"{', '.join(sorted(IMAGE_EXTENSIONS))})", file=sys.stderr)
        return 2
    how = "ten patches" if args.ten_crop else "centre crop"
    print(f"{run.run_dir.name}: {len(files)} image(s), {how}, {device}, checkpoint {shown(run.checkpoint)}",
          file=sys.stderr)
    bar = tqdm(total=len(files), unit="img", file=sys.stderr) if len(files) > args.batch_size else None
    for r in results:
        print_result(r, run.inputs)
    for r in classify(run, files, ten_crop=args.ten_crop, top_k=args.top_k, batch_size=args.batch_size,
                      device=device, threads=args.threads, progress=bar):
        results.append(r)
        if r.error and bar:
            bar.write(f"{r.path}: skipped: {r.error}", file=sys.stderr)
        elif r.error or args.out is None:
            print_result(r, run.inputs)
    if bar:
        bar.close()
    failed = sum(1 for r in results if r.error)
    if args.out is not None:
        write_results(results, args.out, run.inputs)
        print(f"{len(results) - failed} classified, written to {args.out}", file=sys.stderr)
    if failed:
        print(f"{failed} of {len(results)} file(s) could not be classified (named above)", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
