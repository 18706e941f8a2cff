#!/usr/bin/env bash
# Starts an MLflow tracking server (UI + REST API + proxied artifact store) for asc-ray runs and prints the
# MLFLOW_TRACKING_URI to export. Runs in the foreground (Ctrl-C stops it). Two set-ups, picked by HOST:
#
#   scripts/mlflow_server.sh                  one machine: 127.0.0.1:5000, SQLite $OUTPUT_DIR/mlflow.db (the
#                                             store a run writes when MLFLOW_TRACKING_URI is unset), no login
#   HOST=10.0.1.23 scripts/mlflow_server.sh   a server other machines reach (cluster head, team server):
#                                             PostgreSQL, and MLflow's basic-auth app (every request needs a
#                                             user and password)
#
# Settings (environment variables):
#   HOST, PORT, WORKERS    interface (default 127.0.0.1: on a cluster the head's *private* address, never
#                          0.0.0.0 on a host with a public IP), port (5000), server processes (2)
#   OUTPUT_DIR             a run's --output-dir, whose store a local server serves (default: this folder)
#   BACKEND_STORE_URI      runs, params, metrics. Default on 127.0.0.1: sqlite:///$OUTPUT_DIR/mlflow.db; elsewhere
#                          postgresql://mlflow@127.0.0.1:5432/mlflow. No password in the URI: libpq reads
#                          PGPASSWORD, or PGPASSWORD_FILE names a file holding it (or ~/.pgpass). Missing
#                          PostgreSQL databases (this one, the users' one) are created (needs CREATEDB).
#   ARTIFACTS_DESTINATION  where the server stores the artifacts clients upload through it (only this host
#                          touches the store). Default $OUTPUT_DIR/mlartifacts; s3://bucket/path needs boto3 here.
#   AUTH                   1: MLflow's basic-auth app, 0: none. Default 1 unless HOST is 127.0.0.1/localhost.
#   With AUTH=1 (every secret from the environment or from a file, *_FILE; none on the command line):
#   MLFLOW_AUTH_ADMIN_USERNAME  the admin (default admin), created at the first start with
#   MLFLOW_AUTH_ADMIN_PASSWORD[_FILE]  (12 characters or more); later starts ignore it
#   AUTH_DATABASE_URI      the users: default database mlflow_auth beside the PostgreSQL store
#                          (basic_auth.db beside a SQLite one)
#   MLFLOW_FLASK_SERVER_SECRET_KEY[_FILE]  the sign-up form's CSRF key; default a random one per start
#   CLIENT_USERNAME, CLIENT_PASSWORD[_FILE]  a non-admin user the admin creates (or resets the password of)
#                          once the server answers: the one asc-ray's runs and workers log in as
#                          (MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD)
#   DRY_RUN=1              print the command and the URI, start nothing
set -euo pipefail

HOST=${HOST:-127.0.0.1}
if [ ! -d "${OUTPUT_DIR:-.}" ]; then
  echo "[mlflow_server] error: OUTPUT_DIR=$OUTPUT_DIR is not a folder; fix: give the run's --output-dir" >&2
  exit 2
fi
OUTPUT_DIR=$(cd "${OUTPUT_DIR:-.}" && pwd)
PORT=${PORT:-5000}
WORKERS=${WORKERS:-2}
MLFLOW=${MLFLOW:-mlflow}
case "$HOST" in
  127.0.0.1 | localhost | ::1) local_only=1 ;;
  *) local_only=0 ;;
esac
if [ "$local_only" = 1 ]; then
  BACKEND_STORE_URI=${BACKEND_STORE_URI:-sqlite:///$OUTPUT_DIR/mlflow.db}
  AUTH=${AUTH:-0}
else
  BACKEND_STORE_URI=${BACKEND_STORE_URI:-postgresql://mlflow@127.0.0.1:5432/mlflow}
  AUTH=${AUTH:-1}
fi
ARTIFACTS_DESTINATION=${ARTIFACTS_DESTINATION:-$OUTPUT_DIR/mlartifacts}
# the Python of this mlflow (it has psycopg / boto3 when the server does)
PYTHON=${PYTHON:-$(dirname "$(command -v "$MLFLOW" || echo /usr/bin/mlflow)")/python}
[ -x "$PYTHON" ] || PYTHON=python3
log() { echo "[mlflow_server] $*" >&2; }

if [ "$HOST" = "0.0.0.0" ] || [ "$HOST" = "::" ]; then
  [ "$AUTH" = 1 ] || log "warning: HOST=$HOST listens on every interface, without authentication (AUTH=0)."
  log "Prefer a private address and keep port $PORT closed to the internet."
  uri_host=$(hostname -I 2>/dev/null | awk '{print $1}')
  uri_host=${uri_host:-127.0.0.1}
else
  uri_host=$HOST
fi
uri="http://$uri_host:$PORT"

cmd=("$MLFLOW" server
  --host "$HOST" --port "$PORT" --workers "$WORKERS"
  --backend-store-uri "$BACKEND_STORE_URI"
  --serve-artifacts --artifacts-destination "$ARTIFACTS_DESTINATION")
if [ "$AUTH" = 1 ]; then
  cmd+=(--app-name basic-auth)
  case "$BACKEND_STORE_URI" in
    sqlite:///*) default_auth_db="sqlite:///$(dirname "${BACKEND_STORE_URI#sqlite:///}")/basic_auth.db" ;;
    *) # the same server, database mlflow_auth (a ?query such as sslmode=require kept)
      base=${BACKEND_STORE_URI%%\?*}
      default_auth_db="${base%/*}/mlflow_auth${BACKEND_STORE_URI#"$base"}" ;;
  esac
  AUTH_DATABASE_URI=${AUTH_DATABASE_URI:-$default_auth_db}
fi

if [ "${DRY_RUN:-0}" = "1" ]; then
  printf '%q ' "${cmd[@]}"; echo
  [ "$AUTH" = 1 ] && echo "# users: $AUTH_DATABASE_URI"
  echo "export MLFLOW_TRACKING_URI=$uri"
  exit 0
fi

secret() { # secret NAME [why]: $NAME, else the contents of the file $NAME_FILE; exported. [why]: required
  local file_var="${1}_FILE"
  if [ -z "${!1:-}" ] && [ -n "${!file_var:-}" ]; then
    [ -r "${!file_var}" ] || { log "$file_var=${!file_var}: no such readable file"; exit 1; }
    printf -v "$1" '%s' "$(cat "${!file_var}")"
  fi
  if [ -n "${2:-}" ] && [ -z "${!1:-}" ]; then log "set $1 or $file_var ($2)"; exit 1; fi
  if [ -n "${!1:-}" ]; then export "${1?}"; fi
}
secret PGPASSWORD
if [ "$AUTH" = 1 ]; then
  export MLFLOW_AUTH_ADMIN_USERNAME=${MLFLOW_AUTH_ADMIN_USERNAME:-admin}
  secret MLFLOW_AUTH_ADMIN_PASSWORD ${CLIENT_USERNAME:+"the admin creates user $CLIENT_USERNAME"}
  [ -z "${CLIENT_USERNAME:-}" ] || secret CLIENT_PASSWORD "the password of MLflow user $CLIENT_USERNAME"
fi

ensure_user() { # as the admin, once the server answers: create user CLIENT_USERNAME, or reset its password
  MLFLOW_TRACKING_USERNAME=$MLFLOW_AUTH_ADMIN_USERNAME MLFLOW_TRACKING_PASSWORD=$MLFLOW_AUTH_ADMIN_PASSWORD \
    "$PYTHON" - "$uri" <<'EOF'
import os, sys, time, urllib.request
from mlflow.exceptions import RestException
from mlflow.server.auth.client import AuthServiceClient

uri, user, password = sys.argv[1], os.environ["CLIENT_USERNAME"], os.environ.pop("CLIENT_PASSWORD")
for _ in range(600):
    try:
        urllib.request.urlopen(uri + "/health", timeout=2)
        break
    except OSError:
        time.sleep(0.5)
admin = AuthServiceClient(uri)
try:
    admin.create_user(user, password)
    print(f"[mlflow_server] user {user} created", file=sys.stderr)
except RestException as e:
    if e.error_code != "RESOURCE_ALREADY_EXISTS":
        sys.exit(f"[mlflow_server] could not create user {user}: {e}")
    admin.update_user_password(user, password)
    print(f"[mlflow_server] user {user} exists; its password set", file=sys.stderr)
EOF
}

# Idempotent: if a server already answers on this address (e.g. `ray up` re-ran the head's start
# commands), leave it running, and give the user the password in its file (which may be new).
if python3 -c "import sys, urllib.request; urllib.request.urlopen('$uri/health', timeout=2)" 2>/dev/null; then
  log "already serving at $uri"
  if [ "$AUTH" = 1 ] && [ -n "${CLIENT_USERNAME:-}" ]; then ensure_user; fi
  echo "export MLFLOW_TRACKING_URI=$uri"
  exit 0
fi

for store in "$BACKEND_STORE_URI" ${AUTH_DATABASE_URI:+"$AUTH_DATABASE_URI"}; do
  case "$store" in
    sqlite:///*) mkdir -p "$(dirname "${store#sqlite:///}")" ;;
    postgresql*) # create the database when missing, connected to the server's `postgres` database
      "$PYTHON" - "$store" <<'EOF' || exit 1
import sys
import sqlalchemy as sa
url = sa.engine.make_url(sys.argv[1])
try:
    sa.create_engine(url).connect().close()
except sa.exc.OperationalError as e:
    if f'"{url.database}" does not exist' not in str(e):
        sys.exit(f"[mlflow_server] cannot connect to {url!r}: {str(e).strip()}\n(PGPASSWORD / PGPASSWORD_FILE?)")
    with sa.create_engine(url.set(database="postgres"), isolation_level="AUTOCOMMIT").connect() as c:
        c.execute(sa.text('CREATE DATABASE "%s"' % url.database.replace('"', '""')))
    print(f"[mlflow_server] created database {url.database}", file=sys.stderr)
except ModuleNotFoundError as e:
    sys.exit(f"[mlflow_server] {e}: pip install 'psycopg[binary]' -c constraints.txt")
EOF
      ;;
  esac
done
case "$ARTIFACTS_DESTINATION" in
  *://*) ;;
  *) mkdir -p "$ARTIFACTS_DESTINATION" ;;
esac

if [ "$AUTH" = 1 ]; then
  secret MLFLOW_FLASK_SERVER_SECRET_KEY
  # one key for every worker process of this server (they all inherit it)
  : "${MLFLOW_FLASK_SERVER_SECRET_KEY:=$("$PYTHON" -c 'import secrets; print(secrets.token_hex(32))')}"
  export MLFLOW_FLASK_SERVER_SECRET_KEY
  # MLflow's auth settings: no secret in this file (the admin's password comes from the environment)
  MLFLOW_AUTH_CONFIG_PATH=$(mktemp "${TMPDIR:-/tmp}/mlflow-basic-auth.XXXXXX.ini")
  export MLFLOW_AUTH_CONFIG_PATH
  printf '[mlflow]\ndefault_permission = READ\ndatabase_uri = %s\n' "$AUTH_DATABASE_URI" >"$MLFLOW_AUTH_CONFIG_PATH"
  printf 'authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n' >>"$MLFLOW_AUTH_CONFIG_PATH"
  if [ -n "${CLIENT_USERNAME:-}" ]; then ensure_user & fi
fi
unset CLIENT_PASSWORD # the server has no use for it

log "backend:   $BACKEND_STORE_URI"
log "artifacts: $ARTIFACTS_DESTINATION"
[ "$AUTH" = 1 ] && log "basic-auth: users in $AUTH_DATABASE_URI (admin: $MLFLOW_AUTH_ADMIN_USERNAME)"
log "UI + API:  $uri   (run this in the shell that starts the pipeline:)"
echo "export MLFLOW_TRACKING_URI=$uri"
exec "${cmd[@]}"
