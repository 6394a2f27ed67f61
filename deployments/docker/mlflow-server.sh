#!/bin/sh
# Start the MLflow tracking server with basic auth. The auth config (its user-store URI holds
# a password) is written from the environment into a private file at start, never baked into
# the image. Needs: MLFLOW_BACKEND_STORE_URI, MLFLOW_AUTH_DATABASE_URI, MLFLOW_ARTIFACTS_DESTINATION,
# MLFLOW_AUTH_ADMIN_PASSWORD, MLFLOW_FLASK_SERVER_SECRET_KEY, MLFLOW_SERVER_ALLOWED_HOSTS (the
# Host names clients use, e.g. "mlflow:*,localhost:*") and S3 credentials for the artifacts.
set -eu
: "${MLFLOW_BACKEND_STORE_URI:?}" "${MLFLOW_AUTH_DATABASE_URI:?}" "${MLFLOW_ARTIFACTS_DESTINATION:?}"
: "${MLFLOW_AUTH_ADMIN_PASSWORD:?}" "${MLFLOW_FLASK_SERVER_SECRET_KEY:?}" "${MLFLOW_SERVER_ALLOWED_HOSTS:?}"
# A value still holding .env.example's placeholder is refused, naming the variable.
for name in MLFLOW_BACKEND_STORE_URI MLFLOW_AUTH_DATABASE_URI MLFLOW_AUTH_ADMIN_PASSWORD \
    MLFLOW_FLASK_SERVER_SECRET_KEY AWS_SECRET_ACCESS_KEY; do
    eval "value=\${$name:-}"
    case "$value" in
    *change-me*)
        echo "error: $name holds the placeholder 'change-me' from .env.example: set a real secret" >&2
        exit 2
        ;;
    esac
done
umask 077
config_dir="$(mktemp -d)"
cat > "$config_dir/basic_auth.ini" <<INI
[mlflow]
default_permission = READ
database_uri = ${MLFLOW_AUTH_DATABASE_URI}
admin_username = ${MLFLOW_AUTH_ADMIN_USERNAME:-admin}
authorization_function = mlflow.server.auth:authenticate_request_basic_auth
INI
export MLFLOW_AUTH_CONFIG_PATH="$config_dir/basic_auth.ini"
exec mlflow server \
    --app-name basic-auth \
    --serve-artifacts \
    --artifacts-destination "$MLFLOW_ARTIFACTS_DESTINATION" \
    --host 0.0.0.0 \
    --port "${MLFLOW_PORT:-5000}" \
    --workers "${MLFLOW_WORKERS:-2}"
