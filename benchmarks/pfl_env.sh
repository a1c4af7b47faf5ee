#!/usr/bin/env bash
# A separate virtual environment for the pfl-research baseline row of benchmarks/simulation.py:
# Apple's pfl with its PyTorch extra (no TensorFlow), at this repository's torch version, in
# .venv-pfl (git-ignored). pfl never enters Pollen's own dependencies (pyproject.toml).
#   bash benchmarks/pfl_env.sh            # create or update .venv-pfl
#   .venv-pfl/bin/python benchmarks/pfl_check.py   # pfl's FedAvg round against a hand-written one
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${PFL_VENV:-.venv-pfl}
PFL_VERSION=${PFL_VERSION:-0.6.0}
test -x "$VENV/bin/python" || ${PYTHON:-python3} -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet --upgrade pip
# the CPU torch wheel first (as the Makefile installs .venv's), so pfl's extra finds it satisfied
TORCH=$(.venv/bin/python -c "import torch; print(torch.__version__.split('+')[0])" 2>/dev/null || echo 2.13.0)
"$VENV/bin/python" -m pip install --quiet "torch==$TORCH"
"$VENV/bin/python" -m pip install --quiet "pfl[pytorch]==$PFL_VERSION"
"$VENV/bin/python" -c "import pfl, torch; print('pfl', pfl.__version__ if hasattr(pfl, '__version__') else '$PFL_VERSION', '| torch', torch.__version__)"
