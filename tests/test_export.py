"""cluster/export.py: the artifact folder loads in a fresh Python that cannot import this project (isolated mode,
another working directory, the project's packages blocked and checked to be so, since CI installs the project), with
plain torch and with ONNX Runtime, and gives the project's net's logits on the same images, at batch sizes other
than the one it was traced with. The README's ONNX-only snippet runs there too."""
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from run_fixture import CLASSES, CROP, build_tree_shards, make_run, remove

from cluster import export, preprocess
from cluster.trained_run import open_run

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")
ROOT = Path(__file__).resolve().parents[1]

# Runs in the fresh process. The import blocker makes sure nothing below reaches this project: the editable install
# would otherwise put it on the path even in isolated mode.
LOAD = r'''
import importlib.abc, json, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("cluster", "model", "pipeline"):
            raise ImportError(f"{name} is this project's: blocked")
sys.meta_path.insert(0, Block())
for name in ("cluster", "model", "pipeline"):
    try:
        __import__(name)
    except ImportError:
        pass
    else:
        raise SystemExit(f"{name} was importable")
import numpy as np, onnxruntime as ort, torch
art, art64, out = sys.argv[1:4]
for n in (1, 3):
    x = np.load(f"{out}/x{n}.npy")
    np.save(f"{out}/onnx{n}.npy", ort.InferenceSession(f"{art}/model.onnx").run(None, {"image": x})[0])
    with torch.no_grad():
        np.save(f"{out}/pt2_{n}.npy", torch.export.load(f"{art}/model.pt2").module()(torch.from_numpy(x)).numpy())
        x64 = torch.from_numpy(x).double()
        np.save(f"{out}/pt2_64_{n}.npy", torch.export.load(f"{art64}/model.pt2").module()(x64).numpy())
print("loaded", sorted(m for m in sys.modules if m.split(".")[0] in ("cluster", "model", "pipeline")))
'''


@pytest.fixture(scope="module")
def exported(demo_tree, tmp_path_factory):
    """(run, float32 artifact folder with ONNX, float64 artifact folder with the torch program only)."""
    root = tmp_path_factory.mktemp("export")
    shards = build_tree_shards(demo_tree, root / "shards")
    run_dir, _ = make_run(root, shards)
    run = open_run(run_dir)
    art = root / "art"
    assert export.main(["--run", str(run_dir), "--out", str(art)]) == 0
    art64 = root / "art64"
    export.export_run(open_run(run_dir), art64, dtype=torch.float64, onnx=False)
    yield run, art, art64
    remove(root)


def fresh_python(script, *args, cwd):
    return subprocess.run([sys.executable, "-I", "-c", script, *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, timeout=300)


def test_the_artifact_gives_the_projects_logits_without_the_project(exported, demo_tree, tmp_path):
    run, art, art64 = exported
    files = sorted((demo_tree / "val").iterdir())
    x = torch.cat([preprocess.patches(f.read_bytes(), run.preprocessing) for f in files[:3]])
    np.save(tmp_path / "x1.npy", x[:1].numpy())
    np.save(tmp_path / "x3.npy", x.numpy())  # traced at batch 2: 1 and 3 show the batch is dynamic
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    done = fresh_python(LOAD, art, art64, tmp_path, cwd=elsewhere)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "loaded []" in done.stdout
    with torch.no_grad():
        ref = run.model.double()(x.double()).numpy()
    for n, rows in ((1, ref[:1]), (3, ref)):
        # the same graph in float64: only summation order differs
        np.testing.assert_allclose(np.load(tmp_path / f"pt2_64_{n}.npy"), rows, rtol=1e-9, atol=1e-9)
        # float32 against float64: each of the 8 layers rounds its sums of up to 9,216 products (relative error
        # ~1e-6 each; measured 7e-7 of the largest logit here, 2026-12-05); 1e-4 of the largest logit leaves room
        # for other CPUs' fp32 kernels (ONNX Runtime's own convolutions included)
        scale = np.abs(rows).max()
        for kind in ("onnx", "pt2_"):
            got = np.load(tmp_path / f"{kind}{n}.npy")
            assert got.shape == (n, CLASSES)
            np.testing.assert_allclose(got, rows, rtol=0, atol=1e-4 * scale, err_msg=kind)


def test_the_onnx_graph_is_one_graph_of_grouped_convolutions(exported):
    import onnx
    _, art, _ = exported
    graph = onnx.load(str(art / "model.onnx"), load_external_data=False)
    assert [o.version for o in graph.opset_import if o.domain in ("", "ai.onnx")] == [export.EXPORT_OPSET]
    convs = [n for n in graph.graph.node if n.op_type == "Conv"]
    groups = [next((a.i for a in n.attribute if a.name == "group"), 1) for n in convs]
    assert groups == [1, 2, 1, 2, 2]  # conv3 is where the columns exchange; the others stay within a column
    assert not graph.functions and {n.domain for n in graph.graph.node} <= {"", "ai.onnx"}  # no custom ops
    shape = graph.graph.input[0].type.tensor_type.shape.dim
    assert shape[0].dim_param and [d.dim_value for d in shape[1:]] == [3, CROP, CROP]


def test_the_spec_holds_the_runs_preprocessing_and_names(exported):
    run, art, _ = exported
    spec = json.loads((art / "preprocessing.json").read_text())
    prep = run.preprocessing
    assert spec["crop"] == CROP and spec["central_square"] == prep.central_square
    assert spec["mean"] == prep.mean and spec["std"] == [1.0, 1.0, 1.0]  # the paper's inputs
    assert [r["shorter_side"] for r in spec["resize"]] == [256, prep.loader_resize]
    assert spec["resize"][0]["shrink"] == "BOX" and spec["resize"][0]["jpeg_quality"] == 90
    assert spec["names"] == spec["classes"] == run.inputs.classes  # no names in this manifest: the wnids
    assert spec["channel_order"] == "RGB" and spec["layout"] == "NCHW"


def readme_snippet():
    text = (ROOT / "README.md").read_text()
    block = re.search(r"```python\n(import json, numpy as np, onnxruntime as ort\n.*?)```", text, re.S)
    assert block, "README.md: the ONNX snippet is missing"
    return block.group(1)


def test_the_readme_snippet_classifies_with_the_onnx_file_alone(exported, demo_tree, tmp_path):
    """The README's lines, run where the project cannot be imported, against the project's own preprocessing:
    they skip the shard builder's JPEG re-encode and its draft decoding, and take PIL's resize for DALI's, so
    their probabilities differ a little: at most 0.0021 on these nine images (2026-12-05), where the images' own
    probabilities differ from one another by up to 0.07. Bound: 0.01."""
    run, art, _ = exported
    image = sorted((demo_tree / "val").iterdir())[0]
    (tmp_path / "export").symlink_to(art)
    (tmp_path / "photo.jpg").symlink_to(image)
    done = fresh_python(readme_snippet(), cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.split("\n")[:CLASSES]
    with torch.no_grad():
        probs = torch.softmax(run.model.float()(preprocess.patches(image.read_bytes(), run.preprocessing)), 1)[0]
    for line in lines:
        p, name = line.split(" ", 1)
        assert abs(float(p) - probs[run.inputs.classes.index(name)].item()) < 0.01, line
