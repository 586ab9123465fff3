#!/usr/bin/env bash
# Creates .venv with the segvol package and everything the workflow and the tests need (CPU is enough),
# exactly the versions of requirements.lock (hash-checked; regenerate it with scripts/lock.sh).
#   bash setup.sh            then   . .venv/bin/activate
# TORCH_SPEC installs another build of the locked PyTorch version instead of the CPU wheel, e.g. CUDA:
#   TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128" bash setup.sh
set -euo pipefail
cd "$(dirname "$0")"
PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null || PYTHON=python3
"$PYTHON" -c 'import sys; assert sys.version_info >= (3, 11), "segvol needs Python >= 3.11"'
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
pip() { .venv/bin/python -m pip --disable-pip-version-check -q "$@"; }
lock=requirements.lock
if [ -n "${TORCH_SPEC:-}" ]; then
    # shellcheck disable=SC2086  # TORCH_SPEC may carry pip options (--index-url ...)
    pip install $TORCH_SPEC
    lock=$(mktemp) && trap 'rm -f "$lock"' EXIT
    # the locked CPU torch entry (name line up to its last continuation line) is left out
    awk '/^torch==/{skip=1} skip&&!/\\$/{skip=0; next} !skip' requirements.lock >"$lock"
fi
# --no-deps: the lock already lists every dependency; `pip check` below proves it is consistent.
pip install --no-deps --require-hashes -r "$lock"
pip install --no-deps -e .
# The lock leaves out torchvision on purpose (scripts/lock.sh says why); anything else must be consistent.
problems=$(.venv/bin/python -m pip check 2>&1 | grep -v -e "requires torchvision, which is not installed" \
    -e "No broken requirements found" || true)
[ -z "$problems" ] || { echo "$problems" >&2; exit 1; }
echo "segvol is installed in .venv (activate with: . .venv/bin/activate)"
