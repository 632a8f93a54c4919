#!/usr/bin/env bash
# Wheels for a GPU node without internet (Python 3.12, x86-64, CUDA 13 driver, torch and numpy already there), cut
# into parts small enough for a transfer limit. See docs/GPU.md for what to do with them on the node.
#
#   bash bench/gpu_wheels.sh [OUT]      # default OUT: .gpu  ->  OUT/whl/*.whl and OUT/parts/p00, p01, ...
#
# Two sets: DALI and the loader's needs, named one by one with --no-deps (DALI's wheel pins its nvcomp; a newer one
# fetched by name alone is the wrong one); Ray Train, TensorBoard and matplotlib for cluster/launch.py, resolved with
# their dependencies, then numpy removed (the node's torch was built against the node's numpy).
set -euo pipefail
out=${1:-.gpu}
part_size=${PART_SIZE:-55M}
plat=(--python-version 3.12 --only-binary=:all: --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64
      --platform manylinux_2_17_x86_64 --platform manylinux_2_27_x86_64)
mkdir -p "$out/whl"
python3 -m pip download -q --no-deps "${plat[@]}" -d "$out/whl" \
    nvidia-dali-cuda130 nvidia-nvimgcodec-cu13 'nvidia-libnvcomp-cu13==5.3.0.16' nvidia-nvjpeg2k-cu13 \
    nvidia-nvtiff-cu13 webdataset braceexpand nvtx makefun astunparse gast optree libcst
python3 -m pip download -q "${plat[@]}" -d "$out/whl" 'ray[train]==2.60.0' tensorboard matplotlib
rm -f "$out"/whl/numpy-*.whl
rm -rf "$out/parts" && mkdir -p "$out/parts"
tar c -C "$out" whl | split -b "$part_size" -d - "$out/parts/p"
du -sh "$out/whl"
ls -l "$out/parts"
