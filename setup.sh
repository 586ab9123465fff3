#!/usr/bin/env bash
# Creates .venv with the segvol package and everything the workflow and the tests need (CPU is enough).
#   bash setup.sh            then   . .venv/bin/activate
# TORCH_SPEC picks the PyTorch build (default: the CPU-capable 2.13.0 wheel; any torch>=2.4 works).
set -euo pipefail
cd "$(dirname "$0")"
PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null || PYTHON=python3
"$PYTHON" -c 'import sys; assert sys.version_info >= (3, 11), "segvol needs Python >= 3.11"'
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
pip() { .venv/bin/python -m pip --disable-pip-version-check -q "$@"; }
pip install "${TORCH_SPEC:-torch==2.13.0}"
pip install -e ".[test,slurm]"
# The CLIP BPE vocabulary ships inside open-clip-torch (MIT); we only read that one file, so none of
# its dependencies (torchvision, timm) are needed.
pip install --no-deps "open-clip-torch>=2.20"
echo "segvol is installed in .venv (activate with: . .venv/bin/activate)"
