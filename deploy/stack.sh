#!/usr/bin/env bash
# A local quantstage stack on loopback: Prefect server, a process worker, an MLflow server, the
# MLflow webhook receiver (`quantstage webhook serve`), and the deployments of deploy/prefect.yaml —
# with authentication on both servers.
#
#   deploy/stack.sh                    # start (or `make stack`), deploy, print URLs
#   deploy/stack.sh stop               # drain in-flight flow runs, then stop everything it started
#   deploy/stack.sh status             # each part: process alive + HTTP health (authenticated)
#   deploy/stack.sh restart prefect|worker|mlflow|webhook
#   eval "$(deploy/stack.sh env)"      # client settings + credentials for this shell
#
# Security (deploy/README.md, "The local stack is not an open door"):
#   - credentials are generated on first start into $STATE/secrets (umask 077: the state
#     directory is 0700, every file in it 0600) and passed to the processes through their
#     environment, never on a command line;
#   - Prefect: basic auth (PREFECT_SERVER_API_AUTH_STRING; clients PREFECT_API_AUTH_STRING),
#     CSRF protection on, CORS limited to its own UI origin;
#   - MLflow: the basic-auth app (`--app-name basic-auth`; admin `admin`, the worker and clients
#     use the service user `quantstage`), --allowed-hosts / --cors-allowed-origins its own origin;
#   - the process work pool comes from deploy/process-pool.json: a deployment or flow run cannot
#     set the flow-run command, environment or working directory;
#   - registry webhooks: MLflow signs every delivery with the receiver's secret (secrets/webhook-secret,
#     stored encrypted by MLflow with secrets/mlflow-webhook-key); the receiver refuses unsigned,
#     stale and replayed deliveries. MLflow may post to http:// and private addresses
#     (MLFLOW_WEBHOOK_ALLOWED_SCHEMES, MLFLOW_WEBHOOK_ALLOW_PRIVATE_IPS) because the receiver is on
#     loopback; only MLflow's admin can create webhooks.
#
# Environment (all optional):
#   QUANTSTAGE_STACK_DIR   state: secrets, pid files, logs, Prefect DB, MLflow DB + artifacts
#                          (default ~/.local/state/quantstage-stack)
#   PREFECT_PORT (4200), MLFLOW_PORT (5000), WEBHOOK_PORT (5005), STACK_HOST (127.0.0.1)
#   WORKER_HEALTH_PORT     the worker's /health endpoint (default: a free port, kept in worker.port)
#   MLFLOW_BACKEND_STORE_URI  e.g. postgresql+psycopg2://user:pass@db:5432/mlflow (default: SQLite in the state dir)
#   MLFLOW_AUTH_DATABASE_URI  users + permissions of the basic-auth app (default: the backend
#                          store when MLFLOW_BACKEND_STORE_URI is set, else SQLite in the state dir)
#   MLFLOW_ARTIFACTS_DESTINATION  (default: <state dir>/mlartifacts)
#   MLFLOW_ALLOWED_HOSTS   Host headers MLflow accepts (default: its own host:port, and localhost:port)
#   PREFECT_API_DATABASE_CONNECTION_URL (or PREFECT_SERVER_DATABASE_CONNECTION_URL)
#                          e.g. postgresql+asyncpg://user:pass@db:5432/prefect; inherited by the
#                          Prefect server (default: SQLite under <state dir>/prefect)
#   QUANTSTAGE_HEARTBEAT_S (30)    flow-run heartbeat period (PREFECT_FLOWS_HEARTBEAT_FREQUENCY, >= 30)
#   QUANTSTAGE_CRASH_AFTER_S (90)  a running flow run without a heartbeat this long is marked Crashed (> heartbeat)
#   QUANTSTAGE_STOP_GRACE_S (60)   `stop` / `restart worker` wait this long for in-flight runs, then cancel
#   QUANTSTAGE_LOG_MAX_BYTES (10 MiB)  a log larger than this is rotated to <name>.log.1 at (re)start
#   QUANTSTAGE_WORKER_POLL_S (10)  how often the worker asks for scheduled runs (PREFECT_WORKER_QUERY_SECONDS)
#   QUANTSTAGE_MLFLOW_AUTH_CACHE_S (60)  MLflow's basic-auth app remembers a verified password this long (0: never)
#   QUANTSTAGE_WEBHOOK_EVENTS, _MODELS, _ALIASES, _SKIP_SUFFIX  the receiver's filters (quantstage webhook serve --help)
#   MLFLOW_SERVER_ENABLE_JOB_EXECUTION (false here)  MLflow's job runner (GenAI evaluation jobs; unused by quantstage)
#   deploy/postgres.sh starts a loopback PostgreSQL and prints both URLs (deploy/README.md).
set -euo pipefail
umask 077

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BIN="${QUANTSTAGE_BIN:-$ROOT/.venv/bin}"
STATE="${QUANTSTAGE_STACK_DIR:-${XDG_STATE_HOME:-$HOME/.local/state}/quantstage-stack}"
SECRETS="$STATE/secrets"
if [[ ${1:-start} != start && -f "$STATE/stack.conf" ]]; then  # stop/status/restart/env: the ports start used
  while IFS='=' read -r key value; do
    case $key in STACK_HOST | PREFECT_PORT | MLFLOW_PORT | WEBHOOK_PORT) [[ -n ${!key:-} ]] || printf -v "$key" '%s' "$value" ;; esac
  done <"$STATE/stack.conf"
fi
HOST="${STACK_HOST:-127.0.0.1}"
PREFECT_PORT="${PREFECT_PORT:-4200}"
MLFLOW_PORT="${MLFLOW_PORT:-5000}"
WEBHOOK_PORT="${WEBHOOK_PORT:-5005}"
ARTIFACTS="${MLFLOW_ARTIFACTS_DESTINATION:-$STATE/mlartifacts}"
POOL=quantstage-process
OPS="$ROOT/deploy/stack_ops.py"
PREFECT_USER=quantstage        # the user part of the Prefect auth string
MLFLOW_ADMIN=admin
MLFLOW_USER=quantstage         # the service user of the worker and the clients
HEARTBEAT_S="${QUANTSTAGE_HEARTBEAT_S:-30}"
CRASH_AFTER_S="${QUANTSTAGE_CRASH_AFTER_S:-90}"
export QUANTSTAGE_CRASH_AFTER_S=$CRASH_AFTER_S  # read by stack_ops.py setup
STOP_GRACE_S="${QUANTSTAGE_STOP_GRACE_S:-60}"
LOG_MAX_BYTES="${QUANTSTAGE_LOG_MAX_BYTES:-10485760}"
WORKER_POLL_S="${QUANTSTAGE_WORKER_POLL_S:-10}"
PARTS=(prefect mlflow webhook worker)

if [[ $HOST == *:* ]]; then URL_HOST="[$HOST]"; else URL_HOST=$HOST; fi
export PREFECT_HOME="$STATE/prefect"
export PREFECT_SERVER_ANALYTICS_ENABLED=false
export PREFECT_API_URL="http://$URL_HOST:$PREFECT_PORT/api"
export PREFECT_UI_URL="http://$URL_HOST:$PREFECT_PORT"
export MLFLOW_TRACKING_URI="http://$URL_HOST:$MLFLOW_PORT"
WEBHOOK_URL="http://$URL_HOST:$WEBHOOK_PORT/webhooks/mlflow"  # what MLflow posts to (loopback: no TLS needed)
export QUANTSTAGE_ROOT="$ROOT"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"

say() { echo "stack: $*" >&2; }

# ---------------------------------------------------------------- secrets

secret() {  # name [python expression]: the secret in $SECRETS/<name>, generated (0600) on first use
  local file="$SECRETS/$1" make=${2:-'secrets.token_hex(24)'}
  if [[ ! -s $file ]]; then
    mkdir -p "$SECRETS"
    "$BIN/python" -c "import base64, secrets; print($make)" >"$file.tmp"
    mv "$file.tmp" "$file"
  fi
  cat "$file"
}

fernet_key() {  # MLflow encrypts stored webhook secrets with it (a Fernet key: 32 random bytes, urlsafe base64)
  secret mlflow-webhook-key 'base64.urlsafe_b64encode(secrets.token_bytes(32)).decode()'
}

load_client_credentials() {  # exports what every client (worker, CLI, flows) needs
  [[ -d $SECRETS ]] || { say "no credentials in $SECRETS: start the stack first"; return 1; }
  PREFECT_API_AUTH_STRING="$PREFECT_USER:$(secret prefect-auth)"
  MLFLOW_TRACKING_USERNAME=$MLFLOW_USER
  MLFLOW_TRACKING_PASSWORD="$(secret mlflow-password)"
  export PREFECT_API_AUTH_STRING MLFLOW_TRACKING_USERNAME MLFLOW_TRACKING_PASSWORD
}

write_client_env() {  # $STATE/client.env (0600): `. client.env` or `eval "$(deploy/stack.sh env)"`
  local name
  {
    echo "# quantstage stack clients: . $STATE/client.env   (credentials: keep this file private)"
    for name in PREFECT_API_URL PREFECT_UI_URL PREFECT_API_AUTH_STRING MLFLOW_TRACKING_URI \
      MLFLOW_TRACKING_USERNAME MLFLOW_TRACKING_PASSWORD; do
      printf 'export %s=%q\n' "$name" "${!name}"
    done
  } >"$STATE/client.env.tmp"
  mv "$STATE/client.env.tmp" "$STATE/client.env"
}

curl_auth() {  # user:password url [curl args...]: credentials through stdin (-K -), never argv
  local creds=$1; shift
  printf 'user = "%s"\n' "$creds" | curl -K - -fsS -o /dev/null --max-time 10 "$@"
}

curl_auth_body() {  # user:password url: the body on stdout, credentials through stdin
  printf 'user = "%s"\n' "$1" | curl -K - -fsS --max-time 10 "$2"
}

# ---------------------------------------------------------------- processes

rotate_log() {  # keep logs across restarts (appended); rotate one generation when too large
  local log="$STATE/$1.log" size
  [[ -f $log ]] || return 0
  size=$(wc -c <"$log")
  if (( size > LOG_MAX_BYTES )); then mv -f "$log" "$log.1"; fi
}

start_bg() {  # name, command...: own session (process group) so stop kills its children too
  local name=$1; shift
  rotate_log "$name"
  echo "=== $(date -u +%FT%TZ) stack.sh starts $name" >>"$STATE/$name.log"
  setsid "$@" >>"$STATE/$name.log" 2>&1 </dev/null &
  echo $! >"$STATE/$name.pid"
}

alive() {  # name: its pid file names a live process that is that part (not a reused pid)
  local pid args
  [[ -f "$STATE/$1.pid" ]] || return 1
  pid=$(cat "$STATE/$1.pid")
  args=$(ps -o args= -p "$pid" 2>/dev/null) || return 1
  case $1 in
    prefect) [[ $args == *"prefect server start"* ]] ;;
    mlflow) [[ $args == *"mlflow server"* ]] ;;
    worker) [[ $args == *"prefect worker start"* ]] ;;
    webhook) [[ $args == *"quantstage webhook serve"* ]] ;;
  esac
}

wait_http() {  # url, what, seconds
  local deadline=$((SECONDS + $3))
  until curl -fsS -o /dev/null --max-time 5 "$1" 2>/dev/null; do
    if (( SECONDS > deadline )); then say "$2 did not answer at $1 (log: $STATE/$2.log)"; return 1; fi
    if [[ -f "$STATE/$2.pid" ]] && ! alive "$2"; then
      say "$2 exited before answering at $1; last lines of $STATE/$2.log:"; tail -n 20 "$STATE/$2.log" >&2; return 1
    fi
    sleep 1
  done
}

start_prefect() {
  (
    PREFECT_SERVER_API_AUTH_STRING="$PREFECT_USER:$(secret prefect-auth)"
    export PREFECT_SERVER_API_AUTH_STRING PREFECT_API_AUTH_STRING="$PREFECT_SERVER_API_AUTH_STRING"
    export PREFECT_SERVER_CSRF_PROTECTION_ENABLED=true
    export PREFECT_SERVER_CORS_ALLOWED_ORIGINS="$PREFECT_UI_URL"
    # a run stuck in Cancelling (its worker gone) becomes Cancelled after this long
    export PREFECT_SERVER_SERVICES_CANCELLATION_CLEANUP_CANCELLING_TIMEOUT_SECONDS="${QUANTSTAGE_CANCELLING_TIMEOUT_S:-120}"
    unset MLFLOW_TRACKING_USERNAME MLFLOW_TRACKING_PASSWORD
    start_bg prefect "$BIN/prefect" server start --host "$HOST" --port "$PREFECT_PORT"
  )
}

write_mlflow_auth_ini() {  # MLFLOW_AUTH_CONFIG_PATH of the basic-auth app (0600; may hold a DB URL)
  local db="${MLFLOW_AUTH_DATABASE_URI:-${MLFLOW_BACKEND_STORE_URI:-sqlite:///$STATE/mlflow-auth.db}}"
  cat >"$SECRETS/mlflow-auth.ini" <<INI
[mlflow]
default_permission = READ
database_uri = ${db//%/%%}
admin_username = $MLFLOW_ADMIN
authorization_function = mlflow.server.auth:authenticate_request_basic_auth
grant_default_workspace_access = false
# a verified user:password is remembered 60 s (per process; one worker here, a password change
# through the API drops it at once): without it every request runs scrypt (~0.1-0.3 s of CPU)
auth_cache_ttl_seconds = ${QUANTSTAGE_MLFLOW_AUTH_CACHE_S:-60}
INI
}

start_mlflow() {
  local hosts="${MLFLOW_ALLOWED_HOSTS:-$URL_HOST:$MLFLOW_PORT,$URL_HOST}"
  if [[ -z ${MLFLOW_ALLOWED_HOSTS:-} && $HOST == 127.0.0.1 ]]; then hosts+=",localhost:$MLFLOW_PORT,localhost"; fi
  write_mlflow_auth_ini
  (
    export MLFLOW_AUTH_CONFIG_PATH="$SECRETS/mlflow-auth.ini"
    export MLFLOW_AUTH_ADMIN_USERNAME=$MLFLOW_ADMIN
    MLFLOW_AUTH_ADMIN_PASSWORD="$(secret mlflow-admin-password)"
    MLFLOW_FLASK_SERVER_SECRET_KEY="$(secret mlflow-flask-secret-key)"
    MLFLOW_WEBHOOK_SECRET_ENCRYPTION_KEY="$(fernet_key)"  # without it a restart could not read stored webhook secrets
    export MLFLOW_AUTH_ADMIN_PASSWORD MLFLOW_FLASK_SERVER_SECRET_KEY MLFLOW_WEBHOOK_SECRET_ENCRYPTION_KEY
    # the receiver listens on loopback over http: MLflow's defaults allow https and public addresses only
    export MLFLOW_WEBHOOK_ALLOWED_SCHEMES="${MLFLOW_WEBHOOK_ALLOWED_SCHEMES:-http,https}"
    export MLFLOW_WEBHOOK_ALLOW_PRIVATE_IPS="${MLFLOW_WEBHOOK_ALLOW_PRIVATE_IPS:-true}"
    # MLflow's job runner (7 processes for GenAI evaluation jobs) does nothing for quantstage
    export MLFLOW_SERVER_ENABLE_JOB_EXECUTION="${MLFLOW_SERVER_ENABLE_JOB_EXECUTION:-false}"
    # read by `mlflow server` from the environment: a database password stays off the command line
    export MLFLOW_BACKEND_STORE_URI="${MLFLOW_BACKEND_STORE_URI:-sqlite:///$STATE/mlflow.db}"
    export MLFLOW_ARTIFACTS_DESTINATION="$ARTIFACTS"
    unset PREFECT_API_AUTH_STRING MLFLOW_TRACKING_USERNAME MLFLOW_TRACKING_PASSWORD
    start_bg mlflow "$BIN/mlflow" server --app-name basic-auth --host "$HOST" --port "$MLFLOW_PORT" --workers 1 \
      --allowed-hosts "$hosts" --cors-allowed-origins "$MLFLOW_TRACKING_URI"
  )
}

start_worker() {
  local port="${WORKER_HEALTH_PORT:-}"
  if [[ -z $port ]]; then
    port=$("$BIN/python" -c 'import socket,sys; s=socket.socket(); s.bind((sys.argv[1], 0)); print(s.getsockname()[1])' "$HOST")
  fi
  echo "$port" >"$STATE/worker.port"
  (
    # the worker and its flow-run processes need only the two servers' URLs and client
    # credentials: no database URL, no server secret
    unset MLFLOW_BACKEND_STORE_URI MLFLOW_ARTIFACTS_DESTINATION MLFLOW_AUTH_DATABASE_URI \
      PREFECT_API_DATABASE_CONNECTION_URL PREFECT_SERVER_DATABASE_CONNECTION_URL
    export PREFECT_FLOWS_HEARTBEAT_FREQUENCY="$HEARTBEAT_S" PREFECT_WORKER_QUERY_SECONDS="$WORKER_POLL_S"
    export PREFECT_WORKER_WEBSERVER_HOST="$HOST" PREFECT_WORKER_WEBSERVER_PORT="$port"
    start_bg worker "$BIN/prefect" worker start --pool "$POOL" --type process --with-healthcheck
  )
  wait_http "http://$URL_HOST:$port/health" worker 60
}

start_webhook() {  # the receiver MLflow's registry webhook posts to: events into Prefect
  (
    # the receiver needs the Prefect API and the webhook secret: no MLflow credential, no database URL
    unset MLFLOW_TRACKING_USERNAME MLFLOW_TRACKING_PASSWORD MLFLOW_BACKEND_STORE_URI MLFLOW_ARTIFACTS_DESTINATION \
      MLFLOW_AUTH_DATABASE_URI PREFECT_API_DATABASE_CONNECTION_URL PREFECT_SERVER_DATABASE_CONNECTION_URL
    QUANTSTAGE_WEBHOOK_SECRET="$(secret webhook-secret)"
    export QUANTSTAGE_WEBHOOK_SECRET QUANTSTAGE_WEBHOOK_SEEN_FILE="$STATE/webhook-deliveries"
    start_bg webhook "$BIN/quantstage" webhook serve --host "$HOST" --port "$WEBHOOK_PORT"
  )
}

ops() {  # stack_ops.py COMMAND with the admin credentials and the webhook's URL and secret (environment only)
  (
    export QUANTSTAGE_MLFLOW_ADMIN_USERNAME=$MLFLOW_ADMIN QUANTSTAGE_WEBHOOK_URL=$WEBHOOK_URL
    QUANTSTAGE_MLFLOW_ADMIN_PASSWORD="$(secret mlflow-admin-password)" QUANTSTAGE_WEBHOOK_SECRET="$(secret webhook-secret)"
    export QUANTSTAGE_MLFLOW_ADMIN_PASSWORD QUANTSTAGE_WEBHOOK_SECRET
    "$BIN/python" "$OPS" "$@"
  )
}

stop_part() {  # name: signal its process group (the worker stops on SIGINT), wait 10 s, then kill
  local name=$1 pid signal deadline orphans=""
  [[ -f "$STATE/$name.pid" ]] || return 0
  pid=$(cat "$STATE/$name.pid")
  if ! alive "$name"; then rm -f "$STATE/$name.pid"; return 0; fi
  rm -f "$STATE/$name.pid"
  # flow-run processes run in sessions of their own: remember them to kill any the worker leaves
  if [[ $name == worker ]]; then orphans=$(descendant_groups "$pid"); fi
  signal=TERM; [[ $name == worker ]] && signal=INT
  kill -"$signal" -- "-$pid" 2>/dev/null || kill -"$signal" "$pid" 2>/dev/null || true
  deadline=$((SECONDS + 10))
  while kill -0 "$pid" 2>/dev/null && (( SECONDS < deadline )); do sleep 0.2; done
  kill -KILL -- "-$pid" 2>/dev/null || true
  for pid in $orphans; do
    if (( pid > 1 )) && kill -KILL -- "-$pid" 2>/dev/null; then say "killed leftover flow-run process group $pid"; fi
  done
  echo "stopped $name"
}

descendant_groups() {  # pid: process groups of its descendants outside its own group
  ps -e -o pid=,ppid=,pgid= | awk -v root="$1" '
    { parent[$1] = $2; group[$1] = $3 }
    END {
      for (p in parent) {
        q = p
        while (q in parent && q != root && q > 1) q = parent[q]
        if (q == root && p != root && group[p] > 1 && group[p] != group[root] && !(group[p] in seen)) { seen[group[p]] = 1; print group[p] }
      }
    }'
}

drain() {  # in-flight flow runs of the pool finish (bounded) or are cancelled before the worker goes
  alive prefect || return 0
  load_client_credentials || return 0
  timeout $((STOP_GRACE_S + 60)) "$BIN/python" "$OPS" drain "$STOP_GRACE_S" || say "drain failed; stopping anyway"
}

stop() {
  drain  # also without a live worker: a flow-run process may have outlived it
  stop_part worker
  stop_part webhook & stop_part mlflow & stop_part prefect & wait
}

# ---------------------------------------------------------------- status

status() {  # one line per part: process + HTTP health with the credentials; exit 3 when one is not healthy
  local ok=0 port creds_ok=true
  load_client_credentials 2>/dev/null || creds_ok=false
  if ! alive prefect; then echo "prefect: stopped"; ok=3
  elif ! curl -fsS -o /dev/null --max-time 10 "$PREFECT_API_URL/health"; then echo "prefect: running (pid $(cat "$STATE/prefect.pid")), $PREFECT_API_URL/health not answering"; ok=3
  elif ! $creds_ok || ! curl_auth "$PREFECT_API_AUTH_STRING" "$PREFECT_API_URL/admin/version"; then
    echo "prefect: running (pid $(cat "$STATE/prefect.pid")), healthy, but the API refuses the stack's credentials"; ok=3
  else echo "prefect: running (pid $(cat "$STATE/prefect.pid")), healthy at $PREFECT_API_URL (authenticated)"; fi

  if ! alive mlflow; then echo "mlflow: stopped"; ok=3
  elif ! curl -fsS -o /dev/null --max-time 10 "$MLFLOW_TRACKING_URI/health"; then echo "mlflow: running (pid $(cat "$STATE/mlflow.pid")), $MLFLOW_TRACKING_URI/health not answering"; ok=3
  elif ! $creds_ok || ! curl_auth "$MLFLOW_TRACKING_USERNAME:$MLFLOW_TRACKING_PASSWORD" \
      "$MLFLOW_TRACKING_URI/api/2.0/mlflow/experiments/search?max_results=1"; then
    echo "mlflow: running (pid $(cat "$STATE/mlflow.pid")), healthy, but the API refuses the stack's credentials"; ok=3
  else echo "mlflow: running (pid $(cat "$STATE/mlflow.pid")), healthy at $MLFLOW_TRACKING_URI (authenticated as $MLFLOW_USER)"; fi

  local health hooks
  hooks=$(curl_auth_body "$MLFLOW_ADMIN:$(cat "$SECRETS/mlflow-admin-password" 2>/dev/null)" \
    "$MLFLOW_TRACKING_URI/api/2.0/mlflow/webhooks" 2>/dev/null) || hooks=""
  if ! alive webhook; then echo "webhook: stopped"; ok=3
  elif ! health=$(curl -fsS --max-time 10 "http://$URL_HOST:$WEBHOOK_PORT/health" 2>/dev/null); then
    echo "webhook: running (pid $(cat "$STATE/webhook.pid")), http://$URL_HOST:$WEBHOOK_PORT/health not answering"; ok=3
  elif [[ $hooks != *"\"$WEBHOOK_URL\""* ]]; then
    echo "webhook: running (pid $(cat "$STATE/webhook.pid")), healthy, but no MLflow webhook posts to $WEBHOOK_URL"; ok=3
  else echo "webhook: running (pid $(cat "$STATE/webhook.pid")), registered in MLflow, receiving at $WEBHOOK_URL $health"; fi

  port=$(cat "$STATE/worker.port" 2>/dev/null || true)
  if ! alive worker; then echo "worker: stopped"; ok=3
  elif ! curl -fsS -o /dev/null --max-time 10 "http://$URL_HOST:$port/health"; then
    echo "worker: running (pid $(cat "$STATE/worker.pid")), not polling (http://$URL_HOST:$port/health)"; ok=3
  else echo "worker: running (pid $(cat "$STATE/worker.pid")), polling pool $POOL (http://$URL_HOST:$port/health)"; fi
  return $ok
}

# ---------------------------------------------------------------- start / restart

start() {
  mkdir -p "$STATE" "$SECRETS" "$PREFECT_HOME"
  chmod 700 "$STATE" "$SECRETS"
  [[ -n ${MLFLOW_ARTIFACTS_DESTINATION:-} ]] || mkdir -p "$ARTIFACTS"
  if (( HEARTBEAT_S < 30 || CRASH_AFTER_S <= HEARTBEAT_S )); then
    say "QUANTSTAGE_HEARTBEAT_S must be >= 30 (Prefect's minimum), QUANTSTAGE_CRASH_AFTER_S above it (3x is safe)"; exit 2
  fi
  if ! "$BIN/python" -c 'import flask_wtf' 2>/dev/null; then
    say "MLflow's basic-auth app needs Flask-WTF (the mlflow[auth] extra): $BIN/pip install 'mlflow[auth]'"; exit 1
  fi
  for name in "${PARTS[@]}"; do
    if alive "$name"; then say "$name already running (pid $(cat "$STATE/$name.pid")); '$0 stop' first"; exit 1; fi
  done
  # the URLs may hold passwords: name the variable rather than print it
  local mlflow_db="SQLite in $STATE" prefect_db="SQLite in $PREFECT_HOME"  # the Prefect server inherits its URL
  if [[ -n "${MLFLOW_BACKEND_STORE_URI:-}" ]]; then mlflow_db='$MLFLOW_BACKEND_STORE_URI'; fi
  if [[ -n "${PREFECT_API_DATABASE_CONNECTION_URL:-}" ]]; then prefect_db='$PREFECT_API_DATABASE_CONNECTION_URL'; fi
  if [[ -n "${PREFECT_SERVER_DATABASE_CONNECTION_URL:-}" ]]; then prefect_db='$PREFECT_SERVER_DATABASE_CONNECTION_URL'; fi
  printf 'STACK_HOST=%s\nPREFECT_PORT=%s\nMLFLOW_PORT=%s\nWEBHOOK_PORT=%s\n' "$HOST" "$PREFECT_PORT" "$MLFLOW_PORT" "$WEBHOOK_PORT" >"$STATE/stack.conf"
  load_client_credentials
  write_client_env
  trap 'say "start failed, stopping what started"; stop_part worker; stop_part webhook; stop_part mlflow; stop_part prefect' ERR
  start_prefect
  start_mlflow
  wait_http "$PREFECT_API_URL/health" prefect 120
  start_webhook
  wait_http "$MLFLOW_TRACKING_URI/health" mlflow 120
  ops setup  # service user, work pool, trigger queue, automation; MLflow's webhook -> the receiver
  (cd "$ROOT" && "$BIN/prefect" --no-prompt deploy --all --prefect-file deploy/prefect.yaml >"$STATE/deploy.log" 2>&1) &
  local deploying=$!
  start_worker
  wait "$deploying" || { cat "$STATE/deploy.log" >&2; false; }
  trap - ERR
  cat <<MSG
quantstage stack is up (state and logs in $STATE):
  Prefect UI      $PREFECT_UI_URL        (PREFECT_API_URL=$PREFECT_API_URL, basic auth)
  Prefect DB      $prefect_db
  MLflow UI       $MLFLOW_TRACKING_URI   (backend store: $mlflow_db, basic auth)
  webhook         $WEBHOOK_URL  (MLflow registry webhook -> Prefect quantstage.model.registered)
  worker          pool $POOL (heartbeat ${HEARTBEAT_S}s, runs without one for ${CRASH_AFTER_S}s are marked Crashed)
  deployments     convert/manual convert/nightly (schedule off) convert/after-training convert/on-registered
                  sweep/weekly-candidates (schedule off)
  credentials     $SECRETS (owner only); clients: . $STATE/client.env
Use it from a shell:
  eval "\$($0 env)"      # PREFECT_API_URL, MLFLOW_TRACKING_URI and their credentials
  $BIN/python -c 'from quantstage.flows.train_demo import train_demo; train_demo()'      # triggers on-registered (+ after-training, skipped)
  # any registration in MLflow (no Prefect code) converts too: mlflow.register_model(uri, "my-model") -> my-model-int8@champion
  $BIN/prefect deployment run convert/manual --param params='{"model_uri": "models:/digits-cnn@champion"}'
Stop: $0 stop
MSG
}

restart() {  # part
  local part=${1:-}
  case "$part" in
    prefect)
      stop_part prefect; start_prefect; wait_http "$PREFECT_API_URL/health" prefect 120 ;;
    mlflow)
      stop_part mlflow; start_mlflow; wait_http "$MLFLOW_TRACKING_URI/health" mlflow 120 ;;
    webhook)
      load_client_credentials
      stop_part webhook; start_webhook; wait_http "http://$URL_HOST:$WEBHOOK_PORT/health" webhook 120
      ops webhook ;;  # the same secret: idempotent, and MLflow's test delivery proves the new receiver
    worker)
      # the new worker would not know the old one's flow-run processes: drain them first
      drain; stop_part worker; load_client_credentials
      "$BIN/python" "$OPS" resume
      start_worker ;;
    *) say "usage: $0 restart prefect|worker|mlflow|webhook"; exit 2 ;;
  esac
  echo "restarted $part"
}

case "${1:-start}" in
  start) start ;;
  stop) stop ;;
  status) status ;;
  restart) restart "${2:-}" ;;
  env) load_client_credentials; write_client_env; grep '^export ' "$STATE/client.env" ;;
  *) echo "usage: $0 [start|stop|status|restart prefect|worker|mlflow|webhook|env]" >&2; exit 2 ;;
esac
