"""Pick the wheels a GPU node lacks and prove, here, that they install there (gpu_check/wheels.sh runs this).

    python -m gpu_check.wheels_check --all .gpu/all --carry .gpu/whl

--all holds the wheels `pip download` resolved for the requirements (Python 3.12, manylinux x86-64); those whose
project the image already has (gpu_check/image_packages.txt) stay behind, the rest are copied to --carry. Then
`pip install --dry-run --no-index` resolves the requirements from --carry plus a stand-in wheel for each image
package, for the node's Python and platform: a dependency that neither the carried wheels nor the image provide
fails here, not on the GPU node. A downloaded wheel that only an image package needs is left behind. A stand-in has
the version the image list gives, else the version pip resolved here (the list does not say the image's): `pip
check` on the node is the last word on those.
"""
import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
PLATFORM = ["--only-binary=:all:", "--python-version", "3.12", "--implementation", "cp",
            *[a for p in ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64",
                          "manylinux2014_x86_64", "manylinux1_x86_64") for a in ("--platform", p)]]


def get_args_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--all", type=Path, required=True, help="the downloaded wheels (required)")
    p.add_argument("--carry", type=Path, required=True,
                   help="folder to fill with the wheels the image lacks; emptied first (required)")
    p.add_argument("--image", type=Path, default=HERE / "image_packages.txt",
                   help="the image's package list (default: gpu_check/image_packages.txt)")
    p.add_argument("-r", "--requirements", type=Path, default=HERE / "requirements.txt",
                   help="what the node needs (default: gpu_check/requirements.txt)")
    return p


def normalize(name):
    return re.sub(r"[-_.]+", "-", name).lower()


def read_image_list(path):
    """{project: version or None} from lines 'name' or 'name==version'; '#' starts a comment."""
    image = {}
    for line in Path(path).read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, _, version = line.partition("==")
            image[normalize(name)] = version.strip() or None
    return image


def wheel_project(path):
    """(project, version) from a wheel's file name (PEP 427: name-version-...whl)."""
    name, version = Path(path).name.split("-")[:2]
    return normalize(name), version


def select(wheels, image):
    """(carry, from_image): the wheels whose project the image lacks, and {project: version} of those it has. Two
    versions of one project would stop the node's --no-deps install, so they are an error here."""
    seen = {}
    for w in wheels:
        project, version = wheel_project(w)
        if project in seen:
            raise SystemExit(f"two wheels of {project}: {Path(seen[project][1]).name} and {Path(w).name}; empty the "
                             f"download folder and run gpu_check/wheels.sh again")
        seen[project] = (version, w)
    carry = sorted(w for p, (_, w) in seen.items() if p not in image)
    return carry, {p: v for p, (v, _) in seen.items() if p in image}


def write_wheel(folder, project, version, requires=(), extras=()):
    """A wheel holding only metadata: a stand-in for a package the image has (and, in tests, a fake package)."""
    dist = f"{re.sub(r'[-_.]+', '_', project)}-{version}"
    path = Path(folder) / f"{dist}-py3-none-any.whl"
    meta = "".join([f"Metadata-Version: 2.1\nName: {project}\nVersion: {version}\n",
                    *(f"Provides-Extra: {e}\n" for e in extras), *(f"Requires-Dist: {r}\n" for r in requires)])
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(f"{dist}.dist-info/METADATA", meta)
        z.writestr(f"{dist}.dist-info/WHEEL", "Wheel-Version: 1.0\nGenerator: stand-in\nRoot-Is-Purelib: true\n"
                                              "Tag: py3-none-any\n")
        z.writestr(f"{dist}.dist-info/RECORD", "")
    return path


def dry_run(requirements, carry_dir, image, resolved):
    """pip's resolver over the carried wheels plus the image's stand-ins, for the node's Python and platform.
    Returns (pip's exit code, its output, {project: version} it would install)."""
    with tempfile.TemporaryDirectory() as tmp:
        stubs = Path(tmp) / "image"
        stubs.mkdir()
        for project, version in image.items():
            write_wheel(stubs, project, version or resolved.get(project, "0"))
        report = Path(tmp) / "report.json"
        cmd = [sys.executable, "-m", "pip", "--isolated", "install", "--dry-run", "--no-index",  # no pip.conf/PIP_*
               "--find-links", str(carry_dir), "--find-links", str(stubs), *PLATFORM, "--target", str(Path(tmp) / "t"),
               "--report", str(report), "-r", str(requirements)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        installs = {}
        if proc.returncode == 0:
            for item in json.loads(report.read_text())["install"]:
                installs[normalize(item["metadata"]["name"])] = item["metadata"]["version"]
        return proc.returncode, proc.stdout + proc.stderr, installs


def main(argv=None):
    args = get_args_parser().parse_args(argv)
    wheels = sorted(args.all.glob("*.whl"))
    if not wheels:
        raise SystemExit(f"--all {args.all}: no wheels there; run gpu_check/wheels.sh, which downloads them")
    image = read_image_list(args.image)
    carry, from_image = select(wheels, image)
    shutil.rmtree(args.carry, ignore_errors=True)
    args.carry.mkdir(parents=True)
    for w in carry:
        shutil.copy2(w, args.carry)
    code, log, installs = dry_run(args.requirements, args.carry, image, from_image)
    if code != 0:
        print(log[-4000:])
        print(f"FAILED: the carried wheels ({args.carry}) plus the image's packages do not install "
              f"{args.requirements.name} on Python 3.12 x86-64 (pip's words above)")
        return 1
    # Wheels pulled in only by an image package's own needs (pandas -> tzdata): the image runs its packages already.
    unused = [w for w in carry if wheel_project(w)[0] not in installs]
    for w in unused:
        (args.carry / w.name).unlink()
    carry = [w for w in carry if w not in unused]
    relied = sorted(p for p in installs if p in image)
    size = sum(w.stat().st_size for w in carry) / 2**20
    if unused:
        print(f"left behind, needed only by packages the image has: {', '.join(w.name for w in unused)}")
    print(f"OK: {len(carry)} wheels to carry ({size:.0f} MiB) in {args.carry}; from the image: "
          + ", ".join(f"{p} {installs[p]}{'' if image[p] else ' (version assumed)'}" for p in relied))
    return 0


if __name__ == "__main__":
    sys.exit(main())
