#!/bin/sh
# One-shot job after the MLflow server is up: the MLflow users the platform logs in as, made
# (or their passwords set again) through the server's auth REST API with the admin login, the
# same way `pynomaly services up` makes them (deployments/local/servers.py ensure_mlflow_user):
#   pynomaly          the worker and the CLI: EDIT on every experiment and registered model,
#                     no user management (it is no admin)
#   pynomaly-metrics  the exporter: READ, the server's default permission
# Only this job and the server hold the admin password. Needs: MLFLOW_SERVER_URL,
# MLFLOW_AUTH_ADMIN_PASSWORD, MLFLOW_PLATFORM_PASSWORD, MLFLOW_METRICS_PASSWORD.
set -eu
: "${MLFLOW_SERVER_URL:?}" "${MLFLOW_AUTH_ADMIN_PASSWORD:?}"
: "${MLFLOW_PLATFORM_PASSWORD:?}" "${MLFLOW_METRICS_PASSWORD:?}"
for name in MLFLOW_AUTH_ADMIN_PASSWORD MLFLOW_PLATFORM_PASSWORD MLFLOW_METRICS_PASSWORD; do
    eval "value=\${$name}"
    case "$value" in
    *change-me*)
        echo "error: $name holds the placeholder 'change-me' from .env.example: set a real secret" >&2
        exit 2
        ;;
    esac
done
exec python - <<'PY'
import os
import sys
import time
import urllib.request

from deployments.local.servers import ensure_mlflow_user

url = os.environ["MLFLOW_SERVER_URL"].rstrip("/")
# Kubernetes starts the job with the server: wait for it rather than fail and back off.
deadline = time.monotonic() + float(os.environ.get("MLFLOW_WAIT_SECONDS", "300"))
while True:
    try:
        urllib.request.urlopen(f"{url}/health", timeout=5).close()
        break
    except OSError as exc:
        if time.monotonic() > deadline:
            sys.exit(f"error: the MLflow server at {url} did not answer /health: {exc}")
        time.sleep(2)
admin = (
    os.environ.get("MLFLOW_AUTH_ADMIN_USERNAME", "admin"),
    os.environ["MLFLOW_AUTH_ADMIN_PASSWORD"],
)
try:
    ensure_mlflow_user(url, admin, "pynomaly", os.environ["MLFLOW_PLATFORM_PASSWORD"], True)
    ensure_mlflow_user(url, admin, "pynomaly-metrics", os.environ["MLFLOW_METRICS_PASSWORD"])
except Exception as exc:  # one line naming what failed, no traceback
    sys.exit(f"error: {exc}")
print("MLflow users pynomaly (edit) and pynomaly-metrics (read) are in place")
PY
