#!/usr/bin/env bash
# Set up the environment (once) and run a weakflow command or the tests.
#   bash deploy/bootstrap.sh run [weakflow run options]   # the demo pipeline
#   bash deploy/bootstrap.sh test [pytest options]         # the test suite
#   bash deploy/bootstrap.sh setup                         # only create/refresh .venv
# Needs only Python 3.11 on PATH (or PYTHON=/path/to/python3.11). Torch is installed first as the CPU
# wheel torch==2.13.0, so pip never resolves a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${WEAKFLOW_VENV:-.venv}
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
stamp="$VENV/.weakflow-installed"

setup() {
  if ! "$PY" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
    echo "weakflow needs Python 3.11; $PY is $("$PY" --version 2>&1). Set PYTHON=/path/to/python3.11." >&2
    exit 1
  fi
  if [ ! -x "$VENV/bin/python" ]; then
    say "creating the virtual environment $VENV ($("$PY" --version 2>&1))"
    "$PY" -m venv "$VENV"
  fi
  # Reinstall only when pyproject.toml changed since the last install.
  if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    say "upgrading pip"
    "$VENV/bin/python" -m pip install -q --upgrade pip
    if ! "$VENV/bin/python" -c 'import torch' 2>/dev/null; then
      say "installing torch==2.13.0 first (the CPU wheel)"
      ticking "installing torch" "$VENV/bin/python" -m pip install -q "torch==2.13.0"
    fi
    say "installing weakflow and its dependencies (pip install -e .[dev], about 2 minutes)"
    ticking "installing weakflow" "$VENV/bin/python" -m pip install -q -e ".[dev]"
    touch "$stamp"
    say "set-up done in $((SECONDS - setup_started)) s"
  fi
}

# One line per set-up step on stderr, so a log shows what a silent pip is doing.
say() { echo "bootstrap: $(date +%H:%M:%S) $*" >&2; }

# Run "$@" with a "still ..." line every 30 s while it lasts (pip -q says nothing for minutes). The ticker
# naps a second at a time and ends once this script is gone (Ctrl-C, which a background job ignores, or a
# SIGTERM to the script alone), so it never holds the caller's stderr for more than a second after it.
ticking() {
  local what=$1 rc=0 ticker
  shift
  ( n=0
    while kill -0 "$$" 2>/dev/null; do
      sleep 1; n=$((n + 1))
      if [ $((n % 30)) -eq 0 ] && kill -0 "$$" 2>/dev/null; then say "still $what ($n s)"; fi
    done ) &
  ticker=$!
  "$@" || rc=$?
  kill "$ticker" 2>/dev/null || true
  wait "$ticker" 2>/dev/null || true
  return "$rc"
}
setup_started=$SECONDS

export PREFECT_SERVER_ANALYTICS_ENABLED=false DO_NOT_TRACK=1 MLFLOW_DISABLE_TELEMETRY=true GX_ANALYTICS_ENABLED=false

cmd=${1:-run}
shift || true
case "$cmd" in
  setup) setup ;;
  run) setup; exec "$VENV/bin/weakflow" run "$@" ;;
  test)
    setup
    set +e
    "$VENV/bin/python" -m pytest "$@"
    rc=$?
    set -e
    if [ "$rc" -eq 5 ]; then echo "pytest collected no tests: failing on purpose" >&2; exit 1; fi
    exit "$rc"
    ;;
  *) echo "usage: bash deploy/bootstrap.sh {run|test|setup} [args]" >&2; exit 2 ;;
esac
