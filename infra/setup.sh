#!/usr/bin/env bash
# One-time set-up: a Python 3.11 virtualenv in .venv with svgt and exactly pinned dependencies.
#   bash infra/setup.sh
# GPU users: set SVGT_TORCH_INDEX to a PyTorch CUDA wheel index first, e.g.
#   SVGT_TORCH_INDEX=https://download.pytorch.org/whl/cu128 bash infra/setup.sh
# so torch 2.13.0 comes as a CUDA build; everything else stays as pinned in constraints.txt.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null || { echo "setup: $PYTHON not found (svgt needs Python 3.11)" >&2; exit 1; }
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install --quiet --disable-pip-version-check --upgrade "pip==25.3"
if [ -n "${SVGT_TORCH_INDEX:-}" ]; then
  .venv/bin/pip install --quiet --disable-pip-version-check "torch==2.13.0" --index-url "$SVGT_TORCH_INDEX"
fi
# torch is pinned to 2.13.0 in constraints.txt: on a CPU-only machine this takes the CPU wheel,
# never a newer CUDA build pulled in by a loose requirement.
.venv/bin/pip install --quiet --disable-pip-version-check -c constraints.txt -e ".[dev]"
.venv/bin/python -c "import svgt, torch; print(f'svgt ready: torch {torch.__version__}, cuda={torch.cuda.is_available()}')"
