#!/usr/bin/env bash
# The Kafka part of the demo pipeline: start the embedded broker on 127.0.0.1, replay a JSON
# Lines file into a topic, ingest it (clean, window, land Parquet, commit) until drained, and
# stop the broker.  Usage: bash scripts/stream_demo.sh MESSAGES.jsonl LANDING_DIR
# Production: point `python -m etl.ingest --bootstrap-servers` at your brokers instead.
set -euo pipefail
MESSAGES=$1
LANDING=$2
RUN=$(mktemp -d)
trap 'python -m etl.kafka.broker --stop --pid-file "$RUN/broker.pid"; rm -rf "$RUN"' EXIT
python -m etl.kafka.broker --pid-file "$RUN/broker.pid" --topic demo:2 >/dev/null
BOOT=$(awk '{print $2}' "$RUN/broker.pid")
python -m etl.produce --bootstrap-servers "$BOOT" --topic demo --input "$MESSAGES" --partitions 2
rm -rf "$LANDING"
python -m etl.ingest --bootstrap-servers "$BOOT" --topic demo --output "$LANDING" \
  --window-records 25 --once --idle-exit-s 3 --session-timeout-ms 6000 2>/dev/null \
  | grep -E '"event": "(assigned|done)"'
