"""Export a trained run as files that need nothing of this project: ONNX, a torch.export program, and a JSON of the
preprocessing and class names.

    python -m cluster.export --name my-run                      # -> runs/my-run/export/
    python -m cluster.export --run runs/my-run --out /tmp/alexnet --checkpoint runs/my-run/checkpoint_<date>_<time>

What it writes (all for the single-device form of the run's net, both columns, in eval mode, float32):
  model.onnx          input "image" (N, 3, crop, crop) float32 with N dynamic, output "logits" (N, classes), no
                      softmax. Opset 18 (EXPORT_OPSET below says why). One graph: the two columns are grouped
                      convolutions (group=2 in conv2, conv4, conv5), the LRN plain Pow/Add/Mul/Slice nodes.
  model.pt2           the same as a torch.export ExportedProgram: torch.export.load(path).module()(x).
  preprocessing.json  how to turn an image into "image" (cluster/export_spec.py), and the class names.
"""
import argparse
import json
import logging
import sys
import warnings
from pathlib import Path

import torch

from cluster.export_spec import SPEC_FILE, export_spec
from cluster.preprocess import PreprocessError, check_supported
from cluster.trained_run import RunError, add_run_arguments, open_run, run_folder, shown

# ONNX opset 18: torch's exporter (onnxscript's torchlib) writes 20 by default and converts down without loss for
# the operators AlexNet uses (Conv with group, MaxPool, Pad, Slice, Pow, Gemm, ReduceMean, GatherND, Relu); 18 is
# what older runtimes still in use read (ONNX Runtime >= 1.14, TensorRT >= 8.6, OpenVINO 2023), and its Pad
# already takes axes as an input. tests/test_export.py checks the file with ONNX Runtime.
EXPORT_OPSET = 18
ONNX_FILE, PROGRAM_FILE = "model.onnx", "model.pt2"
INPUT_NAME, OUTPUT_NAME = "image", "logits"


def _example(run, dtype, batch=2):
    crop = run.preprocessing.crop
    return torch.zeros(batch, 3, crop, crop, dtype=dtype)


def _dynamic_batch():
    return {"x": {0: torch.export.Dim("batch", min=1, max=4096)}}


def export_program(model, example):
    """torch.export of the net with a dynamic batch dimension (its LRN traced through its public forward)."""
    with torch.no_grad():
        return torch.export.export(model.eval(), (example,), dynamic_shapes=_dynamic_batch())


def export_onnx(model, example, path, *, opset=EXPORT_OPSET):
    # the exporter warns (through logging and warnings) about torchvision's operators it cannot register
    registration = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = registration.level
    registration.setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model.eval(), (example,), str(path), dynamo=True, opset_version=opset,
                          input_names=[INPUT_NAME], output_names=[OUTPUT_NAME], dynamic_shapes=_dynamic_batch(),
                          external_data=False, verbose=False)
    registration.setLevel(level)
    import onnx
    onnx.checker.check_model(str(path))


def onnx_agreement(model, path, crop, batch=3):
    """Largest |logit difference| between ONNX Runtime on the file and the net in torch, on random inputs of the
    paper's scale (grey levels around the mean); None without onnxruntime."""
    try:
        import onnxruntime
    except ImportError:
        return None
    x = torch.randn(batch, 3, crop, crop, generator=torch.Generator().manual_seed(0)) * 60
    with torch.no_grad():
        ours = model.float()(x).numpy()
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    theirs = session.run(None, {INPUT_NAME: x.numpy()})[0]
    return float(abs(theirs - ours).max()), float(abs(ours).max())


def export_run(run, out, *, dtype=torch.float32, onnx=True):
    """Write the artifact folder `out` for an open run (cluster/trained_run.py); returns {file kind: path}. The run's
    net is converted to `dtype` in place."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model = run.model.to("cpu", dtype).eval()
    example = _example(run, dtype)
    paths = {"onnx": out / ONNX_FILE} if onnx else {}
    if onnx:
        export_onnx(model, example, paths["onnx"])
    paths.update(program=out / PROGRAM_FILE, spec=out / SPEC_FILE)
    torch.export.save(export_program(model, example), paths["program"])
    spec = export_spec(run, input_name=INPUT_NAME, output_name=OUTPUT_NAME, dtype=str(dtype).replace("torch.", ""),
                       opset=EXPORT_OPSET)
    paths["spec"].write_text(json.dumps(spec, indent=1) + "\n")
    return paths


def get_args_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_run_arguments(p)
    p.add_argument("--out", type=Path, default=None, help="the artifact folder (default: RUN_DIR/export)")
    return p


def main(argv=None):
    args = get_args_parser().parse_args(argv)
    try:
        run = open_run(run_folder(args.name, args.output_dir, args.run, args.checkpoint),
                       checkpoint=args.checkpoint, data=args.data)
        check_supported(run.preprocessing)  # preprocessing.json can only describe a resize this code knows
    except (RunError, PreprocessError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out = args.out or run.run_dir / "export"
    try:
        from onnxscript import __version__  # noqa: F401 - torch's ONNX exporter needs it
    except ImportError:
        print("error: the ONNX export needs onnx and onnxscript: pip install -e '.[export]'", file=sys.stderr)
        return 2
    paths = export_run(run, out)
    for kind, path in paths.items():
        print(f"{kind}: {shown(path)} ({path.stat().st_size / 2**20:.1f} MiB)")
    agreement = onnx_agreement(run.model, paths["onnx"], run.preprocessing.crop)
    if agreement is not None:
        print(f"ONNX Runtime agrees with torch: largest logit difference {agreement[0]:.2g} (logits up to "
              f"{agreement[1]:.3g}), 3 random images")
    return 0


if __name__ == "__main__":
    sys.exit(main())
