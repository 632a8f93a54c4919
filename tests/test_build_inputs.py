"""What the shard builder tells a user about real photographs: --strict stops cleanly, an unknown class in the val
labels names its row and image, and images enlarged to reach --size are counted (and skipped over --max-upscale)."""
import io
import json

import numpy as np
from conftest import build
from PIL import Image, ImageFilter


def photo(width, height, seed):
    """A photo-like JPEG: smooth colour regions, an edge, sensor noise, saved as a camera would (quality 85)."""
    rng = np.random.default_rng(seed)
    low = Image.fromarray(rng.integers(0, 255, (6, 8, 3), dtype=np.uint8)).resize((width, height), Image.BICUBIC)
    arr = np.asarray(low.filter(ImageFilter.GaussianBlur(2)), dtype=np.float32)
    arr[:, width // 3:width // 3 + 2] *= 0.3  # a dark edge
    arr += rng.normal(0, 6, arr.shape)
    buf = io.BytesIO()
    Image.fromarray(arr.clip(0, 255).astype(np.uint8)).save(buf, "JPEG", quality=85)
    return buf.getvalue()


def add_small_photos(src):
    """Three photos smaller than 256 on the shorter side (enlarged 2.13x, 2.84x, 4.27x) and one larger one."""
    d = src / "train" / "demo01"
    sizes = {"thumb.JPEG": (160, 120), "small.JPEG": (120, 90), "narrow.JPEG": (60, 200), "big.JPEG": (500, 375)}
    for i, (name, (w, h)) in enumerate(sizes.items()):
        (d / name).write_bytes(photo(w, h, i))
    return {"thumb.JPEG": 256 / 120, "small.JPEG": 256 / 90, "narrow.JPEG": 256 / 60}


def manifest(out):
    return json.loads((out / "manifest.json").read_text())


def test_strict_stops_on_a_line_of_its_own_and_leaves_a_build_resume_continues(tree_copy, tmp_path, capsys):
    broken = tree_copy / "train" / "demo02" / "broken.JPEG"
    good = photo(400, 300, 7)
    broken.write_bytes(good[: len(good) // 2])  # a truncated download
    out = tmp_path / "s"
    assert build(out, "--src", tree_copy, "--strict") == 2
    err = capsys.readouterr().err
    line = next(x for x in err.splitlines() if "broken.JPEG" in x)
    assert line.startswith("error: ") and "broken.JPEG: cannot decode" in line  # not after a progress bar
    assert "--strict: stopped" in err and "--resume" in err
    assert not list(out.rglob("*.tmp")), "the unfinished shard was left behind"
    assert not manifest(out)["complete"]
    assert build(out, "--src", tree_copy) == 2  # an unfinished build is never overwritten silently
    assert "--resume" in capsys.readouterr().err
    broken.write_bytes(good)  # the user replaces the file
    assert build(out, "--src", tree_copy, "--strict", "--resume") == 0
    m = manifest(out)
    assert m["complete"] and m["splits"]["train"]["num_samples"] == 19 and not m["skipped"]


def test_a_resume_with_another_file_list_is_refused(tree_copy, tmp_path, capsys):
    broken = tree_copy / "train" / "demo02" / "broken.JPEG"
    broken.write_bytes(b"\xff\xd8 not really")
    out = tmp_path / "s"
    assert build(out, "--src", tree_copy, "--strict") == 2
    broken.unlink()  # removing the file changes the global shuffle: the finished part would not match
    capsys.readouterr()
    assert build(out, "--src", tree_copy, "--strict", "--resume") == 2
    assert "a file added or removed" in capsys.readouterr().err


def test_an_unknown_class_in_the_val_labels_names_the_row_and_the_image(tree_copy, tmp_path, capsys):
    csv = tree_copy / "LOC_val_solution.csv"
    lines = csv.read_text().splitlines()
    image = lines[3].split(",")[0]
    lines[3] = f"{image},n99999999 1 1 10 10"  # the fourth line of the file
    csv.write_text("\n".join(lines) + "\n")
    assert build(tmp_path / "s", "--src", tree_copy) == 2
    err = capsys.readouterr().err
    assert "line 4: n99999999" in err and f"val/{image}.JPEG" in err and "1 image(s)" in err


def test_enlarged_images_are_counted_and_max_upscale_skips_them(tree_copy, tmp_path, capsys):
    factors = add_small_photos(tree_copy)
    out = tmp_path / "s"
    assert build(out, "--src", tree_copy, "--shard-size", 5) == 0
    m = manifest(out)
    first = [s.get("upscaled", {}).get("images", 0) for s in m["splits"]["train"]["shards"]]
    enlarged_demo = m["upscaled"]["train"]["images"] - len(factors)  # the demo tree's own images may be small too
    assert enlarged_demo >= 0 and sum(first) == m["upscaled"]["train"]["images"]
    assert m["upscaled"]["size"] == 256
    assert m["upscaled"]["train"]["max_factor"] >= round(max(factors.values()), 3)
    printed = capsys.readouterr().out
    assert "enlarged to it" in printed and "--max-upscale" in printed

    strict = tmp_path / "limited"
    assert build(strict, "--src", tree_copy, "--max-upscale", 2.5) == 0
    m2 = manifest(strict)
    skipped = {s["path"].split("/")[-1]: s["reason"] for s in m2["skipped"]}
    assert {"small.JPEG", "narrow.JPEG"} <= set(skipped) and "thumb.JPEG" not in skipped
    assert "60x200 px would be enlarged 4.27x" in skipped["narrow.JPEG"]
    assert m2["upscaled"]["train"]["max_factor"] <= 2.5
    assert m2["splits"]["train"]["num_samples"] == m["splits"]["train"]["num_samples"] - len(skipped)
    assert build(strict, "--src", tree_copy) == 2  # another --max-upscale is another build
    assert "max_upscale" in capsys.readouterr().err


def test_max_upscale_below_one_is_refused(tmp_path, capsys):
    assert build(tmp_path / "s", "--max-upscale", 0.5) == 2
    assert "--max-upscale 0.5" in capsys.readouterr().err
