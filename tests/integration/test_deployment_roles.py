"""The container deployments' least-privilege setup against real servers: the PostgreSQL roles
script (deployments/docker/initdb/10-roles.sh, run by the compose postgres image and the
Kubernetes Job postgres-roles) on fresh PostgreSQL 15 clusters, and the MLflow users job
(deployments/docker/mlflow-users.sh) against an MLflow server with basic auth.

Docker is not run here: the scripts are run the way the images run them (sh, psql from PATH,
the container environment as process environment)."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import psycopg2
import pytest
import servers

from deployments.local.servers import MlflowAuth, new_secret

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
ROLES_SCRIPT = ROOT / "deployments" / "docker" / "initdb" / "10-roles.sh"
USERS_SCRIPT = ROOT / "deployments" / "docker" / "mlflow-users.sh"
ROLE_PASSWORDS = {
    "pynomaly_mlflow": "PG_MLFLOW_PASSWORD",
    "pynomaly_mlflow_auth": "PG_MLFLOW_AUTH_PASSWORD",
    "pynomaly_prefect": "PG_PREFECT_PASSWORD",
    "pynomaly_results": "PG_RESULTS_PASSWORD",
    "pynomaly_metrics": "PG_METRICS_PASSWORD",
}
DATABASES = ("mlflow", "mlflow_auth", "prefect", "pynomaly_results", "optuna")
# What each role may connect to; every other database of DATABASES refuses it.
CONNECTS = {
    "pynomaly_mlflow": {"mlflow"},
    "pynomaly_mlflow_auth": {"mlflow_auth"},
    "pynomaly_prefect": {"prefect"},
    "pynomaly_results": {"pynomaly_results", "optuna"},
    "pynomaly_metrics": {"pynomaly_results"},
}


@pytest.fixture
def cluster(services_root: Path) -> Iterator[servers.PostgresServer]:
    """A fresh PostgreSQL 15 cluster of its own: roles are cluster-wide, so the session's
    shared server (whose tests make databases named mlflow and prefect) stays untouched."""
    server = servers.start_postgres(services_root / f"roles-{uuid.uuid4().hex[:8]}")
    yield server
    server.stop()


def role_passwords() -> dict[str, str]:
    # Quotes, dollars, backslashes and spaces: the script must pass them to SQL as data.
    return {var: f"{role}'s $HOME \\ {new_secret(9)}" for role, var in ROLE_PASSWORDS.items()}


def run_roles_script(
    server: servers.PostgresServer,
    passwords: dict[str, str],
    admin: tuple[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """The script as the postgres image runs it: sh, psql on PATH, PG* naming the server;
    as the superuser or as `admin` (user, password)."""
    user, password = admin or (server.user, server.password)
    env = {
        "PATH": os.environ["PATH"],
        "PGHOST": "127.0.0.1",
        "PGPORT": str(server.port),
        "POSTGRES_USER": user,
        "PGPASSWORD": password,
        **passwords,
    }
    return subprocess.run(
        ["sh", str(ROLES_SCRIPT)], env=env, capture_output=True, text=True, timeout=120
    )


def connect(server: servers.PostgresServer, user: str, password: str, dbname: str):
    conn = psycopg2.connect(
        host="127.0.0.1", port=server.port, user=user, password=password, dbname=dbname
    )
    conn.autocommit = True
    return conn


def sql(server: servers.PostgresServer, user: str, password: str, db: str, query: str) -> list:
    with closing(connect(server, user, password, db)) as conn, conn.cursor() as cur:
        cur.execute(query)
        return cur.fetchall() if cur.description else []


def superuser_sql(server: servers.PostgresServer, db: str, query: str) -> list:
    return sql(server, server.user, server.password, db, query)


@pytest.mark.parametrize("managed", [False, True], ids=["superuser", "managed-admin"])
def test_roles_script_gives_each_component_its_database_and_nothing_more(
    cluster: servers.PostgresServer, managed: bool
) -> None:
    admin = None
    if managed:
        # A managed server's admin (RDS, Cloud SQL) is no superuser: CREATEROLE and CREATEDB.
        admin = ("cloud_admin", new_secret())
        superuser_sql(
            cluster,
            "postgres",
            f"CREATE ROLE cloud_admin LOGIN CREATEROLE CREATEDB PASSWORD '{admin[1]}'",
        )
    passwords = role_passwords()
    done = run_roles_script(cluster, passwords, admin)
    assert done.returncode == 0, done.stderr
    for password in passwords.values():
        assert password not in done.stdout + done.stderr

    def login(role: str, db: str):
        return connect(cluster, role, passwords[ROLE_PASSWORDS[role]], db)

    def run(role: str, db: str, query: str) -> list:
        return sql(cluster, role, passwords[ROLE_PASSWORDS[role]], db, query)

    # No role is a superuser or may make roles; only the backed-up ones may make databases
    # (restore drills restore into scratch copies).
    rows = superuser_sql(
        cluster,
        "postgres",
        "SELECT rolname, rolsuper, rolcreaterole, rolcreatedb FROM pg_roles "
        "WHERE rolname LIKE 'pynomaly%' ORDER BY rolname",
    )
    assert rows == [
        ("pynomaly_metrics", False, False, False),
        ("pynomaly_mlflow", False, False, True),
        ("pynomaly_mlflow_auth", False, False, False),
        ("pynomaly_prefect", False, False, False),
        ("pynomaly_results", False, False, True),
    ]
    owners = dict(
        superuser_sql(
            cluster,
            "postgres",
            "SELECT datname, pg_get_userbyid(datdba) FROM pg_database "
            "WHERE datname NOT IN ('postgres', 'template0', 'template1')",
        )
    )
    assert owners == {
        "mlflow": "pynomaly_mlflow",
        "mlflow_auth": "pynomaly_mlflow_auth",
        "prefect": "pynomaly_prefect",
        "pynomaly_results": "pynomaly_results",
        "optuna": "pynomaly_results",
    }

    # Each component connects to its own databases only.
    for role, allowed in CONNECTS.items():
        for db in DATABASES:
            if db in allowed:
                login(role, db).close()
            else:
                with pytest.raises(psycopg2.OperationalError, match="permission denied"):
                    login(role, db)

    # Owners build their schemas (MLflow's, Prefect's migrations; the results tables, trials).
    run("pynomaly_mlflow", "mlflow", "CREATE TABLE experiments (id int)")
    run("pynomaly_mlflow_auth", "mlflow_auth", "CREATE TABLE users (id int)")
    run("pynomaly_prefect", "prefect", "CREATE TABLE flow_run (id int)")
    run("pynomaly_prefect", "prefect", "CREATE EXTENSION IF NOT EXISTS pg_trgm")
    run("pynomaly_results", "optuna", "CREATE TABLE studies (id int)")
    run(
        "pynomaly_results",
        "pynomaly_results",
        "CREATE TABLE detection_results (batch_id text, score float8);"
        "INSERT INTO detection_results VALUES ('b1', 0.5)",
    )
    # The metrics role reads what the results writer made after the script ran, only reads.
    assert run("pynomaly_metrics", "pynomaly_results", "SELECT * FROM detection_results") == [
        ("b1", 0.5)
    ]
    for statement in (
        "INSERT INTO detection_results VALUES ('b2', 1.0)",
        "UPDATE detection_results SET score = 0",
        "DELETE FROM detection_results",
        "CREATE TABLE forged (id int)",
    ):
        with pytest.raises(psycopg2.Error, match="permission denied"):
            run("pynomaly_metrics", "pynomaly_results", statement)
    # The results writer cannot touch MLflow's tables even if it were let in.
    superuser_sql(cluster, "mlflow", "GRANT CONNECT ON DATABASE mlflow TO pynomaly_results")
    with pytest.raises(psycopg2.Error, match="permission denied"):
        run("pynomaly_results", "mlflow", "SELECT * FROM experiments")
    superuser_sql(cluster, "mlflow", "REVOKE CONNECT ON DATABASE mlflow FROM pynomaly_results")

    # Run again (an upgrade, a rotated password): idempotent, the new password counts.
    rotated = {**passwords, "PG_RESULTS_PASSWORD": new_secret()}
    done = run_roles_script(cluster, rotated, admin)
    assert done.returncode == 0, done.stderr
    connect(cluster, "pynomaly_results", rotated["PG_RESULTS_PASSWORD"], "optuna").close()
    with pytest.raises(psycopg2.OperationalError, match="password authentication failed"):
        login("pynomaly_results", "optuna")
    assert run("pynomaly_metrics", "pynomaly_results", "SELECT count(*) FROM detection_results")

    # A role given more rights by hand is refused, one line naming it.
    superuser_sql(cluster, "postgres", "ALTER ROLE pynomaly_metrics CREATEROLE")
    done = run_roles_script(cluster, rotated)
    assert done.returncode == 2
    (line,) = done.stderr.splitlines()
    assert "pynomaly_metrics" in line, line


def test_roles_script_brings_an_older_volume_to_per_component_roles(
    cluster: servers.PostgresServer,
) -> None:
    # What the earlier initdb (01-databases.sql) left: databases and tables of the superuser.
    for db in DATABASES:
        superuser_sql(cluster, "postgres", f"CREATE DATABASE {db}")
    superuser_sql(
        cluster,
        "pynomaly_results",
        "CREATE TABLE detection_results (id serial PRIMARY KEY, score float8);"
        "INSERT INTO detection_results (score) VALUES (0.25);"
        "CREATE SEQUENCE loose_seq; CREATE TYPE mood AS ENUM ('ok', 'bad')",
    )
    superuser_sql(cluster, "mlflow", "CREATE TABLE experiments (id int)")
    passwords = role_passwords()
    done = run_roles_script(cluster, passwords)
    assert done.returncode == 0, done.stderr
    results_pw, metrics_pw = passwords["PG_RESULTS_PASSWORD"], passwords["PG_METRICS_PASSWORD"]
    # The writer owns the old table (and its sequence) and keeps writing it; metrics reads it.
    sql(
        cluster,
        "pynomaly_results",
        results_pw,
        "pynomaly_results",
        "INSERT INTO detection_results (score) VALUES (0.75); ALTER TABLE detection_results "
        "ADD COLUMN model text; SELECT nextval('loose_seq'); ALTER TYPE mood ADD VALUE 'meh';"
        "CREATE TABLE later (x int); INSERT INTO later VALUES (7)",
    )
    rows = sql(
        cluster,
        "pynomaly_metrics",
        metrics_pw,
        "pynomaly_results",
        "SELECT score FROM detection_results ORDER BY id",
    )
    assert rows == [(0.25,), (0.75,)]
    # ... and what the writer makes later too, only reading it.
    assert sql(cluster, "pynomaly_metrics", metrics_pw, "pynomaly_results", "TABLE later") == [(7,)]
    with pytest.raises(psycopg2.Error, match="permission denied"):
        sql(cluster, "pynomaly_metrics", metrics_pw, "pynomaly_results", "DELETE FROM later")
    mlflow_pw = passwords["PG_MLFLOW_PASSWORD"]
    sql(cluster, "pynomaly_mlflow", mlflow_pw, "mlflow", "DROP TABLE experiments")
    with pytest.raises(psycopg2.OperationalError, match="permission denied"):
        connect(cluster, "pynomaly_prefect", passwords["PG_PREFECT_PASSWORD"], "pynomaly_results")


@pytest.mark.parametrize(
    ("variable", "value", "says"),
    [
        ("PG_METRICS_PASSWORD", "change-me", "placeholder 'change-me'"),
        ("PG_RESULTS_PASSWORD", "", "is not set"),
    ],
)
def test_roles_script_refuses_placeholders_before_touching_the_server(
    cluster: servers.PostgresServer, variable: str, value: str, says: str
) -> None:
    done = run_roles_script(cluster, {**role_passwords(), variable: value})
    assert done.returncode == 2
    (line,) = done.stderr.splitlines()
    assert variable in line and says in line, line
    roles = superuser_sql(cluster, "postgres", "SELECT 1 FROM pg_roles WHERE rolname LIKE 'pyn%'")
    databases = superuser_sql(
        cluster, "postgres", "SELECT 1 FROM pg_database WHERE datname = 'mlflow'"
    )
    assert roles == [] and databases == []


# MLflow users ---------------------------------------------------------------------------------


def mlflow_request(
    url: str, path: str, login: tuple[str, str], body: dict | None = None
) -> tuple[int, str]:
    token = base64.b64encode(":".join(login).encode()).decode()
    request = urllib.request.Request(
        f"{url}{path}",
        data=None if body is None else json.dumps(body).encode(),
        method="GET" if body is None else "POST",
        headers={"Content-Type": "application/json", "Authorization": f"Basic {token}"},
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


@pytest.fixture
def auth_mlflow(tmp_path: Path) -> Iterator[tuple[str, str]]:
    """(URL, admin password) of an MLflow server with basic auth, as mlflow-server.sh runs it."""
    admin_password = new_secret()
    server = servers.start_mlflow(
        tmp_path / "mlflow",
        backend_store_uri=f"sqlite:///{tmp_path / 'mlflow.db'}",
        artifacts_destination=str(tmp_path / "artifacts"),
        auth=MlflowAuth(
            admin_password=admin_password,
            database_uri=f"sqlite:///{tmp_path / 'auth.db'}",
            secret_key=new_secret(),
        ),
    )
    yield server.url, admin_password
    server.stop()


def run_users_script(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """The job as the image runs it: sh, the image's python on PATH, /app (the repo) as cwd."""
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    return subprocess.run(
        ["sh", str(USERS_SCRIPT)],
        env={"PATH": path, "HOME": os.environ.get("HOME", "/tmp"), **env},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_mlflow_users_job_gives_the_worker_edit_rights_and_no_admin(
    auth_mlflow: tuple[str, str],
) -> None:
    url, admin_password = auth_mlflow
    env = {
        "MLFLOW_SERVER_URL": url,
        "MLFLOW_AUTH_ADMIN_PASSWORD": admin_password,
        "MLFLOW_PLATFORM_PASSWORD": new_secret(),
        "MLFLOW_METRICS_PASSWORD": new_secret(),
    }
    # A placeholder is refused before the server is asked anything.
    done = run_users_script({**env, "MLFLOW_PLATFORM_PASSWORD": "change-me"})
    assert done.returncode == 2
    (line,) = done.stderr.splitlines()
    assert "MLFLOW_PLATFORM_PASSWORD" in line and "change-me" in line
    worker = ("pynomaly", env["MLFLOW_PLATFORM_PASSWORD"])
    assert mlflow_request(url, "/api/2.0/mlflow/experiments/search?max_results=1", worker)[0] == 401

    for _ in range(2):  # idempotent: a re-run sets the same users again
        done = run_users_script(env)
        assert done.returncode == 0, done.stderr
    assert admin_password not in done.stdout + done.stderr

    # An experiment the admin made earlier: the worker may still write to it (EDIT on all).
    admin = ("admin", admin_password)
    status, body = mlflow_request(
        url, "/api/2.0/mlflow/experiments/create", admin, {"name": "made-by-admin"}
    )
    assert status == 200, body
    admin_experiment = json.loads(body)["experiment_id"]
    status, body = mlflow_request(
        url,
        "/api/2.0/mlflow/runs/create",
        worker,
        {"experiment_id": admin_experiment, "start_time": 0},
    )
    assert status == 200, body
    # The worker runs experiments and registers models ...
    status, body = mlflow_request(
        url, "/api/2.0/mlflow/experiments/create", worker, {"name": "pynomaly"}
    )
    assert status == 200, body
    status, body = mlflow_request(
        url, "/api/2.0/mlflow/registered-models/create", worker, {"name": "detector"}
    )
    assert status == 200, body
    # ... and manages no users: it is no admin.
    status, _ = mlflow_request(
        url, "/api/2.0/mlflow/users/create", worker, {"username": "x", "password": "y" * 12}
    )
    assert status == 403
    status, _ = mlflow_request(url, "/api/2.0/mlflow/users/get?username=admin", worker)
    assert status == 403

    # The exporter's user reads and writes nothing.
    metrics = ("pynomaly-metrics", env["MLFLOW_METRICS_PASSWORD"])
    status, body = mlflow_request(
        url, f"/api/2.0/mlflow/experiments/get?experiment_id={admin_experiment}", metrics
    )
    assert status == 200, body
    status, _ = mlflow_request(
        url,
        "/api/2.0/mlflow/runs/create",
        metrics,
        {"experiment_id": admin_experiment, "start_time": 0},
    )
    assert status == 403
