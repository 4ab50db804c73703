#!/usr/bin/env bash
# Set up (if needed) and run the main job on the bundled sample corpus (data/sample),
# with Spark in local mode.  Outputs go to runs/demo/.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
source scripts/env.sh
OUT=runs/demo
mkdir -p "$OUT"
spark-submit --master "local[2]" spark_jobs/clean.py --input "data/sample/*/*.jsonl" --output "$OUT/clean"
