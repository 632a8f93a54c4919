"""cluster/classify.py and its preprocessing (cluster/preprocess.py): the same inputs as the run's validation loader
on the same images, the run's net's probabilities by class name, bad files skipped by name, and checkpoints of
other runs refused with what differs."""
import csv
import io
import json
import shutil
import tarfile

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from run_fixture import CLASSES, CROP, build_tree_shards, make_run, remove

from cluster import classify, preprocess, run_inputs
from cluster.trained_run import RunError, open_run
from pipeline import manifest as mf


@pytest.fixture(scope="module")
def tree_shards(demo_tree, tmp_path_factory):
    return build_tree_shards(demo_tree, tmp_path_factory.mktemp("tree-shards") / "shards")


@pytest.fixture(scope="module")
def run(tree_shards, tmp_path_factory):
    root = tmp_path_factory.mktemp("classify-run")
    run_dir, net = make_run(root, tree_shards)
    yield run_dir, net
    remove(root)


def val_files(tree):
    return images_in(tree / "val")


def images_in(folder):
    return sorted(f for f in folder.iterdir() if f.suffix.lower() in (".jpeg", ".jpg"))


def shard_jpegs(shards, split="val"):
    """{sample index: JPEG bytes} read from the tars with tarfile."""
    out = {}
    for tar, _, _ in mf.split_files(shards, mf.load(shards), split):
        with tarfile.open(tar) as t:
            members = {m.name: t.extractfile(m).read() for m in t if m.isfile()}
        for key in {name.split(".")[0] for name in members}:
            out[int(members[f"{key}.idx"])] = members[f"{key}.jpg"]
    return out


def test_the_loaders_resize_rounds_half_up_as_dali():
    """DALI's resize_shorter rounds the longer side half up; Python's round() would give 170 here (half to even)."""
    from pipeline.loader_options import resized_shorter
    assert resized_shorter(341, 256, 128) == (171, 128)
    assert resized_shorter(256, 341, 128) == (128, 171)
    assert resized_shorter(300, 200, 200) == (300, 200)


def test_files_become_the_shards_bytes(run, demo_tree, tree_shards):
    """The builder's step is redone exactly: every val file decodes to the pixels of one of the shards' JPEGs."""
    prep = open_run(run[0]).preprocessing
    shards = [np.asarray(Image.open(io.BytesIO(b)).convert("RGB")) for b in shard_jpegs(tree_shards).values()]
    files = val_files(demo_tree)
    assert len(files) == len(shards) == 9
    for f in files:
        ours = np.asarray(preprocess.shard_image(f.read_bytes(), prep))
        assert any(s.shape == ours.shape and np.array_equal(s, ours) for s in shards), f


@pytest.mark.parametrize("ten_crop", [False, True])
def test_patches_match_the_validation_loader(run, tree_shards, ten_crop):
    """The loader's resize (256 -> 73), central square, crops and normalisation on the shards' own JPEGs, against
    DALI's. PIL decodes these JPEGs to DALI's pixels exactly; the resizes differ: DALI's antialiased linear filter
    and PIL's BILINEAR (torch's antialiased bilinear gives the same as PIL) weight edge pixels differently. Measured
    on these images (sharp-edged drawn shapes, the worst case for a filter): 0.77 grey levels on average, 6 at the
    99th percentile, 18 at most (2026-12-05). A crop one pixel off measured 7.4 on average. Bounds: mean 2,
    99th percentile 10, max 32."""
    from pipeline.loader import make_loader
    prep = open_run(run[0]).preprocessing
    assert prep.loader_resize == round(CROP * 256 / 224) and prep.central_square
    jpegs = shard_jpegs(tree_shards)
    loader = make_loader(tree_shards, "val", 9, train=False, ten_crop=ten_crop, crop=CROP, normalize="paper",
                         central_square=True, num_threads=1)
    diffs = []
    for images, _, indices in loader:
        for image, i in zip(images, indices.tolist()):
            ours = preprocess.image_patches(Image.open(io.BytesIO(jpegs[i])).convert("RGB"), prep, ten_crop=ten_crop)
            dali = image.view(-1, 3, CROP, CROP)
            assert ours.shape == dali.shape
            diffs.append((ours.double() - dali.double()).abs())  # "paper" inputs: grey levels (std 1)
    loader.close()
    diff = torch.stack(diffs)
    assert len(diffs) == 9
    assert diff.mean() < 2 and diff.flatten().quantile(0.99) < 10 and diff.max() < 32, (diff.mean(), diff.max())


def test_cli_classifies_files_and_folders_and_skips_bad_ones(run, demo_tree, tmp_path, capsys):
    run_dir, net = run
    folder = tmp_path / "photos"
    shutil.copytree(demo_tree / "val", folder)
    good = images_in(folder)
    (folder / "notes.txt").write_text("not an image, and not looked at: no image extension")
    (folder / "fake.jpg").write_text("not an image")
    (folder / "cut.jpg").write_bytes(good[0].read_bytes()[:400])  # truncated
    out = tmp_path / "results.jsonl"
    code = classify.main(["--run", str(run_dir), str(folder), str(tmp_path / "missing.png"), "--out", str(out),
                          "-b", "4"])
    err = capsys.readouterr().err
    assert code == 1
    for bad in ("fake.jpg", "cut.jpg", "missing.png"):
        assert bad in err
    assert "3 of 12 file(s) could not be classified" in err and "notes.txt" not in err
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    by_path = {r["path"]: r for r in rows}
    assert len(rows) == 12 and sum("error" in r for r in rows) == 3
    inputs = run_inputs.load(run_dir)
    prep = open_run(run_dir).preprocessing
    net64 = net.double()
    for f in good:
        top = by_path[str(f)]["top"]
        assert len(top) == CLASSES  # top-5 of 3 classes
        assert all(t["name"] == t["class"] for t in top)  # the manifest has no names: the wnids stand in
        with torch.no_grad():
            probs = F.softmax(net64(preprocess.patches(f.read_bytes(), prep).double()), 1)[0]
        # the CLI's float32 net against float64: probabilities of a 3-way softmax agree to ~1e-6
        for t in top:
            assert abs(t["probability"] - probs[inputs.classes.index(t["class"])].item()) < 1e-4
        assert [t["probability"] for t in top] == sorted((t["probability"] for t in top), reverse=True)


def test_cli_ten_crop_prints_names_and_writes_csv(run, demo_tree, tmp_path, capsys):
    run_dir, net = run
    files = val_files(demo_tree)[:2]
    assert classify.main(["--run", str(run_dir), "--ten-crop", *map(str, files)]) == 0
    out = capsys.readouterr().out
    assert str(files[0]) in out and out.count("%") == 2 * CLASSES
    table = tmp_path / "r.csv"
    assert classify.main(["--run", str(run_dir), "--ten-crop", "-k", "2", "--out", str(table), *map(str, files)]) == 0
    rows = list(csv.DictReader(table.open()))
    prep = open_run(run_dir).preprocessing
    with torch.no_grad():  # the paper's 10-crop: the ten softmaxes averaged
        probs = F.softmax(net.double()(preprocess.patches(files[1].read_bytes(), prep, ten_crop=True).double()),
                          1).mean(0)
    assert rows[1]["path"] == str(files[1]) and rows[1]["error"] == "" and "class3" not in rows[1]
    assert abs(float(rows[1]["prob1"]) - probs.max().item()) < 1e-4


def test_a_checkpoint_of_another_run_is_refused(run, tmp_path, capsys):
    from model import GroupedAlexNet
    run_dir, _ = run
    other = tmp_path / "other.pt"
    torch.save({"model": GroupedAlexNet(5).state_dict()}, other)
    with pytest.raises(RunError, match=r"a net of 5 classes .* has 3"):
        open_run(run_dir, checkpoint=other)
    shape = GroupedAlexNet(CLASSES).state_dict()
    shape["conv1.weight"] = torch.zeros(64, 3, 11, 11)
    torch.save(shape, other)
    assert classify.main(["--run", str(run_dir), "--checkpoint", str(other), str(tmp_path)]) == 2
    assert "conv1.weight" in capsys.readouterr().err


def test_an_older_run_reads_its_shards_manifest(run, tree_shards, tmp_path):
    run_dir, _ = run
    old = tmp_path / "old"
    shutil.copytree(run_dir, old, ignore=shutil.ignore_patterns("checkpoint_*"))
    (old / "summary.json").write_text(json.dumps({"checkpoint": str(run_dir / "checkpoint_000001")}))
    (old / run_inputs.INPUTS_FILE).unlink()
    assert open_run(old).inputs == run_inputs.load(run_dir)  # config.json's data
    config = json.loads((old / "config.json").read_text())
    (old / "config.json").write_text(json.dumps({**config, "data": str(tmp_path / "gone")}))
    with pytest.raises(RunError, match="inputs.json: not found .*--data"):
        open_run(old)
    assert open_run(old, data=tree_shards).inputs.classes == run_inputs.load(run_dir).classes


def test_a_checkpoint_inside_its_run_folder_names_the_run(run, demo_tree, tmp_path, capsys):
    run_dir, _ = run
    image = str(val_files(demo_tree)[0])
    for checkpoint in (run_dir / "checkpoint_000001", run_dir / "checkpoint_000001" / "checkpoint.pt"):
        assert classify.main(["--checkpoint", str(checkpoint), image]) == 0
    assert capsys.readouterr().out.count(image) == 2
    assert classify.main(["--checkpoint", str(tmp_path / "storage" / "checkpoint_1"), image]) == 2
    assert "no run folder" in capsys.readouterr().err


def test_a_damaged_checkpoint_is_never_loaded(tree_shards, tmp_path):
    """A flipped byte in the run's checkpoint: named, whether the run's final checkpoint or --checkpoint points at it,
    and nothing is classified with it."""
    run_dir, _ = make_run(tmp_path, tree_shards)
    file = run_dir / "checkpoint_000001" / "checkpoint.pt"
    data = bytearray(file.read_bytes())
    data[len(data) // 2] ^= 0xFF
    file.write_bytes(bytes(data))
    with pytest.raises(RunError, match="no intact checkpoint for run run: .* names a damaged one"):
        open_run(run_dir)
    with pytest.raises(RunError, match="sha256 differs from its digest"):
        open_run(run_dir, checkpoint=run_dir / "checkpoint_000001")
