#!/usr/bin/env bash
# Build what a Spark cluster needs to run jinglian: the wheel (dist/jinglian-<version>-py3-none-any.whl)
# and a packed Python environment holding it and its dependencies (dist/jinglian-env.tar.gz,
# made with venv-pack), shipped to executors with
#   --archives dist/jinglian-env.tar.gz#env --conf spark.pyspark.python=./env/bin/python
# PySpark is not packed: executors use their Spark's own (SPARK_HOME/python/lib/pyspark.zip).
# Versions follow .venv (pip freeze) when it exists, so the cluster computes what local mode does.
# A venv links to its base interpreter: every node needs the same Python at the same path as
# $PYTHON here (docs/operations.md#spark-clusters gives conda-pack and container images otherwise).
# Rebuilt only when pyproject.toml, the sources or $PYTHON change (stamp: dist/.pack/stamp).
#   PYTHON=/usr/bin/python3.11 bash scripts/package.sh        EXTRAS=shards bash scripts/package.sh
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)

PY="${PYTHON:-$( [ -x .venv/bin/python ] && .venv/bin/python -c 'import sys; print(sys._base_executable)' || command -v python3 )}"
EXTRAS="${EXTRAS:-}"   # extra groups of pyproject.toml to pack besides the core (e.g. shards for the shards stage)
WORK=dist/.pack
ENV_TAR=dist/jinglian-env.tar.gz
STAMP="$WORK/stamp"
WANT=$( { echo "$PY $EXTRAS"; cat pyproject.toml scripts/package.sh; git ls-files -s etl augment shards trainer spark_jobs 2>/dev/null || find etl augment shards trainer spark_jobs -name '*.py' -exec sha256sum {} +; git diff HEAD -- etl augment shards trainer spark_jobs pyproject.toml 2>/dev/null; } | sha256sum | cut -c1-16)
if [ -f "$ENV_TAR" ] && [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$WANT" ]; then
  echo "jinglian: $ENV_TAR is up to date"
  exit 0
fi
mkdir -p "$WORK"
rm -rf "$WORK/venv" "$WORK/wheel"
echo "jinglian: building the wheel" >&2
if "$PY" -c "import setuptools, wheel" 2>/dev/null; then ISOLATION=--no-build-isolation; else ISOLATION=; fi
"$PY" -m pip wheel -q --no-deps $ISOLATION -w "$WORK/wheel" .
WHEEL=$(ls "$WORK/wheel"/jinglian-*.whl)
rm -f dist/jinglian-*.whl && cp "$WHEEL" dist/

echo "jinglian: installing it into a fresh environment ($PY)" >&2
"$PY" -m venv "$WORK/venv"
CONSTRAINTS="$WORK/constraints.txt"
: > "$CONSTRAINTS"
if [ -x .venv/bin/python ]; then  # pin what local mode runs with; skip editable and locally built (name @ url) entries
  .venv/bin/python -m pip freeze --exclude-editable 2>/dev/null | grep -v ' @ ' | grep -v -e '^-e' -e '^jinglian==' > "$CONSTRAINTS" || true
fi
SPEC="$WHEEL"
[ -n "$EXTRAS" ] && SPEC="$WHEEL[$EXTRAS]"
"$WORK/venv/bin/python" -m pip install -q -c "$CONSTRAINTS" "$SPEC" "pandas>=2,<3"
"$WORK/venv/bin/python" -m pip install -q --no-deps --force-reinstall "$WHEEL"
"$WORK/venv/bin/python" -m pip uninstall -q -y pip setuptools wheel 2>/dev/null || true
(cd / && env -u PYTHONPATH "$ROOT/$WORK/venv/bin/python" -c "import etl.clean.pipeline, etl.dedup.cluster, spark_jobs.common, yaml, xxhash") \
  || { echo "jinglian: the packed environment cannot import jinglian" >&2; exit 1; }

echo "jinglian: packing $ENV_TAR (venv-pack)" >&2
[ -x "$WORK/tools/bin/venv-pack" ] || { "$PY" -m venv "$WORK/tools" && "$WORK/tools/bin/python" -m pip install -q "venv-pack>=0.2,<1"; }
# Level 1 and no test suites: half the packing time of the defaults for a 5% larger archive.
"$WORK/tools/bin/venv-pack" -q -p "$WORK/venv" -o "$ENV_TAR.tmp" --format tar.gz --force --compress-level 1 --exclude '*/site-packages/*/tests/*'
mv "$ENV_TAR.tmp" "$ENV_TAR"
echo "$WANT" > "$STAMP"
echo "jinglian: built $ENV_TAR ($(du -h "$ENV_TAR" | cut -f1)) and dist/$(basename "$WHEEL")"
