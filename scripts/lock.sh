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
uv pip compile pyproject.toml --extra test --extra slurm --generate-hashes --python-version 3.11 \
    --python-platform x86_64-manylinux_2_28 --constraint scripts/lock-constraints.txt \
    ${WHEELS:+--find-links "$WHEELS"} \
    --custom-compile-command "bash scripts/lock.sh" -o requirements.lock
