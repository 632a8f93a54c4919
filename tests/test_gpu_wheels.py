"""gpu_check/wheels_check.py: the wheels the GPU image lacks are picked, and a dependency that neither they nor the
image provide fails the check here (with fake wheels, offline; the real set is resolved by gpu_check/wheels.sh)."""
import pytest

from gpu_check.wheels_check import main, read_image_list, select, write_wheel


@pytest.fixture
def fake(tmp_path):
    """An app needing a library the image has (numpy-like) and one it lacks (nvjpeg-like)."""
    all_dir = tmp_path / "all"
    all_dir.mkdir()
    write_wheel(all_dir, "zz-fake-app", "1.0", requires=["zz-fake-in-image>=2", "zz-fake-codec[all]<0.10"])
    write_wheel(all_dir, "zz-fake-in-image", "2.5")
    write_wheel(all_dir, "zz-fake-codec", "0.9", requires=['zz-fake-jpeg; extra == "all"'], extras=["all"])
    write_wheel(all_dir, "zz-fake-jpeg", "13.0")
    write_wheel(all_dir, "zz-fake-only-for-image", "1.0")  # what the image's own package needs: not carried
    (tmp_path / "image.txt").write_text("# the image\nzz_fake.in_image==2.5\nzz-fake-other\n")
    (tmp_path / "req.txt").write_text("zz-fake-app\n")
    return tmp_path


def args(tmp):
    return ["--all", str(tmp / "all"), "--carry", str(tmp / "carry"), "--image", str(tmp / "image.txt"),
            "-r", str(tmp / "req.txt")]


def test_carries_what_the_image_lacks_and_resolves(fake, capsys):
    assert main(args(fake)) == 0
    carried = sorted(p.name.split("-")[0] for p in (fake / "carry").iterdir())
    assert carried == ["zz_fake_app", "zz_fake_codec", "zz_fake_jpeg"]
    out = capsys.readouterr().out
    assert "OK: 3 wheels to carry" in out and "zz-fake-in-image 2.5" in out and "zz_fake_only_for_image" in out


def test_a_dependency_nobody_provides_fails_here(fake, capsys):
    (fake / "all" / "zz_fake_jpeg-13.0-py3-none-any.whl").unlink()  # the nvjpeg of 2026-11-28
    assert main(args(fake)) == 1
    out = capsys.readouterr().out
    assert "zz-fake-jpeg" in out and "FAILED: the carried wheels" in out


def test_an_image_version_that_does_not_fit_fails_here(fake, capsys):
    (fake / "image.txt").write_text("zz-fake-in-image==1.0\n")  # the app needs >= 2
    assert main(args(fake)) == 1
    assert "FAILED" in capsys.readouterr().out


def test_image_list_and_two_versions_of_one_project(tmp_path):
    assert read_image_list(_write(tmp_path / "l.txt", "# c\nNumPy==2.5.2\nruamel.yaml  # x\n")) == {
        "numpy": "2.5.2", "ruamel-yaml": None}
    a, b = write_wheel(tmp_path, "zz-x", "1.0"), write_wheel(tmp_path, "zz-x", "2.0")
    with pytest.raises(SystemExit, match="two wheels of zz-x"):
        select([a, b], {})


def _write(path, text):
    path.write_text(text)
    return path
