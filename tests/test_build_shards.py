"""The shard builder: formats, bad inputs, determinism, resume, and reading the shards back."""
import io
import json
import subprocess
import sys
import tarfile

import numpy as np
import pytest
from conftest import build
from PIL import Image

from pipeline import images
from pipeline import manifest as mf
from pipeline.shard_writer import ShardWriter


def read_manifest(out):
    return json.loads((out / "manifest.json").read_text())


def shas(manifest, split):
    return [s["sha256"] for s in manifest["splits"][split]["shards"]]


def samples(out, split):
    """{idx: (label, jpeg bytes)} read back with plain tarfile."""
    got = {}
    for tar in sorted((out / split).glob("*.tar")):
        with tarfile.open(tar) as t:
            members = {m.name: t.extractfile(m).read() for m in t}
        for name, data in members.items():
            if name.endswith(".jpg"):
                key = name[:-4]
                idx = int(members[f"{key}.idx"])
                assert idx not in got, f"sample {idx} twice"
                got[idx] = (int(members[f"{key}.cls"]), data)
    return got


def save(path, img, fmt, **kw):
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    path.write_bytes(buf.getvalue())


def add_awkward_inputs(src):
    """Real-world inputs that must be converted, and ones that must be skipped. Returns (n_converted, n_bad)."""
    d = src / "train" / "demo00"
    rgb = Image.fromarray(np.random.default_rng(0).integers(0, 255, (300, 400, 3), dtype=np.uint8))
    save(d / "cmyk.JPEG", rgb.convert("CMYK"), "JPEG")
    save(d / "gray.jpeg", rgb.convert("L"), "JPEG")
    save(d / "palette.png", rgb.convert("P"), "PNG")
    save(d / "rgba.PNG", rgb.convert("RGBA"), "PNG")
    save(d / "sixteen.png", Image.fromarray((np.arange(120 * 90, dtype=np.uint16) * 7).reshape(90, 120)), "PNG")
    save(d / "png_named.JPEG", rgb, "PNG")
    save(d / "gif_named.JPEG", rgb.convert("P"), "GIF")
    save(d / "progressive.jpg", rgb, "JPEG", progressive=True)
    save(d / "tiny.JPEG", rgb.resize((40, 30)), "JPEG")
    good = io.BytesIO()
    rgb.save(good, "JPEG")
    (d / "truncated.JPEG").write_bytes(good.getvalue()[: len(good.getvalue()) // 2])
    (d / "empty.JPEG").write_bytes(b"")
    (d / "notes.txt").write_text("not a picture")
    return 9, 3


def test_demo_build_layout_and_manifest(demo_shards):
    m = read_manifest(demo_shards)
    assert m["complete"] and m["format"] == mf.FORMAT and m["version"] == mf.VERSION
    assert len(m["classes"]) == 10 and m["names"]
    assert m["splits"]["train"]["num_samples"] == 120 and m["splits"]["val"]["num_samples"] == 50
    assert [s["num_samples"] for s in m["splits"]["train"]["shards"]] == [40, 40, 40]
    for split in ("train", "val"):
        for s in m["splits"][split]["shards"]:
            assert (demo_shards / split / s["tar"]).stat().st_size == s["bytes"]
    st = m["stats"]
    assert len(st["mean"]) == 3 and len(st["eigvec"]) == 3 and st["eigval"][0] >= st["eigval"][1] >= st["eigval"][2]
    assert all(0 < v < 255 for v in st["mean"])
    got = samples(demo_shards, "train")
    assert sorted(got) == list(range(120))  # every sample once, idx contiguous
    assert sorted(np.bincount([lab for lab, _ in got.values()]).tolist()) == [12] * 10
    assert mf.verify(demo_shards) == []


def test_samples_are_shuffled_globally(demo_shards):
    labels = [samples(demo_shards, "train")[i][0] for i in range(40)]
    assert len(set(labels)) >= 6  # the first shard is a mix, not class 0 then class 1...


def test_images_are_baseline_rgb_256(demo_shards):
    for _, (_, jpeg) in list(samples(demo_shards, "val").items())[:10]:
        img = Image.open(io.BytesIO(jpeg))
        assert img.format == "JPEG" and img.mode == "RGB" and min(img.size) == 256
        assert not img.info.get("progressive") and not img.info.get("progression")


def test_idx_matches_wds2idx(demo_shards, tmp_path):
    for tar in sorted((demo_shards / "train").glob("*.tar")) + sorted((demo_shards / "val").glob("*.tar")):
        ref = tmp_path / (tar.stem + ".ref")
        subprocess.run([sys.executable, "-m", "wds2idx", str(tar), str(ref)], check=True, capture_output=True)
        assert ref.read_bytes() == tar.with_suffix(".idx").read_bytes(), tar.name


def test_read_back_with_webdataset_library(demo_shards):
    import webdataset as wds
    tars = sorted(str(p) for p in (demo_shards / "val").glob("*.tar"))
    ds = wds.WebDataset(tars, shardshuffle=False).decode("pil").to_tuple("jpg", "cls", "idx")
    seen = [(img.mode, int(cls), int(idx)) for img, cls, idx in ds]
    assert len(seen) == 50 and sorted(i for _, _, i in seen) == list(range(50))
    assert {mode for mode, _, _ in seen} == {"RGB"}


def test_read_back_with_dali_cpu_reader(demo_shards):
    from nvidia.dali import fn, pipeline_def, types
    m = read_manifest(demo_shards)
    entries = m["splits"]["val"]["shards"]

    @pipeline_def(batch_size=50, num_threads=1, device_id=None)
    def pipe():
        jpg, cls, idx = fn.readers.webdataset(
            paths=[str(demo_shards / "val" / e["tar"]) for e in entries],
            index_paths=[str(demo_shards / "val" / e["idx"]) for e in entries],
            ext=["jpg", "cls64", "idx64"], dtypes=[types.UINT8, types.INT64, types.INT64])
        return fn.decoders.image(jpg, device="cpu"), cls, idx

    p = pipe()
    p.build()
    imgs, cls, idx = p.run()
    ref = samples(demo_shards, "val")
    for k in range(50):
        i = int(np.asarray(idx[k])[0])
        assert int(np.asarray(cls[k])[0]) == ref[i][0]
        assert np.asarray(imgs[k]).shape[2] == 3


def test_deterministic_for_a_seed(tmp_path, demo_shards):
    out = tmp_path / "again"
    assert build(out, "--demo-train-per-class", 12, "--demo-val-per-class", 5, "--shard-size", 40) == 0
    a, b = read_manifest(out), read_manifest(demo_shards)
    assert shas(a, "train") == shas(b, "train")
    assert a["stats"] == b["stats"]
    other = tmp_path / "seed1"
    assert build(other, "--demo-train-per-class", 12, "--demo-val-per-class", 5, "--shard-size", 40, "--seed", 1) == 0
    assert read_manifest(other)["splits"]["train"]["shards"][0]["sha256"] != a["splits"]["train"]["shards"][0]["sha256"]


def test_imagenet_tree_with_flat_val_and_csv(demo_tree, tmp_path):
    out = tmp_path / "s"
    assert build(out, "--src", demo_tree, "--shard-size", 5) == 0
    m = read_manifest(out)
    assert m["classes"] == ["demo00", "demo01", "demo02"]
    assert m["splits"]["train"]["num_samples"] == 18 and m["splits"]["val"]["num_samples"] == 9
    # val labels come from the csv: flat file ILSVRC2012_val_<n> of class n // 3
    assert sorted(np.bincount([lab for lab, _ in samples(out, "val").values()]).tolist()) == [3, 3, 3]


def test_awkward_inputs_converted_and_bad_ones_skipped(tree_copy, tmp_path, capsys):
    converted, bad = add_awkward_inputs(tree_copy)
    out = tmp_path / "s"
    assert build(out, "--src", tree_copy) == 0
    m = read_manifest(out)
    assert m["splits"]["train"]["num_samples"] == 18 + converted
    reasons = {s["path"].split("/")[-1]: s["reason"] for s in m["skipped"]}
    assert set(reasons) == {"truncated.JPEG", "empty.JPEG", "notes.txt"}
    assert "empty" in reasons["empty.JPEG"] and "not an image" in reasons["notes.txt"]
    assert f"{bad} inputs skipped" in capsys.readouterr().out
    for _, jpeg in samples(out, "train").values():
        img = Image.open(io.BytesIO(jpeg))
        assert img.mode == "RGB" and min(img.size) == 256 and not img.info.get("progressive")


def test_strict_makes_a_skip_an_error(tree_copy, tmp_path, capsys):
    add_awkward_inputs(tree_copy)
    assert build(tmp_path / "s", "--src", tree_copy, "--strict") == 2
    assert "--strict" in capsys.readouterr().err


def test_size_zero_keeps_baseline_jpegs_and_small_images(tree_copy, tmp_path):
    add_awkward_inputs(tree_copy)
    out = tmp_path / "s"
    assert build(out, "--src", tree_copy, "--size", 0) == 0
    originals = {p.read_bytes() for p in (tree_copy / "train").rglob("*") if p.is_file()}
    kept = [jpeg for _, jpeg in samples(out, "train").values()]
    # kept byte for byte: the 18 demo JPEGs and tiny.JPEG (baseline RGB); cmyk, gray, progressive, PNG/GIF: re-encoded
    assert sum(j in originals for j in kept) == 18 + 1
    assert len(kept) == 18 + 9
    sizes = sorted(min(Image.open(io.BytesIO(j)).size) for j in kept)
    assert sizes[0] == 30  # the tiny image is kept as it is; the loader scales it up


def test_center_crop_gives_squares(demo_tree, tmp_path):
    out = tmp_path / "s"
    assert build(out, "--src", demo_tree, "--center-crop") == 0
    for _, jpeg in samples(out, "val").values():
        assert Image.open(io.BytesIO(jpeg)).size == (256, 256)


@pytest.mark.parametrize("case, message", [
    ("missing_src", "not a readable folder"),
    ("empty_class", "class folder(s) with no images"),
    ("unlabelled_val", "have no label"),
    ("no_labels_file", "no labels"),
])
def test_bad_sources_give_clear_errors(case, message, tree_copy, tmp_path, capsys):
    src = tree_copy
    if case == "missing_src":
        src = tmp_path / "nope"
    elif case == "empty_class":
        (tree_copy / "train" / "empty_class").mkdir()
    elif case == "unlabelled_val":
        (tree_copy / "val" / "extra.JPEG").write_bytes((tree_copy / "val").glob("*.JPEG").__next__().read_bytes())
    elif case == "no_labels_file":
        (tree_copy / "LOC_val_solution.csv").unlink()
    assert build(tmp_path / "s", "--src", src) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and message in err


def test_out_with_other_settings_is_refused(demo_tree, tmp_path, capsys):
    out = tmp_path / "s"
    assert build(out, "--src", demo_tree) == 0
    assert build(out, "--src", demo_tree) == 0  # same settings: nothing to do
    assert "already built" in capsys.readouterr().out
    assert build(out, "--src", demo_tree, "--quality", 70) == 2
    assert "different settings" in capsys.readouterr().err


def test_resume_after_a_killed_build(demo_tree, tmp_path, monkeypatch):
    clean = tmp_path / "clean"
    assert build(clean, "--src", demo_tree, "--shard-size", 4) == 0
    out = tmp_path / "killed"
    real_add, count = ShardWriter.add, {"n": 0}

    def dying_add(self, *a):
        count["n"] += 1
        if count["n"] == 11:  # mid-way through the third shard
            raise KeyboardInterrupt
        return real_add(self, *a)

    monkeypatch.setattr(ShardWriter, "add", dying_add)
    with pytest.raises(KeyboardInterrupt):
        build(out, "--src", demo_tree, "--shard-size", 4)
    monkeypatch.setattr(ShardWriter, "add", real_add)
    partial = read_manifest(out)
    assert not partial["complete"] and len(partial["splits"]["train"]["shards"]) == 2
    assert not (out / "train" / "train-000002.tar").exists()  # the half shard never looks whole
    assert build(out, "--src", demo_tree, "--shard-size", 4) == 2  # without --resume: refused
    assert build(out, "--src", demo_tree, "--shard-size", 4, "--resume") == 0
    a, b = read_manifest(out), read_manifest(clean)
    for split in ("train", "val"):
        assert shas(a, split) == shas(b, split)
    assert a["stats"] == b["stats"]
    assert not list(out.rglob("*.tmp"))


def test_verify_finds_corruption(demo_tree, tmp_path, capsys):
    out = tmp_path / "s"
    assert build(out, "--src", demo_tree, "--shard-size", 5) == 0
    assert build(out, "--verify") == 0
    tar = sorted((out / "train").glob("*.tar"))[1]
    data = bytearray(tar.read_bytes())
    data[2000] ^= 0xFF
    tar.write_bytes(bytes(data))
    assert build(out, "--verify") == 1
    assert f"{tar}: sha256 differs" in capsys.readouterr().out
    tar.write_bytes(bytes(data[:5000]))
    assert any("truncated" in p for p in mf.verify(out))


def test_prepare_refuses_huge_images(monkeypatch):
    monkeypatch.setattr(images, "MAX_PIXELS", 1000)
    buf = io.BytesIO()
    Image.new("RGB", (100, 100)).save(buf, "PNG")
    with pytest.raises(images.BadImage, match="too large"):
        images.prepare(buf.getvalue())


def test_pipeline_leaves_pils_guards_as_they_were():
    """The builder's decoding limits are its own: importing any pipeline module, or decoding (even an image it
    refuses), leaves PIL's process-wide settings as the process had them. In a fresh interpreter, so that nothing
    imported earlier can have changed them first."""
    code = """if True:
        import importlib, io, pkgutil
        from PIL import Image, ImageFile
        Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES = 4321, True
        import pipeline
        for m in pkgutil.iter_modules(pipeline.__path__):
            importlib.import_module(f"pipeline.{m.name}")
        import cluster.launch
        assert (Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES) == (4321, True), "after import"
        from pipeline import images
        buf = io.BytesIO()
        Image.new("RGB", (100, 100)).save(buf, "PNG")
        images.prepare(buf.getvalue())
        images.MAX_PIXELS = 1000
        try:
            images.prepare(buf.getvalue())
            raise SystemExit("prepare accepted an image over its limit")
        except images.BadImage:
            pass
        assert (Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES) == (4321, True), "after prepare"
        print("ok")
    """
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and run.stdout.strip() == "ok", run.stderr


def test_bad_shard_size_flag(tmp_path, capsys):
    assert build(tmp_path / "s", "--shard-size", "lots") == 2
    assert "--shard-size" in capsys.readouterr().err


def test_hand_written_tar_headers_equal_tarfiles(tmp_path):
    from pipeline.shard_writer import sample_members
    with ShardWriter(tmp_path / "ours.tar") as w:
        for i in range(3):
            w.add(i, 7 * i, bytes(range(256)) * (i + 1))
    with tarfile.open(tmp_path / "ref.tar", "w", format=tarfile.USTAR_FORMAT) as t:
        for i in range(3):
            for ext, data in sample_members(i, 7 * i, bytes(range(256)) * (i + 1)):
                ti = tarfile.TarInfo(f"{i:09d}.{ext}")
                ti.size, ti.mtime, ti.mode = len(data), 0, 0o644
                t.addfile(ti, io.BytesIO(data))
    assert (tmp_path / "ours.tar").read_bytes() == (tmp_path / "ref.tar").read_bytes()


def test_plain_val_labels_file(tree_copy, tmp_path):
    csv_rows = (tree_copy / "LOC_val_solution.csv").read_text().splitlines()[1:]
    (tree_copy / "LOC_val_solution.csv").unlink()
    plain = tmp_path / "labels.txt"
    plain.write_text("".join(f"{r.split(',')[0]}.JPEG {r.split(',')[1].split()[0]}\n" for r in csv_rows))
    out = tmp_path / "s"
    assert build(out, "--src", tree_copy, "--val-labels", plain) == 0
    assert sorted(np.bincount([lab for lab, _ in samples(out, "val").values()]).tolist()) == [3, 3, 3]


def test_shard_size_in_bytes(demo_tree, tmp_path):
    out = tmp_path / "s"
    assert build(out, "--src", demo_tree, "--shard-size", "100KB") == 0
    shards = read_manifest(out)["splits"]["train"]["shards"]
    assert len(shards) > 2 and sum(s["num_samples"] for s in shards) == 18
    assert all(s["bytes"] >= 100 * 1024 for s in shards[:-1])  # each full shard closed once past the limit
    assert mf.verify(out) == []
