#!/bin/sh
# Databases of the platform and one PostgreSQL role per component, none a superuser (the same
# rules as `pynomaly services up`, deployments/local/stack.py PG_ROLES):
#   pynomaly_mlflow       owns mlflow (MLflow's tracking server; the worker's backups dump it)
#   pynomaly_mlflow_auth  owns mlflow_auth (MLflow's users and permissions)
#   pynomaly_prefect      owns prefect (the Prefect server)
#   pynomaly_results      owns pynomaly_results and optuna (the worker's results and trials)
#   pynomaly_metrics      reads pynomaly_results, nothing else (exporter, dashboards)
# Only the owner (and the superuser) may connect to a database. pynomaly_mlflow and
# pynomaly_results may create databases: restore drills restore into scratch copies.
#
# The postgres image runs this on its first start (an empty data volume). Run it by hand to
# upgrade an older volume, or against a managed server (the Kubernetes Job postgres-roles):
# it is idempotent, sets the passwords again and moves databases made by earlier versions (owned
# by the superuser) to their roles. Connection: psql's PG* variables (PGHOST, PGUSER,
# PGPASSWORD; the image's init sets them), as a role that may create roles and databases.
# Passwords: PG_MLFLOW_PASSWORD, PG_MLFLOW_AUTH_PASSWORD, PG_PREFECT_PASSWORD,
# PG_RESULTS_PASSWORD, PG_METRICS_PASSWORD; they reach SQL only as psql variables (:'name'),
# which psql quotes, so any character is safe here.
set -e
# The image's init runs us as the OS user postgres with PGUSER unset: log in as POSTGRES_USER.
export PGUSER="${PGUSER:-${POSTGRES_USER:-postgres}}"
for name in PG_MLFLOW_PASSWORD PG_MLFLOW_AUTH_PASSWORD PG_PREFECT_PASSWORD \
    PG_RESULTS_PASSWORD PG_METRICS_PASSWORD; do
    eval "value=\${$name:-}"
    case "$value" in
    "")
        echo "error: $name is not set: each component's PostgreSQL role needs a password" >&2
        exit 2
        ;;
    *change-me*)
        echo "error: $name holds the placeholder 'change-me' from .env.example: set a real secret" >&2
        exit 2
        ;;
    esac
done

psql -v ON_ERROR_STOP=1 --no-psqlrc --quiet --dbname postgres \
    -v mlflow_password="$PG_MLFLOW_PASSWORD" \
    -v mlflow_auth_password="$PG_MLFLOW_AUTH_PASSWORD" \
    -v prefect_password="$PG_PREFECT_PASSWORD" \
    -v results_password="$PG_RESULTS_PASSWORD" \
    -v metrics_password="$PG_METRICS_PASSWORD" <<'SQL'
-- Roles: made if missing with no superuser or role-making rights, then (again) login, the
-- password. On a managed server (no true superuser: PGUSER has CREATEROLE and CREATEDB) the
-- admin joins each role, which PostgreSQL 15 requires to make databases owned by it.
SELECT format('CREATE ROLE %I NOSUPERUSER NOCREATEROLE NOREPLICATION NOBYPASSRLS', r)
  FROM unnest(ARRAY['pynomaly_mlflow', 'pynomaly_mlflow_auth', 'pynomaly_prefect',
                    'pynomaly_results', 'pynomaly_metrics']) AS r
  WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = r) \gexec
ALTER ROLE pynomaly_mlflow LOGIN CREATEDB PASSWORD :'mlflow_password';
ALTER ROLE pynomaly_mlflow_auth LOGIN NOCREATEDB PASSWORD :'mlflow_auth_password';
ALTER ROLE pynomaly_prefect LOGIN NOCREATEDB PASSWORD :'prefect_password';
ALTER ROLE pynomaly_results LOGIN CREATEDB PASSWORD :'results_password';
ALTER ROLE pynomaly_metrics LOGIN NOCREATEDB PASSWORD :'metrics_password';
SELECT format('GRANT %I TO %I', r, current_user)
  FROM unnest(ARRAY['pynomaly_mlflow', 'pynomaly_mlflow_auth', 'pynomaly_prefect',
                    'pynomaly_results', 'pynomaly_metrics']) AS r
  WHERE NOT (SELECT rolsuper FROM pg_roles WHERE rolname = current_user)
    AND NOT pg_has_role(current_user, r, 'MEMBER') \gexec
SQL

# A role someone gave more rights by hand is refused, not used.
strong=$(psql -v ON_ERROR_STOP=1 --no-psqlrc --quiet --dbname postgres -At -c "
    SELECT string_agg(rolname, ', ' ORDER BY rolname) FROM pg_roles
    WHERE rolname LIKE 'pynomaly\_%' AND (rolsuper OR rolcreaterole OR rolreplication OR rolbypassrls)")
if [ -n "$strong" ]; then
    echo "error: PostgreSQL role(s) $strong may do more than their component needs: ALTER ROLE ... NOSUPERUSER NOCREATEROLE NOREPLICATION NOBYPASSRLS" >&2
    exit 2
fi

psql -v ON_ERROR_STOP=1 --no-psqlrc --quiet --dbname postgres <<'SQL'
-- Databases, each owned by its component's role; nobody else may connect.
SELECT format('CREATE DATABASE %I OWNER %I', d, o)
  FROM (VALUES ('mlflow', 'pynomaly_mlflow'), ('mlflow_auth', 'pynomaly_mlflow_auth'),
               ('prefect', 'pynomaly_prefect'), ('pynomaly_results', 'pynomaly_results'),
               ('optuna', 'pynomaly_results')) AS t(d, o)
  WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = d) \gexec
ALTER DATABASE mlflow OWNER TO pynomaly_mlflow;
ALTER DATABASE mlflow_auth OWNER TO pynomaly_mlflow_auth;
ALTER DATABASE prefect OWNER TO pynomaly_prefect;
ALTER DATABASE pynomaly_results OWNER TO pynomaly_results;
ALTER DATABASE optuna OWNER TO pynomaly_results;
REVOKE ALL ON DATABASE mlflow, mlflow_auth, prefect, pynomaly_results, optuna FROM PUBLIC;

-- The metrics role may connect to the results database (what it reads: below).
GRANT CONNECT ON DATABASE pynomaly_results TO pynomaly_metrics;
SQL

# Inside each database: tables, sequences and enum or domain types an earlier version made as
# the superuser move to the owner;
# the public schema (owned by pg_database_owner on PostgreSQL 15) is then the owner's alone.
reown() {  # reown DATABASE ROLE
    psql -v ON_ERROR_STOP=1 --no-psqlrc --quiet --dbname "$1" -v owner="$2" <<'SQL'
SELECT format('ALTER %s %s OWNER TO %I',
              CASE WHEN c.relkind = 'S' THEN 'SEQUENCE' ELSE 'TABLE' END, c.oid::regclass, :'owner')
  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
  WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p', 'v', 'm', 'f', 'S')
    AND pg_get_userbyid(c.relowner) <> :'owner'
    AND NOT EXISTS (SELECT FROM pg_depend d WHERE d.objid = c.oid AND d.deptype IN ('a', 'i'))
  \gexec
SELECT format('ALTER TYPE %s OWNER TO %I', t.oid::regtype, :'owner')
  FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
  WHERE n.nspname = 'public' AND t.typtype IN ('e', 'd')
    AND pg_get_userbyid(t.typowner) <> :'owner'
  \gexec
SQL
}
reown mlflow pynomaly_mlflow
reown mlflow_auth pynomaly_mlflow_auth
reown prefect pynomaly_prefect
reown pynomaly_results pynomaly_results
reown optuna pynomaly_results

# The metrics role reads every table the results writer has or makes, and only reads.
psql -v ON_ERROR_STOP=1 --no-psqlrc --quiet --dbname pynomaly_results <<'SQL'
GRANT USAGE ON SCHEMA public TO pynomaly_metrics;
GRANT SELECT ON ALL TABLES IN SCHEMA public TO pynomaly_metrics;
ALTER DEFAULT PRIVILEGES FOR ROLE pynomaly_results IN SCHEMA public
  GRANT SELECT ON TABLES TO pynomaly_metrics;
SQL
echo "PostgreSQL roles and databases of Pynomaly are in place"
