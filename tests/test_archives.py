"""Building from ImageNet's official archives (and Kaggle's layout) without extracting: the same shards as from the
same images extracted, bad members reported, the devkit's labels and names."""
import io
import json
import shutil
import tarfile

import numpy as np
import pytest
import scipy.io
from conftest import build
from PIL import Image

from pipeline import archives, demo_data
from pipeline import build_shards as bs

SYNSET_FIELDS = ["ILSVRC2012_ID", "WNID", "words", "gloss", "num_children", "children", "wordnet_height",
                 "num_train_images"]


def add(tar, name, data):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def meta_mat(classes):
    """meta.mat in the devkit's layout: leaf synsets numbered in reverse (so that a label has to go through the ID
    mapping to come out right) and two non-leaf ones that must not become classes."""
    rows = [(len(classes) - i, w, f"words of {w}", "gloss", 0, np.zeros((1, 0)), 0, 6) for i, w in enumerate(classes)]
    rows += [(len(classes) + 1, "n00000001", "entity", "root", 2, np.array([[1, 2]]), 2, 0),
             (len(classes) + 2, "n00000002", "thing", "inner", 1, np.array([[3]]), 1, 0)]
    arr = np.zeros((len(rows), 1), dtype=[(f, "O") for f in SYNSET_FIELDS])
    for i, row in enumerate(rows):
        arr[i, 0] = row
    buf = io.BytesIO()
    scipy.io.savemat(buf, {"synsets": arr})
    return buf.getvalue()


def make_archives(tree, dst, *, class_tar_extra=None):
    """The three official files from an extracted tree (train/<wnid>/*, flat val/* + LOC_val_solution.csv).
    class_tar_extra: {wnid: [(name, bytes)]} added to that class tar."""
    dst.mkdir(parents=True, exist_ok=True)
    classes = sorted(p.name for p in (tree / "train").iterdir())
    with tarfile.open(dst / archives.TRAIN_TAR, "w") as outer:
        for wnid in reversed(classes):  # stored out of order: the class index must not come from tar order
            buf = io.BytesIO()
            with tarfile.open(fileobj=buf, mode="w") as inner:
                for f in sorted((tree / "train" / wnid).iterdir(), reverse=True):
                    add(inner, f.name, f.read_bytes())
                for name, data in (class_tar_extra or {}).get(wnid, []):
                    add(inner, name, data)
            add(outer, f"{wnid}.tar", buf.getvalue())
    with tarfile.open(dst / archives.VAL_TAR, "w") as val:
        for f in sorted((tree / "val").iterdir(), reverse=True):
            add(val, f.name, f.read_bytes())
    wnid_of = {row.split(",")[0]: row.split(",")[1].split()[0]
               for row in (tree / "LOC_val_solution.csv").read_text().splitlines()[1:]}
    ids = {w: len(classes) - i for i, w in enumerate(classes)}
    truth = "".join(f"{ids[wnid_of[f'ILSVRC2012_val_{n:08d}']]}\n" for n in range(1, len(wnid_of) + 1))
    with tarfile.open(dst / archives.DEVKIT, "w:gz") as dk:
        add(dk, "ILSVRC2012_devkit_t12/data/meta.mat", meta_mat(classes))
        add(dk, "ILSVRC2012_devkit_t12/data/ILSVRC2012_validation_ground_truth.txt", truth.encode())
        add(dk, "ILSVRC2012_devkit_t12/readme.txt", b"devkit")
    return dst


def shard_bytes(out):
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.glob("*/*"))
            if p.suffix in (".tar", ".idx")}


@pytest.fixture(scope="module")
def demo_tree(tmp_path_factory):
    """The demo tree with validation files numbered from 1, as ImageNet's are (the ground truth's line numbers)."""
    root = demo_data.write_demo_tree(tmp_path_factory.mktemp("tree1"), train_per_class=6, val_per_class=3,
                                     num_classes=3, flat_val=True)
    for f in sorted((root / "val").iterdir(), reverse=True):
        f.rename(f.with_name(f"ILSVRC2012_val_{int(f.stem.split('_')[-1]) + 1:08d}.JPEG"))
    csv = root / "LOC_val_solution.csv"
    head, *rows = csv.read_text().splitlines()
    csv.write_text("\n".join([head] + [f"ILSVRC2012_val_{int(r.split(',')[0].split('_')[-1]) + 1:08d},"
                                       + r.split(",", 1)[1] for r in rows]) + "\n")
    return root


@pytest.fixture(scope="module")
def tree_build(demo_tree, tmp_path_factory):
    out = tmp_path_factory.mktemp("from_tree") / "shards"
    return bs.build(bs.BuildConfig(src=demo_tree, out=out, jobs=1, shard_size=5)), out


def test_archives_give_the_same_shards_as_the_extracted_tree(demo_tree, tree_build, tmp_path):
    src = make_archives(demo_tree, tmp_path / "archives")
    out = tmp_path / "shards"
    man = bs.build(bs.BuildConfig(src=src, out=out, jobs=2, shard_size=5))  # archives found in --src
    ref, ref_out = tree_build
    assert shard_bytes(out) == shard_bytes(ref_out) and len(shard_bytes(out)) >= 8
    assert man["classes"] == ref["classes"] and man["stats"] == ref["stats"] and man["skipped"] == []
    assert man["names"] == [f"words of {w}" for w in man["classes"]]  # leaves only, from meta.mat's words
    assert man["build"]["train_tar"] == str((src / archives.TRAIN_TAR).resolve())


def test_kaggle_layout_found_from_its_root(demo_tree, tree_build, tmp_path):
    root = tmp_path / "kaggle"
    shutil.copytree(demo_tree / "train", root / "ILSVRC/Data/CLS-LOC/train")
    shutil.copytree(demo_tree / "val", root / "ILSVRC/Data/CLS-LOC/val")
    shutil.copy(demo_tree / "LOC_val_solution.csv", root)
    classes = sorted(p.name for p in (demo_tree / "train").iterdir())
    (root / "LOC_synset_mapping.txt").write_text("".join(f"{w} name of {w}\n" for w in classes))
    out = tmp_path / "shards"
    man = bs.build(bs.BuildConfig(src=root, out=out, jobs=1, shard_size=5))
    assert shard_bytes(out) == shard_bytes(tree_build[1])
    assert man["names"] == [f"name of {w}" for w in classes]


def test_bad_members_are_skipped_and_listed(demo_tree, tmp_path):
    rgb = Image.fromarray(np.random.default_rng(1).integers(0, 255, (300, 400, 3), dtype=np.uint8))
    cmyk, jpeg = io.BytesIO(), io.BytesIO()
    rgb.convert("CMYK").save(cmyk, "JPEG")
    rgb.save(jpeg, "JPEG")
    classes = sorted(p.name for p in (demo_tree / "train").iterdir())
    extra = {classes[0]: [("cmyk.JPEG", cmyk.getvalue()), ("notes.txt", b"not a picture"),
                          ("zz_cut.JPEG", jpeg.getvalue())]}
    src = make_archives(demo_tree, tmp_path / "archives", class_tar_extra=extra)
    with tarfile.open(src / archives.TRAIN_TAR, "a") as outer:
        add(outer, "README", b"stray member")
        # A class tar cut off inside its last image, as an interrupted download leaves it.
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as inner:
            add(inner, "x_1.JPEG", jpeg.getvalue())
            add(inner, "x_2.JPEG", jpeg.getvalue())
        data = buf.getvalue()
        with tarfile.open(fileobj=io.BytesIO(data)) as t:
            cut = t.getmember("x_2.JPEG")
        add(outer, "n99999999.tar", data[:cut.offset_data + cut.size // 2])
    out = tmp_path / "shards"
    with pytest.raises(bs.BuildError, match="leaf synsets"):  # n99999999 is not in meta.mat
        bs.build(bs.BuildConfig(src=src, out=out, jobs=1))
    with pytest.raises(bs.BuildError, match="--strict"):
        bs.build(bs.BuildConfig(train_tar=src / archives.TRAIN_TAR, out=out, jobs=1, strict=True))
    man = bs.build(bs.BuildConfig(train_tar=src / archives.TRAIN_TAR, out=out, jobs=1))  # no devkit: train only
    skipped = {s["path"]: s["reason"] for s in man["skipped"]}
    assert set(skipped) == {f"{archives.TRAIN_TAR}/README", f"{archives.TRAIN_TAR}/n99999999.tar/x_2.JPEG",
                            f"{archives.TRAIN_TAR}/{classes[0]}.tar/notes.txt"}, skipped
    assert "class tar" in skipped[f"{archives.TRAIN_TAR}/README"]
    assert "cut off" in skipped[f"{archives.TRAIN_TAR}/n99999999.tar/x_2.JPEG"]
    assert man["splits"]["train"]["num_samples"] == 3 * 6 + 2 + 1  # + cmyk (converted), zz_cut, x_1
    assert man["classes"][-1] == "n99999999" and man["splits"]["val"]["num_samples"] == 0


def test_archive_errors_name_the_file(demo_tree, tmp_path, capsys):
    src = make_archives(demo_tree, tmp_path / "archives")
    out = tmp_path / "shards"
    assert build(out, "--train-tar", src / archives.TRAIN_TAR, "--val-tar", src / archives.VAL_TAR) == 2
    assert "--devkit" in capsys.readouterr().err
    (tmp_path / "broken.tar.gz").write_bytes(b"not gzip")
    assert build(out, "--src", src, "--devkit", tmp_path / "broken.tar.gz") == 2
    assert "broken.tar.gz" in capsys.readouterr().err
    assert build(out, "--src", src, "--demo-set", "shapes") == 2
    assert "give one" in capsys.readouterr().err


def test_missing_scipy_says_how_to_install(demo_tree, tmp_path, monkeypatch):
    src = make_archives(demo_tree, tmp_path / "archives")
    monkeypatch.setitem(__import__("sys").modules, "scipy.io", None)  # import scipy.io now raises ImportError
    with pytest.raises(bs.BuildError, match=r"pip install scipy"):
        bs.build(bs.BuildConfig(src=src, out=tmp_path / "s", jobs=1))


def test_resume_from_archives(demo_tree, tree_build, tmp_path, monkeypatch):
    src = make_archives(demo_tree, tmp_path / "archives")
    out = tmp_path / "shards"
    real_add, count = bs.ShardWriter.add, {"n": 0}

    def dying_add(self, *a):
        count["n"] += 1
        if count["n"] == 12:  # in the third shard
            raise KeyboardInterrupt
        return real_add(self, *a)

    monkeypatch.setattr(bs.ShardWriter, "add", dying_add)
    with pytest.raises(KeyboardInterrupt):
        bs.build(bs.BuildConfig(src=src, out=out, jobs=1, shard_size=5))
    monkeypatch.setattr(bs.ShardWriter, "add", real_add)
    with pytest.raises(bs.BuildError, match="--resume"):
        bs.build(bs.BuildConfig(src=src, out=out, jobs=1, shard_size=5))
    bs.build(bs.BuildConfig(src=src, out=out, jobs=1, shard_size=5, resume=True))
    assert shard_bytes(out) == shard_bytes(tree_build[1])
    assert bs.main(["--out", str(out), "--verify"]) == 0
    assert json.loads((out / "manifest.json").read_text())["complete"]


def test_typed_entry_point_and_old_flag_name(tmp_path):
    """build(BuildConfig()) works from its defaults (the parser's namespace used to crash on None < 1); -j's old
    name --workers still parses."""
    man = bs.build(bs.BuildConfig(out=tmp_path / "d", jobs=1, demo_train_per_class=2, demo_val_per_class=1))
    assert man["complete"] and man["splits"]["train"]["num_samples"] == 20 and man["build"]["demo_set"] == "colours"
    assert bs.get_args_parser().parse_args(["--workers", "3"]).jobs == 3
    assert "--workers" not in bs.get_args_parser().format_help()
    with pytest.raises(bs.BuildError, match="-j/--jobs"):
        bs.build(bs.BuildConfig(out=tmp_path / "e", jobs=0))
