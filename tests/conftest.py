"""Shared fixtures: small generated datasets (no downloads) and the gpu marker's skip."""
import shutil
from pathlib import Path

import pytest
import torch

from pipeline import build_shards, demo_data

ROOT = Path(__file__).resolve().parents[1]


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def build(out, *extra):
    """The shard builder's command line, run in-process (for tests of its flags and messages); its exit code."""
    return build_shards.main(["--out", str(out), "-j", "1", *map(str, extra)])


@pytest.fixture(scope="session")
def demo_shards(tmp_path_factory):
    """A small demo build: 10 classes x 12 train, x 5 val, 40 samples per shard (several shards)."""
    out = tmp_path_factory.mktemp("demo") / "shards"
    build_shards.build(build_shards.BuildConfig(out=out, jobs=1, demo_train_per_class=12, demo_val_per_class=5,
                                                shard_size=40))
    return out


@pytest.fixture(scope="session")
def demo_tree(tmp_path_factory):
    """An ImageNet-style tree of demo images: 3 classes, 6 train and 3 val each, flat val + Kaggle csv."""
    root = tmp_path_factory.mktemp("tree")
    return demo_data.write_demo_tree(root, train_per_class=6, val_per_class=3, num_classes=3, flat_val=True)


@pytest.fixture
def tree_copy(demo_tree, tmp_path):
    """A private, writable copy of demo_tree to add bad inputs to."""
    dst = tmp_path / "src"
    shutil.copytree(demo_tree, dst)
    return dst
