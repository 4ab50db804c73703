#!/usr/bin/env bash
# Set up jinglian in .venv at the repository root (idempotent; reinstalls only when
# pyproject.toml or constraints-cpu.txt changed).  Needs Python >= 3.10 and Java >= 17.
set -euo pipefail
cd "$(dirname "$0")/.."

PY="${PYTHON:-python3}"
"$PY" - <<'PYCHECK' || { echo "jinglian: Python 3.10 or newer is needed (found $("$PY" --version 2>&1)); install python3.11" >&2; exit 1; }
import sys; sys.exit(0 if sys.version_info >= (3, 10) else 1)
PYCHECK

java_major() {
  local java="java"
  [ -n "${JAVA_HOME:-}" ] && java="$JAVA_HOME/bin/java"
  command -v "$java" >/dev/null 2>&1 || { echo 0; return; }
  "$java" -version 2>&1 | awk -F'"' '/version/ {split($2, v, "."); print (v[1] == "1" ? v[2] : v[1]); exit}'
}
JV=$(java_major)
if [ "${JV:-0}" -lt 17 ]; then
  echo "jinglian: Spark needs Java 17 or newer (found: ${JV/#0/none}); install it, e.g. 'apt-get install openjdk-17-jre-headless', or set JAVA_HOME" >&2
  exit 1
fi

# `dvc plots show` offline: vega, vega-lite and vega-embed (npm packages, fetched once) inlined
# into the HTML template .dvc/config names (plots.html_template), so the page needs no CDN.
if [ ! -s .dvc/plots-offline.html ]; then
  if command -v npm >/dev/null 2>&1; then
    "$PY" scripts/plots_template.py .dvc/plots-offline.html \
      || echo "jinglian: could not build .dvc/plots-offline.html (npm pack failed); dvc plots show will fail until it exists" >&2
  else
    echo "jinglian: npm not found: install nodejs/npm and rerun, or dvc plots show has no template (.dvc/plots-offline.html)" >&2
  fi
fi

STAMP=.venv/.setup-stamp
WANT=$(cat pyproject.toml constraints-cpu.txt | sha256sum | cut -c1-16)
if [ -x .venv/bin/python ] && [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$WANT" ]; then
  exit 0
fi
echo "jinglian: installing into .venv (a few minutes the first time; pyspark builds from source)" >&2
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip setuptools wheel
# constraints-cpu.txt pins the CPU build of torch; drop it (-c) on a GPU machine.
.venv/bin/python -m pip install -q -c constraints-cpu.txt -e ".[all,bench,dev,eval]"
echo "$WANT" > "$STAMP"
