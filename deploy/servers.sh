#!/usr/bin/env bash
# Run the pieces for real, as long-lived servers on this machine (after `bash deploy/bootstrap.sh setup`):
#   bash deploy/servers.sh start     # Prefect server (:4200) + MLflow tracking server (:5000)
#   bash deploy/servers.sh train     # one pipeline run against both (registers a model)
#   bash deploy/servers.sh serve     # the model server (:8000) on the MLflow server's champion
#   bash deploy/servers.sh schedule  # Prefect deployments: cron training, interval monitoring, retrain on drift
#   bash deploy/servers.sh status    # what is running, with URLs
#   bash deploy/servers.sh stop      # stop all three (the model server flushes its prediction log), and PostgreSQL
# State lives in $WEAKFLOW_SERVERS_DIR (default weakflow-servers/): the MLflow store (SQLite + artifacts),
# the Prefect database, the prediction log, logs and pid files. Ports: PREFECT_PORT, MLFLOW_PORT, SERVE_PORT.
# WEAKFLOW_DB=postgres (default sqlite) at `start`: MLflow's backend store and the Prefect server's database
# go to a local PostgreSQL that deploy/postgres.sh starts (data in $WEAKFLOW_PG_DIR, default
# $WEAKFLOW_SERVERS_DIR/postgres; port PG_PORT, default 5433); artifacts stay in the folder.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${WEAKFLOW_VENV:-.venv}
DIR=$(mkdir -p "${WEAKFLOW_SERVERS_DIR:-weakflow-servers}" && cd "${WEAKFLOW_SERVERS_DIR:-weakflow-servers}" && pwd)
PREFECT_PORT=${PREFECT_PORT:-4200}
MLFLOW_PORT=${MLFLOW_PORT:-5000}
SERVE_PORT=${SERVE_PORT:-8000}
WEAKFLOW_DB=${WEAKFLOW_DB:-sqlite}
export WEAKFLOW_PG_DIR=${WEAKFLOW_PG_DIR:-$DIR/postgres}
export PREFECT_SERVER_ANALYTICS_ENABLED=false DO_NOT_TRACK=1 MLFLOW_DISABLE_TELEMETRY=true GX_ANALYTICS_ENABLED=false
export PREFECT_HOME="$DIR/prefect-home"
export PREFECT_API_URL="http://127.0.0.1:$PREFECT_PORT/api"
export MLFLOW_TRACKING_URI="http://127.0.0.1:$MLFLOW_PORT"
mkdir -p "$DIR/logs"

wait_http() {  # url name pidfile
  for _ in $(seq 1 240); do
    if "$VENV/bin/python" -c "import httpx,sys; sys.exit(httpx.get('$1', timeout=1).status_code != 200)" 2>/dev/null; then
      echo "$2 up: $1"; return 0
    fi
    if ! kill -0 "$(cat "$3")" 2>/dev/null; then
      echo "$2 exited; last log lines:" >&2; tail -n 30 "$DIR/logs/$2.log" >&2; return 1
    fi
    sleep 0.5
  done
  echo "$2 did not answer $1 in 120 s (log: $DIR/logs/$2.log)" >&2; return 1
}

start_bg() {  # name command...
  local name=$1; shift
  if [ -f "$DIR/$name.pid" ] && kill -0 "$(cat "$DIR/$name.pid")" 2>/dev/null; then
    echo "$name already running (pid $(cat "$DIR/$name.pid"))"; return 0
  fi
  setsid "$@" >"$DIR/logs/$name.log" 2>&1 &
  echo $! >"$DIR/$name.pid"
}

stop_one() {  # name
  local pidfile="$DIR/$1.pid"
  [ -f "$pidfile" ] || return 0
  local pid; pid=$(cat "$pidfile")
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid"
    for _ in $(seq 1 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    kill -0 "$pid" 2>/dev/null && kill -KILL -- "-$pid" 2>/dev/null
    echo "$1 stopped"
  fi
  rm -f "$pidfile"
}

cmd=${1:-status}
shift || true
case "$cmd" in
  start)
    case "$WEAKFLOW_DB" in
      sqlite)
        mlflow_store="sqlite:///$DIR/mlflow.db"
        prefect_db=() ;;  # Prefect's default: SQLite in $PREFECT_HOME
      postgres)
        bash deploy/postgres.sh start
        mlflow_store=$(bash deploy/postgres.sh url mlflow)
        prefect_db=("PREFECT_API_DATABASE_CONNECTION_URL=$(bash deploy/postgres.sh url prefect)") ;;
      *) echo "WEAKFLOW_DB must be sqlite or postgres, not '$WEAKFLOW_DB'" >&2; exit 2 ;;
    esac
    # the database URLs go through the environment, so a password never shows in `ps`
    start_bg prefect env "${prefect_db[@]}" "$VENV/bin/prefect" server start --host 127.0.0.1 --port "$PREFECT_PORT"
    start_bg mlflow env MLFLOW_BACKEND_STORE_URI="$mlflow_store" \
      "$VENV/bin/mlflow" server --host 127.0.0.1 --port "$MLFLOW_PORT" --workers 1 --artifacts-destination "$DIR/mlartifacts"
    wait_http "http://127.0.0.1:$PREFECT_PORT/api/health" prefect "$DIR/prefect.pid"
    wait_http "http://127.0.0.1:$MLFLOW_PORT/health" mlflow "$DIR/mlflow.pid"
    echo "runs against them: PREFECT_API_URL=$PREFECT_API_URL $VENV/bin/weakflow run --tracking-uri $MLFLOW_TRACKING_URI"
    ;;
  train)
    exec "$VENV/bin/weakflow" run --tracking-uri "$MLFLOW_TRACKING_URI" --workspace "$DIR/workspace" "$@"
    ;;
  serve)
    start_bg serve "$VENV/bin/weakflow" serve --tracking-uri "$MLFLOW_TRACKING_URI" --workspace "$DIR/workspace" \
      --port "$SERVE_PORT" --set "serve.prediction_log_url=sqlite:///$DIR/predictions.db" "$@"
    wait_http "http://127.0.0.1:$SERVE_PORT/health" serve "$DIR/serve.pid"
    echo "predict: curl -s http://127.0.0.1:$SERVE_PORT/predict -H 'content-type: application/json' -d '{\"records\": [...]}'"
    ;;
  schedule)
    start_bg schedule "$VENV/bin/weakflow" deploy --tracking-uri "$MLFLOW_TRACKING_URI" --workspace "$DIR/workspace" \
      --set "serve.prediction_log_url=sqlite:///$DIR/predictions.db" --set "serve.port=$SERVE_PORT" "$@"
    # wait until both deployments are registered (or the process died), so "registered" is true when printed
    for _ in $(seq 1 240); do
      n=$("$VENV/bin/python" -c "import httpx; print(len(httpx.post('$PREFECT_API_URL/deployments/filter', json={'deployments': {'tags': {'all_': ['weakflow']}}}, timeout=2).json()))" 2>/dev/null || echo 0)
      [ "$n" -ge 2 ] && break
      if ! kill -0 "$(cat "$DIR/schedule.pid")" 2>/dev/null; then
        echo "schedule exited; last log lines:" >&2; tail -n 30 "$DIR/logs/schedule.log" >&2; exit 1
      fi
      sleep 0.5
    done
    [ "$n" -ge 2 ] || { echo "deployments not registered in 120 s (log $DIR/logs/schedule.log)" >&2; exit 1; }
    sleep 2  # deployments of an earlier `schedule` count too: make sure this process is the one still serving
    kill -0 "$(cat "$DIR/schedule.pid")" 2>/dev/null || { echo "schedule exited; last log lines:" >&2; tail -n 30 "$DIR/logs/schedule.log" >&2; exit 1; }
    echo "deployments registered and served (log $DIR/logs/schedule.log); see http://127.0.0.1:$PREFECT_PORT/deployments"
    ;;
  status)
    for name in prefect mlflow serve schedule; do
      if [ -f "$DIR/$name.pid" ] && kill -0 "$(cat "$DIR/$name.pid")" 2>/dev/null; then
        echo "$name running (pid $(cat "$DIR/$name.pid"), log $DIR/logs/$name.log)"
      else
        echo "$name not running"
      fi
    done
    [ -f "$WEAKFLOW_PG_DIR/data/PG_VERSION" ] && bash deploy/postgres.sh status
    echo "Prefect UI http://127.0.0.1:$PREFECT_PORT  MLflow UI $MLFLOW_TRACKING_URI  model server http://127.0.0.1:$SERVE_PORT"
    ;;
  stop)
    stop_one schedule; stop_one serve; stop_one mlflow; stop_one prefect
    bash deploy/postgres.sh stop  # a no-op unless a cluster runs in $WEAKFLOW_PG_DIR
    ;;
  *)
    sed -n '2,13p' "$0"; exit 2 ;;
esac
