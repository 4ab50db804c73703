#!/usr/bin/env bash
# Set up (if needed) and run the whole test suite: unit, spark, kafka, dvc tiers in one
# pytest run, then the distributed tier under torchrun (gloo, 4 CPU processes).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
source scripts/env.sh
python -m pytest -q --durations=15 -m "not distributed and not gpu" "$@"
if compgen -G "tests/distributed/test_*.py" >/dev/null; then
  torchrun --standalone --nproc_per_node 4 -m pytest -q -p no:cacheprovider -m distributed tests/distributed
fi
