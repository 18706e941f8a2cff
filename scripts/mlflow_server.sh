#!/usr/bin/env bash
# Starts an MLflow tracking server (UI + REST API + proxied artifact store) for asc-ray runs and
# prints the MLFLOW_TRACKING_URI to export. Runs in the foreground (Ctrl-C stops it).
#
#   scripts/mlflow_server.sh                       # local: ./mlflow.db, http://127.0.0.1:5000
#   HOST=10.0.1.23 scripts/mlflow_server.sh        # cluster head: its *private* address
#
# Settings (environment variables):
#   HOST                   interface to bind (default 127.0.0.1). On a cluster use the head's
#                          private address; never 0.0.0.0 on a host with a public IP: the server
#                          has no authentication. Reach it from a laptop via an SSH tunnel.
#   PORT                   default 5000
#   BACKEND_STORE_URI      runs, params, metrics. Default sqlite:///$PWD/mlflow.db: the same
#                          database a local `python jobs/...` run writes when MLFLOW_TRACKING_URI
#                          is unset (MLflow 3's default store), so local runs show up too.
#                          Cluster / team example (needs `pip install psycopg2-binary` here):
#                            postgresql://mlflow:PASSWORD@mlflow-db.xxxx.us-west-2.rds.amazonaws.com:5432/mlflow
#   ARTIFACTS_DESTINATION  where the server stores artifacts it receives (clients upload through
#                          the server, so only this host needs access). Default $PWD/mlartifacts;
#                          S3 example (needs `pip install boto3` here and S3 credentials):
#                            s3://my-bucket/asc-ray/mlflow
#   WORKERS                server worker processes (default 2)
#   DRY_RUN=1              print the command and the URI, start nothing
set -euo pipefail

HOST=${HOST:-127.0.0.1}
PORT=${PORT:-5000}
BACKEND_STORE_URI=${BACKEND_STORE_URI:-sqlite:///$PWD/mlflow.db}
ARTIFACTS_DESTINATION=${ARTIFACTS_DESTINATION:-$PWD/mlartifacts}
WORKERS=${WORKERS:-2}
MLFLOW=${MLFLOW:-mlflow}

if [ "$HOST" = "0.0.0.0" ] || [ "$HOST" = "::" ]; then
  echo "[mlflow_server] warning: HOST=$HOST listens on every interface; MLflow has no authentication." >&2
  echo "[mlflow_server]          Prefer a private address and keep port $PORT closed in the security group." >&2
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

if [ "${DRY_RUN:-0}" = "1" ]; then
  printf '%q ' "${cmd[@]}"; echo
  echo "export MLFLOW_TRACKING_URI=$uri"
  exit 0
fi

# Idempotent: if a server already answers on this address (e.g. `ray up` re-ran the head's
# start commands), leave it running.
if python3 -c "import sys, urllib.request; urllib.request.urlopen('$uri/health', timeout=2)" 2>/dev/null; then
  echo "[mlflow_server] already serving at $uri"
  echo "export MLFLOW_TRACKING_URI=$uri"
  exit 0
fi

case "$BACKEND_STORE_URI" in
  sqlite:///*) mkdir -p "$(dirname "${BACKEND_STORE_URI#sqlite:///}")" ;;
esac
case "$ARTIFACTS_DESTINATION" in
  *://*) ;;
  *) mkdir -p "$ARTIFACTS_DESTINATION" ;;
esac

echo "[mlflow_server] backend:   $BACKEND_STORE_URI"
echo "[mlflow_server] artifacts: $ARTIFACTS_DESTINATION"
echo "[mlflow_server] UI + API:  $uri   (run this in the shell that starts the pipeline:)"
echo "export MLFLOW_TRACKING_URI=$uri"
exec "${cmd[@]}"
