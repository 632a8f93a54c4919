"""cluster/report.py and Figure 4: samples read from the shards, the streamed nearest-neighbour search, the data that
goes into the figure, `report.py RUN_DIR`, and clear errors for a run directory that lacks something."""
import json
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from cluster import figure4, report
from cluster.figures import figure4_title
from model import GroupedAlexNet
from pipeline import manifest as mf
from pipeline import samples

ROOT = Path(__file__).resolve().parents[1]
CROP = 64
SUBSET = 50  # of the demo build's 120 training images: more than one shard file (40 each), not all of them


def shard_samples(data_dir, split):
    """{position: (jpg, label, idx)} read with tarfile: an independent reading of the shards."""
    out = {}
    for tar, _, _ in mf.split_files(data_dir, mf.load(data_dir), split):
        with tarfile.open(tar) as t:
            members = {m.name: t.extractfile(m).read() for m in t if m.isfile()}
        for key in sorted({name.split(".")[0] for name in members}):
            out[len(out)] = (members[f"{key}.jpg"], int(members[f"{key}.cls"]), int(members[f"{key}.idx"]))
    return out


def is_png(path):
    return path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    return GroupedAlexNet(num_classes=10).eval()


@pytest.fixture(scope="module")
def checkpoint_dir(net, tmp_path_factory):
    """A final checkpoint directory as cluster/worker.py writes it (saved once: the state is ~240 MB)."""
    path = tmp_path_factory.mktemp("checkpoint") / "checkpoint_000001"
    path.mkdir()
    torch.save({"model": net.state_dict(), "epoch": 1}, path / "checkpoint.pt")
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def run_dir(demo_shards, checkpoint_dir, tmp_path):
    """A finished run as cluster/launch.py leaves it: config.json, metrics.jsonl, summary.json -> checkpoint dir."""
    run = tmp_path / "run"
    run.mkdir()
    config = dict(data=str(demo_shards), crop=CROP, normalize="paper", num_classes=10, activation="relu", lrn=True,
                  overlapping_pool=True, seed=0, epochs=2)
    (run / "config.json").write_text(json.dumps(config))
    (run / "metrics.jsonl").write_text("".join(json.dumps(dict(
        epoch=e, train_loss=2.3 - e / 10, val_top1_error=0.9 - e / 10, val_top5_error=0.5, images_per_second=40.0,
        lr=0.01)) + "\n" for e in (1, 2)))
    (run / "summary.json").write_text(json.dumps({"checkpoint": str(checkpoint_dir), "workers": 2,
                                                  "val_top1_error": 0.123}))
    return run


def point_at_checkpoint(run, checkpoint_bytes=None):
    """summary.json -> a private checkpoint directory of the run, holding checkpoint_bytes (None: no file)."""
    (run / "own").mkdir()
    if checkpoint_bytes is not None:
        (run / "own" / "checkpoint.pt").write_bytes(checkpoint_bytes)
    (run / "summary.json").write_text(json.dumps({"checkpoint": "own"}))  # relative: to the run directory


def test_streamed_nearest_equals_a_full_sort():
    rng = np.random.default_rng(0)
    queries, feats = rng.normal(size=(5, 32)), rng.normal(size=(503, 32))
    feats[100] = feats[7]  # a tie: the feature seen first wins, as in a stable full sort
    ids = np.arange(1000, 1503)
    nearest = figure4.RunningNearest(queries, 6)
    for start, end in [(0, 1), (1, 38), (38, 240), (240, 503)]:  # uneven batches, one of a single feature
        nearest.update(feats[start:end], ids[start:end])
    full = np.linalg.norm(queries[:, None, :] - feats[None, :, :], axis=2)
    order = np.argsort(full, axis=1, kind="stable")[:, :6]
    np.testing.assert_array_equal(nearest.ids.numpy(), ids[order])
    np.testing.assert_allclose(nearest.distances.numpy(), np.take_along_axis(full, order, 1), rtol=1e-12)
    few = figure4.RunningNearest(queries, 6)
    few.update(feats[:4], ids[:4])  # fewer features than k: all of them, nearest first
    assert few.ids.shape == (5, 4) and sorted(few.ids[0].tolist()) == ids[:4].tolist()


def test_train_subset_is_bounded_and_seeded(demo_shards):
    m = mf.load(demo_shards)
    a = samples.subset_positions(m, "train", SUBSET, seed=0)
    assert len(a) == len(set(a)) == SUBSET and all(0 <= p < 120 for p in a)
    assert a == samples.subset_positions(m, "train", SUBSET, seed=0)
    assert a != samples.subset_positions(m, "train", SUBSET, seed=1)
    assert sorted(samples.subset_positions(m, "train", 10_000, seed=0)) == list(range(120))  # capped at the split
    with pytest.raises(ValueError, match="subset size"):
        samples.subset_positions(m, "train", 0, seed=0)


def test_samples_are_the_shards_samples(demo_shards):
    m = mf.load(demo_shards)
    truth = shard_samples(demo_shards, "train")
    positions = [119, 0, 41, 40, 39, 77]  # across shard borders, out of order
    got = samples.read_samples(demo_shards, m, "train", positions)
    assert [s.position for s in got] == positions
    assert [(s.jpg, s.label, s.idx) for s in got] == [truth[p] for p in positions]
    with pytest.raises(IndexError, match="outside"):
        samples.read_samples(demo_shards, m, "train", [120])


@pytest.mark.parametrize("normalize, tolerance", [("std", 0.05), ("paper", 3.0)])
def test_eval_view_is_what_the_dali_evaluation_loader_gives(demo_shards, normalize, tolerance):
    from pipeline.loader import make_loader

    m = mf.load(demo_shards)
    images, labels, indices = next(iter(make_loader(demo_shards, "val", 50, train=False, crop=112, num_threads=1,
                                                    normalize=normalize)))
    by_idx = {s.idx: s for s in samples.read_samples(demo_shards, m, "val", range(50))}
    ours = samples.normalise([samples.eval_view(by_idx[int(i)].jpg, 112) for i in indices], m["stats"], normalize)
    assert [by_idx[int(i)].label for i in indices] == labels.tolist()
    # Same decode, crop and normalisation; only PIL's and DALI's bilinear resampling differ (0.012 std measured in
    # std units, ~0.7 grey levels): the tolerance is ~3 grey levels in either unit.
    assert np.abs(ours - images.numpy()).mean() < tolerance


def test_fc7_is_the_input_of_fc8(net):
    x = torch.randn(3, 3, CROP, CROP)
    fc7, probs = figure4.fc7_and_probs(net, x.numpy(), torch.device("cpu"))
    with torch.no_grad():
        expected = net.act(net.fc7(net.act(net.fc6(net.features(x)))))
        torch.testing.assert_close(fc7, expected)
        torch.testing.assert_close(probs, torch.softmax(net(x), 1))


def test_figure4_data_comes_from_the_samples(demo_shards, net):
    data = figure4.compute_figure4(net, demo_shards, CROP, normalize="std", train_subset=SUBSET, seed=3,
                                   batch_size=16, device=torch.device("cpu"))  # 4 batches: the streamed search
    m = mf.load(demo_shards)
    val, train = shard_samples(demo_shards, "val"), shard_samples(demo_shards, "train")
    assert len(data.predictions) == 8 and len(data.rows) == 5 and all(len(r.neighbours) == 6 for r in data.rows)
    assert data.names == m["names"] and (data.train_searched, data.train_total) == (SUBSET, 120)
    assert "a seeded subset of 50 of the 120 training images (seed 3)" in figure4_title(data)
    for p in data.predictions:
        assert p.label == val[p.position][1]
        np.testing.assert_array_equal(p.image, samples.eval_view(val[p.position][0], CROP))
        assert len(p.top_labels) == 5 and p.top_probs == sorted(p.top_probs, reverse=True)
    assert not {p.position for p in data.predictions} & {r.position for r in data.rows}
    # Brute force over the whole subset at once: the same neighbours, nearest first.
    subset = samples.subset_positions(m, "train", SUBSET, seed=3)
    views = [samples.eval_view(train[p][0], CROP) for p in subset]
    feats, _ = figure4.fc7_and_probs(net, samples.normalise(views, m["stats"], "std"), torch.device("cpu"))
    for row in data.rows:
        query = samples.normalise([samples.eval_view(val[row.position][0], CROP)], m["stats"], "std")
        q, _ = figure4.fc7_and_probs(net, query, torch.device("cpu"))
        dist = torch.cdist(q.double(), feats.double())[0].numpy()
        assert [n.position for n in row.neighbours] == [subset[i] for i in np.argsort(dist, kind="stable")[:6]]
        for n in row.neighbours:
            assert n.label == train[n.position][1]  # the label shown is the neighbour's own
            np.testing.assert_array_equal(n.image, samples.eval_view(train[n.position][0], CROP))
            # float32 features computed in batches of 16 vs all at once differ in the last bits; the distances of an
            # untrained net are differences of nearly equal vectors, so those bits weigh ~1e-4 relative
            assert n.distance == pytest.approx(dist[subset.index(n.position)], rel=1e-3)


def test_class_names_fall_back_to_wnids():
    assert figure4.class_names({"classes": ["n01", "n02"], "names": None}) == ["n01", "n02"]
    assert figure4.class_names({"classes": ["n01", "n02"], "names": ["tench", None]}) == ["tench", "n02"]


def test_report_cli_redoes_every_figure_and_the_summary(run_dir, checkpoint_dir):
    for name in ("learning_curves.png", "conv1_kernels.png", "figure4.png"):
        assert not (run_dir / name).exists()
    out = subprocess.run([sys.executable, "-m", "cluster.report", str(run_dir), "--train-subset", str(SUBSET)],
                         capture_output=True, text=True, cwd=run_dir)  # not the repo: the installed package
    assert out.returncode == 0, out.stderr
    for name in ("learning_curves.png", "conv1_kernels.png", "figure4.png"):
        assert is_png(run_dir / name), name
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["val_top1_error"] == pytest.approx(0.7)  # redone from metrics.jsonl
    assert summary["epochs"] == 2 and summary["workers"] == 2  # what only the run knew is kept
    assert summary["checkpoint"] == str(checkpoint_dir)


def test_write_all_from_a_state_and_a_uri(run_dir, checkpoint_dir, net):
    config = json.loads((run_dir / "config.json").read_text())
    (run_dir / "config.json").unlink()  # given as an argument, it is not read
    summary, paths = report.write_all(run_dir, {"devices": "CPU"}, {"model": net.state_dict()}, config,
                                      train_subset=20)
    assert is_png(paths["figure4"]) and is_png(paths["kernels"]) and summary["devices"] == "CPU"
    assert "checkpoint" not in summary
    state = report.load_model_state(checkpoint_dir.as_uri(), run_dir)  # file:// through Ray
    assert state["conv1.weight"].equal(net.state_dict()["conv1.weight"])


@pytest.mark.parametrize("breaks, names", [
    (lambda run: (run / "config.json").unlink(), "config.json"),
    (lambda run: point_at_checkpoint(run), "own/checkpoint.pt: checkpoint not found"),
    (lambda run: (run / "summary.json").unlink(), "summary.json"),
    (lambda run: (run / "summary.json").write_text("{}"), '"checkpoint"'),
    (lambda run: (run / "config.json").write_text('{"data": "x"}'), "missing crop"),
    (lambda run: point_at_checkpoint(run, b"junk"), "not a readable checkpoint"),
    (lambda run: (run / "config.json").write_text(json.dumps(
        {k: v for k, v in json.loads((run / "config.json").read_text()).items() if k != "normalize"})),
     'missing normalize; it must hold the run\'s resolved settings (a run from before the setting existed'),
])
def test_a_run_dir_that_lacks_something_is_a_clear_error(run_dir, capsys, breaks, names):
    breaks(run_dir)
    assert report.main([str(run_dir), "--train-subset", "10"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and names in err


def test_missing_shards_name_the_config_entry(run_dir, checkpoint_dir, tmp_path):
    config = json.loads((run_dir / "config.json").read_text())
    (run_dir / "config.json").write_text(json.dumps({**config, "data": str(tmp_path / "gone")}))
    with pytest.raises(report.ReportError, match="manifest.json: not found"):
        report.write_all(run_dir, {}, checkpoint_dir, train_subset=10)
    assert (run_dir / "summary.json").is_file() and is_png(run_dir / "learning_curves.png")  # written before
