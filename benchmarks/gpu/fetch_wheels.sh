#!/usr/bin/env bash
# Fill benchmarks/gpu/wheels/ (gitignored) with the packages drex imports that the GPU machine lacks,
# for its Python 3.12 on x86-64; run it here, where a package index is reachable. Default: simpy, the one
# drex import missing from that machine's image (see benchmarks/gpu/README.md). More: fetch_wheels.sh NAME==VER ...
set -euo pipefail
dest="$(cd "$(dirname "$0")" && pwd)/wheels"
mkdir -p "$dest"
pkgs=("$@")
[ ${#pkgs[@]} -gt 0 ] || pkgs=("simpy==4.1.2")
"${PYTHON:-python3}" -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --platform any -d "$dest" "${pkgs[@]}"
ls -l "$dest"
