#!/usr/bin/env bash
# A local quantstage stack on loopback: Prefect server, a process worker, an MLflow server,
# and the deployments of deploy/prefect.yaml.
#
#   deploy/stack.sh            # start (or `make stack`), deploy, print URLs
#   deploy/stack.sh stop       # stop everything it started (process groups from pid files)
#   deploy/stack.sh status
#
# Environment (all optional):
#   QUANTSTAGE_STACK_DIR   state: pid files, logs, Prefect DB, MLflow DB + artifacts
#                          (default ~/.local/state/quantstage-stack)
#   PREFECT_PORT (4200), MLFLOW_PORT (5000), STACK_HOST (127.0.0.1)
#   MLFLOW_BACKEND_STORE_URI  e.g. postgresql+psycopg2://user:pass@db:5432/mlflow (default: SQLite in the state dir)
#   MLFLOW_ARTIFACTS_DESTINATION  (default: <state dir>/mlartifacts)
#   PREFECT_API_DATABASE_CONNECTION_URL (or PREFECT_SERVER_DATABASE_CONNECTION_URL)
#                          e.g. postgresql+asyncpg://user:pass@db:5432/prefect; inherited by the
#                          Prefect server (default: SQLite under <state dir>/prefect)
#   deploy/postgres.sh starts a loopback PostgreSQL and prints both URLs (deploy/README.md).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BIN="${QUANTSTAGE_BIN:-$ROOT/.venv/bin}"
STATE="${QUANTSTAGE_STACK_DIR:-${XDG_STATE_HOME:-$HOME/.local/state}/quantstage-stack}"
HOST="${STACK_HOST:-127.0.0.1}"
PREFECT_PORT="${PREFECT_PORT:-4200}"
MLFLOW_PORT="${MLFLOW_PORT:-5000}"
BACKEND="${MLFLOW_BACKEND_STORE_URI:-sqlite:///$STATE/mlflow.db}"
ARTIFACTS="${MLFLOW_ARTIFACTS_DESTINATION:-$STATE/mlartifacts}"
POOL=quantstage-process

export PREFECT_HOME="$STATE/prefect"
export PREFECT_SERVER_ANALYTICS_ENABLED=false
export PREFECT_API_URL="http://$HOST:$PREFECT_PORT/api"
export PREFECT_UI_URL="http://$HOST:$PREFECT_PORT"
export MLFLOW_TRACKING_URI="http://$HOST:$MLFLOW_PORT"
export QUANTSTAGE_ROOT="$ROOT"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"

start_bg() {  # name, command...: own session (process group) so stop kills its children too
  local name=$1; shift
  setsid "$@" >"$STATE/$name.log" 2>&1 < /dev/null &
  echo $! >"$STATE/$name.pid"
}

wait_http() {  # url, what, seconds
  local deadline=$((SECONDS + $3))
  until curl -fsS -o /dev/null "$1" 2>/dev/null; do
    if (( SECONDS > deadline )); then echo "stack: $2 did not answer at $1 (log: $STATE/$2.log)" >&2; return 1; fi
    if [[ -f "$STATE/$2.pid" ]] && ! kill -0 "$(cat "$STATE/$2.pid")" 2>/dev/null; then
      echo "stack: $2 exited before answering at $1; last lines of $STATE/$2.log:" >&2; tail -n 20 "$STATE/$2.log" >&2; return 1
    fi
    sleep 1
  done
}

stop() {  # signal all three at once (the worker stops on SIGINT), wait up to 10 s in all, then kill
  local name pid signal alive=() deadline
  for name in worker mlflow prefect; do
    [[ -f "$STATE/$name.pid" ]] || continue
    pid=$(cat "$STATE/$name.pid")
    if kill -0 "$pid" 2>/dev/null; then
      signal=TERM; [[ $name == worker ]] && signal=INT
      kill -"$signal" -- "-$pid" 2>/dev/null || kill -"$signal" "$pid" 2>/dev/null || true
      alive+=("$name:$pid")
    fi
    rm -f "$STATE/$name.pid"
  done
  deadline=$((SECONDS + 10))
  for entry in "${alive[@]}"; do
    pid=${entry#*:}
    while kill -0 "$pid" 2>/dev/null && (( SECONDS < deadline )); do sleep 0.2; done
    kill -KILL -- "-$pid" 2>/dev/null || true
    echo "stopped ${entry%%:*} (pid $pid)"
  done
}

status() {
  local name
  for name in prefect mlflow worker; do
    if [[ -f "$STATE/$name.pid" ]] && kill -0 "$(cat "$STATE/$name.pid")" 2>/dev/null; then
      echo "$name: running (pid $(cat "$STATE/$name.pid"))"
    else
      echo "$name: stopped"
    fi
  done
}

start() {
  mkdir -p "$STATE" "$PREFECT_HOME" "$ARTIFACTS"
  for name in prefect mlflow worker; do
    if [[ -f "$STATE/$name.pid" ]] && kill -0 "$(cat "$STATE/$name.pid")" 2>/dev/null; then
      echo "stack: $name already running (pid $(cat "$STATE/$name.pid")); '$0 stop' first" >&2; exit 1
    fi
  done
  # the URLs may hold passwords: name the variable rather than print it
  local mlflow_db="$BACKEND" prefect_db="SQLite in $PREFECT_HOME"  # the Prefect server inherits its URL
  if [[ -n "${MLFLOW_BACKEND_STORE_URI:-}" ]]; then mlflow_db='$MLFLOW_BACKEND_STORE_URI'; fi
  if [[ -n "${PREFECT_API_DATABASE_CONNECTION_URL:-}" ]]; then prefect_db='$PREFECT_API_DATABASE_CONNECTION_URL'; fi
  if [[ -n "${PREFECT_SERVER_DATABASE_CONNECTION_URL:-}" ]]; then prefect_db='$PREFECT_SERVER_DATABASE_CONNECTION_URL'; fi
  trap 'echo "stack: start failed, stopping what started" >&2; stop' ERR
  start_bg prefect "$BIN/prefect" server start --host "$HOST" --port "$PREFECT_PORT"
  start_bg mlflow "$BIN/mlflow" server --host "$HOST" --port "$MLFLOW_PORT" \
    --backend-store-uri "$BACKEND" --artifacts-destination "$ARTIFACTS" --workers 1
  wait_http "$PREFECT_API_URL/health" prefect 120
  wait_http "$MLFLOW_TRACKING_URI/health" mlflow 120
  "$BIN/prefect" work-pool inspect "$POOL" >/dev/null 2>&1 || "$BIN/prefect" work-pool create "$POOL" --type process >/dev/null
  start_bg worker "$BIN/prefect" worker start --pool "$POOL" --type process
  (cd "$ROOT" && "$BIN/prefect" --no-prompt deploy --all --prefect-file deploy/prefect.yaml >"$STATE/deploy.log" 2>&1) \
    || { cat "$STATE/deploy.log" >&2; false; }
  trap - ERR
  cat <<MSG
quantstage stack is up (state and logs in $STATE):
  Prefect UI      $PREFECT_UI_URL        (PREFECT_API_URL=$PREFECT_API_URL)
  Prefect DB      $prefect_db
  MLflow UI       $MLFLOW_TRACKING_URI   (backend store: $mlflow_db)
  worker          pool $POOL
  deployments     convert/manual convert/nightly (schedule off) convert/after-training convert/on-registered
                  sweep/weekly-candidates (schedule off)
Use it from a shell:
  export PREFECT_API_URL=$PREFECT_API_URL MLFLOW_TRACKING_URI=$MLFLOW_TRACKING_URI
  $BIN/python -c 'from quantstage.flows.train_demo import train_demo; train_demo()'      # triggers after-training + on-registered
  $BIN/prefect deployment run convert/manual --param params='{"model_uri": "models:/digits-cnn@champion"}'
Stop: $0 stop
MSG
}

case "${1:-start}" in
  start) start ;;
  stop) stop ;;
  status) status ;;
  *) echo "usage: $0 [start|stop|status]" >&2; exit 2 ;;
esac
