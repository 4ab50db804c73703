#!/usr/bin/env bash
# Set up (if needed) and run the whole pipeline on the bundled sample with DVC:
# Kafka ingest on an embedded broker -> clean -> dedup -> tfidf -> augment -> tokenizer ->
# shards -> train (tiny Megatron-core GPT, a few steps on CPU) -> report.
# Spark runs in local mode; outputs go to data/pipeline/, the report to reports/.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
source scripts/env.sh
dvc repro "$@"
echo
echo "== jinglian demo summary (reports/summary.txt; full report: reports/report.md) =="
cat reports/summary.txt
