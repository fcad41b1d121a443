#!/usr/bin/env bash
# A PostgreSQL for the quantstage stack, on loopback only, in a data directory of its own:
# databases `mlflow` (MLflow tracking + registry) and `prefect` (Prefect server), each owned by
# a login role of the same name.
#
#   deploy/postgres.sh start     # initdb on first use, start, create roles/databases, print URLs
#   deploy/postgres.sh url       # print the URLs as `export` lines:  eval "$(deploy/postgres.sh url)"
#   deploy/postgres.sh status
#   deploy/postgres.sh stop      # pg_ctl stop -m fast (then immediate, then SIGKILL if it must)
#
# Environment (all optional):
#   QUANTSTAGE_PG_DIR  directory of the cluster: data/, socket/, postgres.log, port
#                      (default ~/.local/state/quantstage-postgres)
#   PGPORT             TCP port on 127.0.0.1 (default 5432; `url`/`stop` use the port `start` used)
#   PG_BIN             directory with initdb/pg_ctl/psql (default: found on PATH or under
#                      /usr/lib/postgresql/<version>/bin; installed with apt-get when absent)
#   PG_OS_USER         unprivileged OS user that runs PostgreSQL when this runs as root
#                      (default postgres; created as a system user when missing)
#
# Authentication is `trust`, and only for connections over 127.0.0.1/::1 and the socket in the
# cluster's own directory: a throwaway/local database. For a shared server use password roles
# (scram-sha-256) and put the password in the URLs.
set -euo pipefail

DIR="${QUANTSTAGE_PG_DIR:-${XDG_STATE_HOME:-$HOME/.local/state}/quantstage-postgres}"
DATA="$DIR/data"
SOCKET="$DIR/socket"
LOG="$DIR/postgres.log"
HOST=127.0.0.1
if [[ -f "$DIR/port" && "${1:-}" != start ]]; then PORT=$(cat "$DIR/port"); else PORT="${PGPORT:-5432}"; fi
DATABASES=(mlflow prefect)

say() { echo "postgres.sh: $*" >&2; }

find_bin() {  # sets PG_BIN to a directory holding initdb, pg_ctl and psql; returns 1 when none
  local initdb
  if [[ -n "${PG_BIN:-}" ]]; then [[ -x "$PG_BIN/initdb" ]]; return; fi
  if initdb=$(command -v initdb 2>/dev/null); then
    PG_BIN=$(dirname "$(readlink -f "$initdb")")
    [[ -x "$PG_BIN/pg_ctl" && -x "$PG_BIN/psql" ]] && return 0
  fi
  # Debian/Ubuntu keep the server binaries off PATH
  PG_BIN=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
  [[ -n "$PG_BIN" && -x "$PG_BIN/initdb" ]] || { PG_BIN=; return 1; }
}

install_postgres() {
  say "no PostgreSQL server (initdb) found; installing it from the OS packages: apt-get install -y postgresql"
  command -v apt-get >/dev/null || { say "apt-get is not available; install PostgreSQL (>= 13) and set PG_BIN"; return 1; }
  [[ $(id -u) -eq 0 ]] || { say "installing needs root; install PostgreSQL (apt-get install postgresql) and retry"; return 1; }
  # keep the package's own cluster from being started by its maintainer scripts
  local policy=/usr/sbin/policy-rc.d added=
  if [[ ! -e $policy ]]; then printf '#!/bin/sh\nexit 101\n' >"$policy"; chmod +x "$policy"; added=1; fi
  local rc=0
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >&2; } || rc=$?
  [[ -z $added ]] || rm -f "$policy"
  return $rc
}

# run a PostgreSQL binary as the unprivileged owner of the cluster (PostgreSQL refuses root)
as_owner() {
  if [[ $(id -u) -eq 0 ]]; then (cd / && runuser -u "$OS_USER" -- "$@"); else "$@"; fi
}

setup_owner() {
  OS_USER="${PG_OS_USER:-postgres}"
  [[ $(id -u) -eq 0 ]] || { OS_USER=$(id -un); return 0; }
  if ! id "$OS_USER" >/dev/null 2>&1; then
    say "creating system user $OS_USER to run PostgreSQL"
    useradd --system --user-group --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin "$OS_USER"
  fi
}

running() { [[ -f "$DATA/postmaster.pid" ]] && [[ -n "${PG_BIN:-}" ]] && as_owner "$PG_BIN/pg_ctl" status -D "$DATA" >/dev/null 2>&1; }

psql_admin() {  # SQL via the cluster's private socket as the bootstrap superuser
  as_owner "$PG_BIN/psql" -X -q -v ON_ERROR_STOP=1 -h "$SOCKET" -p "$PORT" -U postgres -d postgres "$@"
}

urls() {
  echo "export MLFLOW_BACKEND_STORE_URI=postgresql+psycopg2://mlflow@$HOST:$PORT/mlflow"
  echo "export PREFECT_API_DATABASE_CONNECTION_URL=postgresql+asyncpg://prefect@$HOST:$PORT/prefect"
}

start() {
  if ! find_bin; then
    install_postgres || exit 1
    find_bin || { say "still no initdb after installing; set PG_BIN"; exit 1; }
  fi
  setup_owner
  mkdir -p "$DIR"
  if [[ $(id -u) -eq 0 ]]; then chown "$OS_USER" "$DIR"; chmod 700 "$DIR"; fi
  if ! as_owner test -w "$DIR"; then
    say "$OS_USER cannot write $DIR (is a parent directory private to root?); choose another QUANTSTAGE_PG_DIR"
    exit 1
  fi
  if running; then
    PORT=$(cat "$DIR/port"); say "already running in $DATA (port $PORT)"; urls; return 0
  fi
  as_owner mkdir -p "$SOCKET"
  if [[ ! -f "$DATA/PG_VERSION" ]]; then
    say "initdb $DATA ($("$PG_BIN/initdb" --version))"
    as_owner "$PG_BIN/initdb" -D "$DATA" -U postgres -E UTF8 --locale=C.UTF-8 --auth=trust >"$DIR/initdb.log" 2>&1 \
      || as_owner "$PG_BIN/initdb" -D "$DATA" -U postgres -E UTF8 --locale=C --auth=trust >"$DIR/initdb.log" 2>&1 \
      || { cat "$DIR/initdb.log" >&2; exit 1; }
    # trust on loopback and the private socket only; nothing else may connect
    as_owner tee "$DATA/pg_hba.conf" >/dev/null <<'HBA'
# TYPE  DATABASE  USER  ADDRESS       METHOD
local   all       all                 trust
host    all       all   127.0.0.1/32  trust
host    all       all   ::1/128       trust
HBA
  fi
  echo "$PORT" | as_owner tee "$DIR/port" >/dev/null
  as_owner "$PG_BIN/pg_ctl" start -D "$DATA" -l "$LOG" -w -t 60 \
    -o "-c listen_addresses=$HOST -p $PORT -c unix_socket_directories=$SOCKET" >/dev/null \
    || { tail -n 20 "$LOG" >&2; exit 1; }
  local db
  for db in "${DATABASES[@]}"; do
    psql_admin -tA -c "SELECT 1 FROM pg_roles WHERE rolname = '$db'" | grep -q 1 \
      || psql_admin -c "CREATE ROLE $db LOGIN"
    psql_admin -tA -c "SELECT 1 FROM pg_database WHERE datname = '$db'" | grep -q 1 \
      || psql_admin -c "CREATE DATABASE $db OWNER $db"
  done
  say "PostgreSQL $("$PG_BIN/postgres" --version | awk '{print $3}') on $HOST:$PORT, data $DATA, log $LOG"
  urls
}

stop() {
  [[ -f "$DATA/postmaster.pid" ]] || { say "not running ($DATA)"; return 0; }
  find_bin || true
  setup_owner
  local pid; pid=$(head -n 1 "$DATA/postmaster.pid")
  postmaster_alive() {  # a live postgres process (not a reused pid, not an unreaped zombie)
    local stat; stat=$(cat "/proc/$pid/stat" 2>/dev/null) || return 1
    [[ "$(cat "/proc/$pid/comm" 2>/dev/null)" == postgres* && "${stat##*) }" != Z* ]]
  }
  postmaster_alive || { say "not running (stale postmaster.pid)"; return 0; }
  if [[ -n "${PG_BIN:-}" ]]; then
    as_owner "$PG_BIN/pg_ctl" stop -D "$DATA" -m fast -w -t 30 >/dev/null 2>&1 \
      || as_owner "$PG_BIN/pg_ctl" stop -D "$DATA" -m immediate -w -t 10 >/dev/null 2>&1 || true
  fi
  if postmaster_alive; then  # last resort: the postmaster's children, then the postmaster
    say "pg_ctl could not stop pid $pid; killing it"
    pkill -KILL -P "$pid" 2>/dev/null || true
    kill -KILL "$pid" 2>/dev/null || true
  fi
  say "stopped (pid $pid)"
}

status() {
  find_bin || { echo "postgres: not installed"; return 0; }
  setup_owner
  if running; then echo "postgres: running on $HOST:$PORT (data $DATA)"; else echo "postgres: stopped"; fi
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) status ;;
  url) urls ;;
  *) echo "usage: $0 start|stop|status|url" >&2; exit 2 ;;
esac
