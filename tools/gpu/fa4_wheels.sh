#!/usr/bin/env bash
# Builds .fa4/ here: FlashAttention-4 (flash-attn-4, CuTe DSL kernels, Hopper forward and backward) and what it
# needs that the GPU host's image lacks, for ATTN_BACKEND=fa4. The CUDA 13 DSL library is ~92 MB as a wheel, more
# than a call may carry with the repo, so it travels xz-compressed in two parts (part0 40 MB, part1 the rest).
# Call 1 carries .fa4/cu13.tar.xz.part0 and .fa4/install.sh and runs `source .fa4/install.sh stash`; call 2, on the
# same warm machine, carries .fa4/cu13.tar.xz.part1, .fa4/small (the other wheels) and .fa4/install.sh and runs
# `source .fa4/install.sh`. Usage: bash tools/gpu/fa4_wheels.sh [OUT_DIR, default .fa4]
set -euo pipefail
out=${1:-.fa4}
mkdir -p "$out/small" && out=$(cd "$out" && pwd)
plat=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64
      --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64)
dl() { python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp "${plat[@]}" -d "$1" "${@:2}"; }
dl "$out/small" flash-attn-4==4.0.0b36 quack-kernels==0.6.5 nvidia-cutlass-dsl==4.8.1 \
    nvidia-cutlass-dsl-libs-base==4.8.1 nvidia-cutlass-dsl-libs-core==4.8.1 apache-tvm-ffi==0.1.12 torch-c-dlpack-ext==0.1.5
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
dl "$tmp" nvidia-cutlass-dsl-libs-cu13==4.8.1
mkdir "$tmp/x" && (cd "$tmp/x" && python3 -m zipfile -e "$tmp"/nvidia_cutlass_dsl_libs_cu13-*.whl . )
tar cf - -C "$tmp/x" . | xz -T2 -9 > "$tmp/cu13.tar.xz"
split -b 40000000 -d -a 1 "$tmp/cu13.tar.xz" "$out/cu13.tar.xz.part"   # .part0 (40 MB), .part1
cp "$(dirname "${BASH_SOURCE[0]}")/fa4_install.sh" "$out/install.sh"
du -sh "$out"/*
