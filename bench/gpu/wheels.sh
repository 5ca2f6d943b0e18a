#!/usr/bin/env bash
# Builds .whl/ (git-ignored) on a machine with a package index, for a GPU machine that has
# Python, torch, torchvision, numpy, pyarrow, fsspec and Pillow but no Ray and no internet
# (the project's lent device machines). Ray's wheel goes without its Java jars, RLlib,
# Serve, LLM and the dashboard's web client: 29 MB of tar.xz instead of ~70 MB, under the
# 64 MiB a device call may carry. Usage: bench/gpu/wheels.sh [python version, default 3.12]
set -euo pipefail
cd "$(dirname "$0")/../.."
py=${1:-3.12}
ray_version=$(.venv/bin/python -c "import ray; print(ray.__version__)")
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p .whl
rm -f .whl/*.whl .whl/ray-trim.tar.xz
.venv/bin/python -m pip download -q --no-deps --only-binary=:all: --python-version "$py" --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d "$work/dl" "ray==$ray_version" jsonschema jsonschema-specifications referencing rpds-py pycocotools nvidia-ml-py
mkdir "$work/site"
.venv/bin/python -m zipfile -e "$work"/dl/ray-*.whl "$work/site"
rm -rf "$work"/site/ray/{jars,rllib,serve,llm} "$work/site/ray/dashboard/client"
tar cJf .whl/ray-trim.tar.xz -C "$work/site" .
find "$work/dl" -name '*.whl' ! -name 'ray-*' -exec mv {} .whl/ \;
ls -la .whl
