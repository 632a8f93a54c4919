#!/usr/bin/env bash
# Wheels for a GPU node without internet whose image already holds Python 3.12, torch and much else
# (gpu_check/image_packages.txt), cut into parts small enough for a transfer limit. See docs/GPU.md for the node side.
#
#   bash gpu_check/wheels.sh [OUT]      # default OUT: .gpu  ->  OUT/whl/*.whl and OUT/parts/p00, p01, ...
#
# 1. pip resolves gpu_check/requirements.txt (DALI 2.4 with nvimgcodec[all] < 0.10 and nvjpeg, webdataset,
#    Ray Train 2.60) with every dependency, for CPython 3.12 manylinux x86-64, holding the image's known versions
#    (numpy, torch) fixed, into OUT/all.
# 2. gpu_check/wheels_check.py copies to OUT/whl only the wheels whose project the image lacks, then proves with
#    `pip install --dry-run --no-index` that they and the image's packages install the requirements: a missing
#    dependency fails here, not on the GPU node.
# 3. OUT/whl is cut into parts of PART_SIZE (default 60M = 60 MiB, for a transfer that limits each copy, e.g. to 64 MiB
#    with the working tree included).
set -euo pipefail
out=${1:-.gpu}
part_size=${PART_SIZE:-60M}
here=$(cd "$(dirname "$0")" && pwd)
plat=(--only-binary=:all: --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64
      --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64
      --platform manylinux1_x86_64)
rm -rf "$out/all" && mkdir -p "$out/all"  # a fresh resolution: an older version left there would be carried too
grep -E '^[A-Za-z0-9._-]+==' "$here/image_packages.txt" > "$out/image-versions.txt"
python3 -m pip download -q "${plat[@]}" -c "$out/image-versions.txt" -d "$out/all" -r "$here/requirements.txt"
python3 "$here/wheels_check.py" --all "$out/all" --carry "$out/whl"
rm -rf "$out/parts" && mkdir -p "$out/parts"
tar c -C "$out" whl | split -b "$part_size" -d - "$out/parts/p"
du -sh "$out/whl"
ls -l "$out/parts"
