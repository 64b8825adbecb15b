#!/usr/bin/env bash
# A local PostgreSQL cluster for the MLflow backend store and the Prefect server's database: its own data
# directory and port (never the system's cluster), on 127.0.0.1 only.
#   bash deploy/postgres.sh start           # initdb if missing, start, create the user and databases mlflow + prefect
#   bash deploy/postgres.sh url mlflow      # postgresql://…/mlflow          (mlflow server --backend-store-uri)
#   bash deploy/postgres.sh url prefect     # postgresql+asyncpg://…/prefect (PREFECT_API_DATABASE_CONNECTION_URL)
#   bash deploy/postgres.sh status          # running or not, with its port and data directory
#   bash deploy/postgres.sh stop            # fast shutdown; the data stay (rm -rf the directory to drop them)
#   bash deploy/postgres.sh check           # exit 1 with the reason when the PostgreSQL binaries are missing
# Needs the server binaries: Debian/Ubuntu `apt-get install postgresql`; elsewhere set PG_BIN to the folder
# holding initdb, pg_ctl and psql. Settings: WEAKFLOW_PG_DIR (default weakflow-servers/postgres), PG_PORT
# (default 5433, clear of a system cluster on 5432), PG_USER / PG_PASSWORD (default weakflow / weakflow:
# owner of both databases; letters, digits and . _ - only). PostgreSQL refuses to run as root: as root the
# server runs as the OS user PG_OS_USER (default postgres, created by the Debian package), which must be
# able to reach WEAKFLOW_PG_DIR (the script makes the directory its own).
set -euo pipefail
cd "$(dirname "$0")/.."
PGDIR=$(realpath -m "${WEAKFLOW_PG_DIR:-weakflow-servers/postgres}")
PG_PORT=${PG_PORT:-5433}
PG_USER=${PG_USER:-weakflow}
PG_PASSWORD=${PG_PASSWORD:-weakflow}
PG_OS_USER=${PG_OS_USER:-postgres}
DATA="$PGDIR/data"
LOG="$PGDIR/postgres.log"
SUPERPW="$PGDIR/superuser.pw"   # random password of the cluster's superuser "postgres", used only here

for v in PG_USER PG_PASSWORD; do
  [[ ${!v} =~ ^[A-Za-z0-9._-]+$ ]] || { echo "$v may hold only letters, digits and . _ - (it goes into URLs and SQL)" >&2; exit 2; }
done
[ "$PG_USER" != postgres ] || { echo "PG_USER=postgres is the cluster's superuser; pick another name" >&2; exit 2; }

find_bin() {  # sets PG_BIN to a folder with initdb, pg_ctl, psql, or explains how to get them
  if [ -n "${PG_BIN:-}" ]; then
    [ -x "$PG_BIN/initdb" ] || { echo "PG_BIN=$PG_BIN has no initdb; install PostgreSQL (apt-get install postgresql) or fix PG_BIN" >&2; return 1; }
    return 0
  fi
  local candidate
  for candidate in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r) \
      "$(dirname "$(command -v initdb 2>/dev/null || echo /nonexistent/initdb)")"; do
    if [ -x "$candidate/initdb" ] && [ -x "$candidate/pg_ctl" ] && [ -x "$candidate/psql" ]; then
      PG_BIN=$candidate; return 0
    fi
  done
  echo "PostgreSQL server binaries (initdb, pg_ctl) not found. Install them: apt-get install postgresql" >&2
  echo "(Debian/Ubuntu; they land in /usr/lib/postgresql/<version>/bin), or set PG_BIN to their folder." >&2
  return 1
}

as_pg() {  # run a command as the OS user that owns the cluster
  if [ "$(id -u)" = 0 ]; then
    runuser -u "$PG_OS_USER" -- "$@"
  else
    "$@"
  fi
}

running() { [ -f "$DATA/postmaster.pid" ] && as_pg "$PG_BIN/pg_ctl" -D "$DATA" status >/dev/null 2>&1; }

url() {  # mlflow | prefect
  case "$1" in
    mlflow) echo "postgresql://$PG_USER:$PG_PASSWORD@127.0.0.1:$PG_PORT/mlflow" ;;
    prefect) echo "postgresql+asyncpg://$PG_USER:$PG_PASSWORD@127.0.0.1:$PG_PORT/prefect" ;;
    *) echo "usage: bash deploy/postgres.sh url {mlflow|prefect}" >&2; return 2 ;;
  esac
}

psql_super() {
  PGPASSWORD=$(cat "$SUPERPW") "$PG_BIN/psql" -h 127.0.0.1 -p "$PG_PORT" -U postgres -d postgres -X -q -v ON_ERROR_STOP=1 "$@"
}

start() {
  find_bin
  mkdir -p "$PGDIR"
  if [ "$(id -u)" = 0 ]; then
    id "$PG_OS_USER" >/dev/null 2>&1 || {
      echo "running as root, but there is no OS user '$PG_OS_USER' to run PostgreSQL as (PostgreSQL refuses root):" \
           "apt-get install postgresql creates 'postgres', or set PG_OS_USER" >&2; exit 1; }
    chown "$PG_OS_USER" "$PGDIR"; chmod 0700 "$PGDIR"
    if ! runuser -u "$PG_OS_USER" -- test -w "$PGDIR"; then
      echo "the OS user '$PG_OS_USER' cannot reach $PGDIR (a parent folder is not traversable by it):" \
           "set WEAKFLOW_PG_DIR to a folder it can reach, e.g. /var/tmp/weakflow-pg" >&2; exit 1
    fi
  fi
  if [ ! -f "$DATA/PG_VERSION" ]; then
    echo "initdb $DATA ($("$PG_BIN/initdb" --version))"
    (umask 077; head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$SUPERPW")
    if [ "$(id -u)" = 0 ]; then chown "$PG_OS_USER" "$SUPERPW"; fi
    as_pg "$PG_BIN/initdb" -D "$DATA" -U postgres --pwfile="$SUPERPW" --auth=scram-sha-256 \
      --encoding=UTF8 --locale=C >"$PGDIR/initdb.log" 2>&1 \
      || { echo "initdb failed:" >&2; tail -n 20 "$PGDIR/initdb.log" >&2; exit 1; }
  fi
  if running; then
    local port; port=$(sed -n 4p "$DATA/postmaster.pid")
    [ "$port" = "$PG_PORT" ] || { echo "PostgreSQL in $DATA already runs on port $port, not PG_PORT=$PG_PORT" >&2; exit 1; }
    echo "postgres already running (port $PG_PORT, data $DATA)"
  else
    # TCP on loopback only, no Unix socket (its path would depend on this folder's length and owner).
    as_pg "$PG_BIN/pg_ctl" -D "$DATA" -l "$LOG" -w -t 60 \
      -o "-p $PG_PORT -c listen_addresses=127.0.0.1 -c unix_socket_directories=''" start >/dev/null \
      || { echo "PostgreSQL did not start (port $PG_PORT in use?); last log lines:" >&2; tail -n 20 "$LOG" >&2; exit 1; }
    echo "postgres up: 127.0.0.1:$PG_PORT (data $DATA, log $LOG)"
  fi
  # the user and both databases, idempotently (a changed PG_PASSWORD is applied)
  psql_super <<SQL
SELECT format('CREATE ROLE %I LOGIN', '$PG_USER') WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '$PG_USER')
\gexec
ALTER ROLE "$PG_USER" PASSWORD '$PG_PASSWORD';
SELECT format('CREATE DATABASE %I OWNER %I', d, '$PG_USER') FROM unnest(ARRAY['mlflow', 'prefect']) AS d
 WHERE NOT EXISTS (SELECT 1 FROM pg_database WHERE datname = d)
\gexec
SQL
  echo "databases: $(url mlflow)  $(url prefect)"
}

cmd=${1:-status}
shift || true
case "$cmd" in
  start) start ;;
  stop)
    if [ -f "$DATA/postmaster.pid" ]; then
      find_bin
      if running; then as_pg "$PG_BIN/pg_ctl" -D "$DATA" -m fast -w -t 60 stop >/dev/null && echo "postgres stopped"; fi
    fi
    ;;
  status)
    if [ -f "$DATA/postmaster.pid" ] && find_bin 2>/dev/null && running; then
      echo "postgres running (port $(sed -n 4p "$DATA/postmaster.pid"), data $DATA, log $LOG)"
    else
      echo "postgres not running (data $DATA)"
    fi
    ;;
  url) url "${1:-}" ;;
  check) find_bin && echo "PostgreSQL binaries: $PG_BIN" ;;
  *) sed -n '2,16p' "$0"; exit 2 ;;
esac
