#!/usr/bin/env bash
# The GPU part of the batched-engine checks, in one go (about 5 minutes on one H100):
#   1. speed: plain Flower (Ray, CUDA) vs Pollen on Flower's engine vs Pollen batched (CUDA)
#      at 1000 clients per round, and Pollen batched alone at 10,000 (benchmarks/simulation.py;
#      its "layout" column shows what each image layout took on the first chunk, unfold included);
#   2. fidelity: the batched engine on CUDA against Flower's engine on CPU (benchmarks/fidelity.py;
#      its fourth case, the tutorial CNN, shows how far the layout picked on CUDA moves the model);
#   3. the device codec's payloads and the chunk's masked (SecAgg+) uploads byte-for-byte against
#      the SDK's, the PCG64 port's draws against numpy's, and the unfold layout's gradients
#      against per-client autograd, on CUDA (tests/simulations/batched/test_codec.py,
#      test_pcg64.py, test_unfold.py, test_secure.py; needs pytest and scikit-learn, else
#      skipped; test_pcg64.py also hypothesis, which gpu_wheels.sh carries);
#   4. with SECURE=1 only (about 1.5 more minutes, past the 5-minute budget): secure
#      aggregation's per-client host path at 1000 clients, masks expanded on the GPU against the
#      SDK's stages client by client (benchmarks/host_path.py --only secagg).
#   5. with SKEWED=1 only: unequal client sizes (Dirichlet(0.3) and Pareto(2) sizes, 50 images on
#      average) at 100, 1000 and 10,000 clients per round: Pollen batched on CUDA against Flower's
#      engine running the same Task (up to 1000 clients), benchmarks/simulation.py --skewed
#      --with-10k; PFL=1 adds pfl-research's rows (needs pfl importable by $PFL_PYTHON, e.g. a
#      venv made by benchmarks/pfl_env.sh; its wheels are not in gpu_wheels.sh yet).
# SIMULATION_ARGS / FIDELITY_ARGS add flags (e.g. --skip-pollen-flower, --case 2, or
# --per-client-uploads for unpooled batched rows: about 1.5 more minutes).
# Run from the repository root on a machine with a CUDA GPU and torch. Packages the machine lacks
# (flwr, ray, ...) travel as wheels in .whl/: make them here with `bash benchmarks/gpu_wheels.sh`
# (about 57 MiB) and name `.whl` in the device call's carry; they are installed into /tmp/site
# first. Results go to $OUT (default benchmarks/results/gpu).
set -uo pipefail
OUT=${OUT:-benchmarks/results/gpu}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if compgen -G ".whl/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH="/tmp/site:$PYTHONPATH"
fi
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  python3 -c "import torch, grpc, google.protobuf as pb, flwr, ray, numpy; print('torch', torch.__version__, '| cuda', torch.cuda.is_available(), torch.cuda.get_device_name(0), '| grpc', grpc.__version__, '| protobuf', pb.__version__, '| flwr', flwr.__version__, '| ray', ray.__version__, '| numpy', numpy.__version__)"
} 2>&1 | tee "$OUT/environment.txt"
echo "== speed ==" | tee "$OUT/log.txt"
timeout 240 python3 benchmarks/simulation.py --device cuda --clients 1000 10000 --rounds 3 \
  ${SIMULATION_ARGS:-} --json "$OUT/simulation.json" 2>&1 | tee -a "$OUT/log.txt"
echo "== fidelity ==" | tee -a "$OUT/log.txt"
timeout 120 python3 benchmarks/fidelity.py --device cuda ${FIDELITY_ARGS:-} 2>&1 | grep -E "max \||Error|error" \
  | tee -a "$OUT/log.txt"
echo "== device codec, PCG64 draws, unfold kernel and masks ==" | tee -a "$OUT/log.txt"
if python3 -c "import pytest, sklearn" 2>/dev/null; then
  checks="test_codec.py test_unfold.py test_secure.py"
  python3 -c "import hypothesis" 2>/dev/null && checks="$checks test_pcg64.py"
  timeout 90 python3 -m pytest -q -p no:cacheprovider \
    $(printf 'tests/simulations/batched/%s ' $checks) 2>&1 | tail -3 | tee -a "$OUT/log.txt"
else
  echo "pytest or scikit-learn missing: skipped" | tee -a "$OUT/log.txt"
fi
if [ "${SECURE:-0}" = 1 ]; then
  echo "== secure aggregation host path ==" | tee -a "$OUT/log.txt"
  timeout 150 python3 benchmarks/host_path.py --device cuda --clients 1000 --only secagg \
    --json "$OUT/host-path-secagg.json" 2>&1 | grep -v INFO | tail -4 | tee -a "$OUT/log.txt"
fi
if [ "${SKEWED:-0}" = 1 ]; then
  echo "== unequal client sizes ==" | tee -a "$OUT/log.txt"
  pfl_args=""
  [ "${PFL:-0}" = 1 ] && pfl_args="--pfl --pfl-python ${PFL_PYTHON:-.venv-pfl/bin/python}"
  timeout 600 python3 benchmarks/simulation.py --device cuda --skewed --with-10k --rounds 3 \
    $pfl_args --json "$OUT/simulation-skewed.json" 2>&1 | grep -E "clients \|" \
    | tee -a "$OUT/log.txt"
fi
