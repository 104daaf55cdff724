#!/usr/bin/env bash
# The GPU suite on a GPU machine that has torch, lightning, torchmetrics and torchvision but no internet
# (benchmarks/README.md, "The GPU suite"):
#
#   bash benchmarks/gpu_suite.sh prepare        # here, where pip reaches its index: the wheels that machine
#                                               # lacks into .whl/ (hydra-core, omegaconf, antlr4, torch-fidelity,
#                                               # mlxtend, wandb: /work/shared/tools/device-wheels.sh --wandb; and
#                                               # guided-diffusion-sdk, the reference of the ADM part) and the
#                                               # commit being measured into .whl/SOURCE
#   bash benchmarks/gpu_suite.sh run [OUT]      # there, from the repository root with .whl/ beside it: install
#                                               # the wheels into /tmp/site ($SITE) and run benchmarks/gpu_suite.py
#                                               # (OUT: where gpu_suite.json / .md / .log go; default $OUT, else
#                                               # outputs/gpu_suite); further arguments go to gpu_suite.py
set -euo pipefail
cd "$(dirname "$0")/.."
case "${1:-}" in
  prepare)
    py=${PYTHON:-python3}
    wheels=${DEVICE_WHEELS:-/work/shared/tools/device-wheels.sh}
    [ -f "$wheels" ] || wheels=../shared/tools/device-wheels.sh
    PATH="$(dirname "$(command -v "$py")"):$PATH" bash "$wheels" --wandb .whl
    "$py" -m pip wheel -q --no-deps -w .whl guided-diffusion-sdk==1.0.0 2>&1 | grep -v '^WARNING' || true
    { git rev-parse --short=7 HEAD; git status --porcelain --untracked-files=no | cut -c4-; } | tr '\n' ' ' \
      >.whl/SOURCE
    echo "commit measured: $(cat .whl/SOURCE)"
    ;;
  run)
    out=${2:-${OUT:-outputs/gpu_suite}}
    site=${SITE:-/tmp/site}
    python3 -m pip install -q --no-index --no-deps --target "$site" .whl/*.whl
    export PYTHONPATH=$site:$PWD/src${PYTHONPATH:+:$PYTHONPATH}
    if [ -f .whl/SOURCE ]; then export CGUIDE_COMMIT="$(cat .whl/SOURCE)"; fi
    exec python3 benchmarks/gpu_suite.py --out "$out" "${@:3}"
    ;;
  *)
    echo "usage: bash benchmarks/gpu_suite.sh prepare | run [OUT] [gpu_suite.py arguments]" >&2
    exit 2
    ;;
esac
