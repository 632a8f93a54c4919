"""A small finished run to classify with and export (tests/test_classify.py, tests/test_export.py): shards built
from the demo tree (3 classes; no class names, so the wnids stand in), a seeded untrained net's checkpoint, and the
run files the launcher writes (config.json, inputs.json, summary.json). No training: what these tests check is that
images and artifacts reach the same net's outputs, which any weights show."""
import json
import shutil

import torch

from cluster import checkpoints, run_inputs
from model import GroupedAlexNet
from pipeline import build_shards

CROP = 64  # the loader resizes the builder's 256 to 73 for it: both resizes are exercised
CLASSES = 3


def build_tree_shards(tree, out):
    build_shards.build(build_shards.BuildConfig(out=out, src=tree, jobs=1))
    return out


def make_run(root, shards, *, central_square=True, seed=0):
    """RUN_DIR with a checkpoint of a GroupedAlexNet seeded with `seed`; returns (run_dir, the net)."""
    torch.manual_seed(seed)
    net = GroupedAlexNet(CLASSES, init="kaiming").eval()  # logits that depend on the image (the demo preset's init)
    run = root / "run"
    (run / "checkpoint_000001").mkdir(parents=True)
    checkpoints.write({"model": net.state_dict(), "epoch": 1}, run / "checkpoint_000001")  # with its digest
    config = dict(data=str(shards), crop=CROP, normalize="paper", central_square=central_square,
                  num_classes=CLASSES, activation="relu", lrn=True, overlapping_pool=True, seed=0, name="run",
                  storage=str(root))
    (run / "config.json").write_text(json.dumps(config))
    (run / "summary.json").write_text(json.dumps({"checkpoint": "checkpoint_000001"}))
    run_inputs.record(run, shards)
    return run, net


def remove(path):
    shutil.rmtree(path, ignore_errors=True)
