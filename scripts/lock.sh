#!/usr/bin/env bash
# Regenerates requirements.lock: every Python dependency of segvol[test,slurm] pinned with hashes, for
# CPython 3.11 on x86_64 Linux. setup.sh installs from it; tests/test_envs.py checks the venv against it.
# The CPU build of PyTorch (scripts/lock-constraints.txt) comes from the local wheel folder ($SEGVOL_WHEELS,
# default /opt/wheels) when present: its hash is the one of that file.
#   bash scripts/lock.sh          (needs `uv`: pip install uv, or segvol[dev])
set -euo pipefail
cd "$(dirname "$0")/.."
WHEELS=${SEGVOL_WHEELS:-/opt/wheels}
[ -d "$WHEELS" ] || WHEELS=
# torchvision is left out: PyPI's build is made for CUDA PyTorch and does not load beside the CPU build;
# only timm declares it (via nnU-Net's network library), and no path of ours imports timm.
uv pip compile pyproject.toml --extra test --extra slurm --generate-hashes --python-version 3.11 \
    --no-emit-package torchvision \
    --python-platform x86_64-manylinux_2_28 --constraint scripts/lock-constraints.txt \
    ${WHEELS:+--find-links "$WHEELS"} \
    --custom-compile-command "bash scripts/lock.sh" -o requirements.lock
