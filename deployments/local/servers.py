"""The local servers' commands, set-up and health checks: PostgreSQL (cluster, roles,
databases), the MLflow server with basic auth and its users, the Prefect server and worker.

`pynomaly services up` runs these programs under supervisord; the integration tests start the
same programs themselves. Every server listens on 127.0.0.1 only. Nothing happens at import.
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import sqlalchemy as sa

from pynomaly.errors import InputError
from tasks.backup import pg_tool

HOST = "127.0.0.1"


class ServiceError(RuntimeError):
    """A local service failed to start or to answer its health check."""


@dataclass
class Program:
    """One server process: its command, the variables added to its environment, where it runs,
    as whom (None: this user), and the URL and port it answers on."""

    name: str
    command: list[str]
    cwd: Path
    url: str
    port: int
    env: dict[str, str] = field(default_factory=dict)
    user: str | None = None


def free_port(preferred: int | None = None) -> int:
    """A TCP port on 127.0.0.1 that is free now; `preferred` when it still is."""
    with socket.socket() as s:
        # Servers bind with SO_REUSEADDR: a port in TIME_WAIT is free for them.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((HOST, preferred or 0))
        except OSError:
            s.bind((HOST, 0))
        return s.getsockname()[1]


def new_secret(nbytes: int = 24) -> str:
    """A random URL-safe secret (no characters that need quoting in URLs or env files)."""
    return secrets.token_urlsafe(nbytes)


def write_private(path: Path, text: str) -> None:
    """Write a file only its owner can read, atomically: 0600 from its first byte (mkstemp),
    then renamed over the old one, so no reader sees half of it or a wider mode."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def pg_user() -> str | None:
    """The OS user PostgreSQL runs as: `postgres` when we are root (initdb refuses root)."""
    return "postgres" if os.geteuid() == 0 else None


def pg_url(
    port: int, login: tuple[str, str], database: str, driver: str = "postgresql+psycopg2"
) -> str:
    """SQLAlchemy URL of `database` on the local server as `login` (role, password)."""
    url = sa.URL.create(driver, login[0], login[1], HOST, port, database)
    return url.render_as_string(hide_password=False)


def init_cluster(base_dir: Path, password: str, pg_bin: Path | None = None) -> Path:
    """`base_dir/data` as a PostgreSQL cluster (initdb as the postgres user when root, once);
    the superuser `postgres` logs in over TCP with `password` (scram-sha-256)."""
    data_dir = base_dir / "data"
    user = pg_user()
    as_user = {"user": user, "group": user, "extra_groups": [] if user else None, "cwd": "/"}
    base_dir.mkdir(parents=True, exist_ok=True)
    if user:
        shutil.chown(base_dir, user, user)
        if subprocess.run(["test", "-w", str(base_dir)], **as_user).returncode:
            raise InputError(
                f"the '{user}' user cannot write to {base_dir}: PostgreSQL refuses to run as "
                "root, so choose a folder whose parents are world-traversable (e.g. under /tmp)"
            )
    if (data_dir / "PG_VERSION").exists():
        return data_dir
    pwfile = base_dir / ".pwfile"
    write_private(pwfile, password + "\n")
    if user:
        shutil.chown(pwfile, user, user)
    cmd = [pg_tool("initdb", pg_bin), "-D", str(data_dir), "-U", "postgres", f"--pwfile={pwfile}"]
    cmd += ["--auth-host=scram-sha-256", "--auth-local=peer", "-E", "UTF8", "--locale=C.UTF-8"]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, **as_user)
    finally:
        pwfile.unlink(missing_ok=True)
    if done.returncode:
        raise ServiceError(f"initdb failed: {done.stdout}{done.stderr}")
    return data_dir


def postgres_program(base_dir: Path, port: int, pg_bin: Path | None = None) -> Program:
    """The postgres server of `base_dir/data`; its unix socket in `base_dir` (never clashing
    with a system cluster's)."""
    options = {"listen_addresses": HOST, "port": port, "unix_socket_directories": base_dir}
    command = [pg_tool("postgres", pg_bin), "-D", str(base_dir / "data")]
    for key, value in options.items():
        command += ["-c", f"{key}={value}"]
    url = f"postgresql://{HOST}:{port}/"
    return Program("postgres", command, base_dir, url, port, {"LANG": "C.UTF-8"}, pg_user())


@dataclass
class MlflowAuth:
    """Basic-auth settings of an MLflow server: admin login and where users are stored."""

    admin_password: str
    database_uri: str
    secret_key: str
    admin_username: str = "admin"


def mlflow_program(
    base_dir: Path,
    port: int,
    backend_store_uri: str,
    artifacts_destination: str,
    auth: MlflowAuth | None = None,
    storage_env: dict[str, str] | None = None,
) -> Program:
    """`mlflow server` on a SQL store, artifacts proxied (--serve-artifacts) to a folder or S3
    (`storage_env`: MLFLOW_S3_ENDPOINT_URL and AWS_* for the server only: clients need none)."""
    base_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    if "://" not in artifacts_destination:
        Path(artifacts_destination).mkdir(mode=0o700, parents=True, exist_ok=True)
    env = {
        # Through the environment, so the database password never shows in `ps`.
        "MLFLOW_BACKEND_STORE_URI": backend_store_uri,
        # The job runner (GenAI jobs) forks ~7 huey consumers of ~200 MB each; not needed here.
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
        **(storage_env or {}),
    }
    command = [sys.executable, "-m", "mlflow", "server", "--serve-artifacts"]
    command += ["--artifacts-destination", artifacts_destination, "--host", HOST]
    command += ["--port", str(port), "--workers", "1"]  # one uvicorn worker is plenty locally
    if auth:
        ini = base_dir / "mlflow_auth.ini"
        # Private: the user-store URI in it carries the database password.
        write_private(
            ini,
            "[mlflow]\ndefault_permission = READ\n"
            f"database_uri = {auth.database_uri}\nadmin_username = {auth.admin_username}\n"
            "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n",
        )
        env |= {
            "MLFLOW_AUTH_CONFIG_PATH": str(ini),
            # Read only on first start, when the admin user is created.
            "MLFLOW_AUTH_ADMIN_PASSWORD": auth.admin_password,
            "MLFLOW_FLASK_SERVER_SECRET_KEY": auth.secret_key,
        }
        command += ["--app-name", "basic-auth"]
    return Program("mlflow", command, base_dir, f"http://{HOST}:{port}", port, env)


@contextmanager
def _mlflow_login(login: tuple[str, str]) -> Iterator[None]:
    """MLflow's REST clients read their basic-auth login from these variables only."""
    names = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")
    old = {name: os.environ.pop(name, None) for name in names}
    os.environ.update(zip(names, login, strict=True))
    try:
        yield
    finally:
        os.environ.update({n: v for n, v in old.items() if v is not None})
        for name in (n for n, v in old.items() if v is None):
            os.environ.pop(name, None)


def ensure_mlflow_user(
    url: str, admin: tuple[str, str], username: str, password: str, edit_all: bool = False
) -> None:
    """A non-admin MLflow user with this password; `edit_all` lets it run experiments and
    registered models (all of them, so those an admin made earlier too), never manage users.
    Without `edit_all` it reads what the server's default permission (READ) allows."""
    from mlflow.exceptions import MlflowException
    from mlflow.server.auth.client import AuthServiceClient

    client = AuthServiceClient(url)
    calls = [lambda: client.create_user(username, password)]
    for kind in ("experiment", "registered_model") if edit_all else ():
        calls.append(lambda kind=kind: client.grant_user_permission(username, kind, "*", "EDIT"))
    with _mlflow_login(admin):
        for call in calls:
            try:
                call()
            except MlflowException as exc:
                if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                    raise ServiceError(f"MLflow user {username!r}: {exc.message[:300]}") from exc
                if call is calls[0]:  # an existing user gets this password again
                    client.update_user_password(username, password)


def prefect_program(
    base_dir: Path, port: int, database_url: str, auth_string: str | None = None, ui: bool = False
) -> Program:
    """`prefect server start` on a PostgreSQL database (postgresql+asyncpg:// URL)."""
    (base_dir / "prefect_home").mkdir(mode=0o700, parents=True, exist_ok=True)
    env = {
        "PREFECT_HOME": str(base_dir / "prefect_home"),
        # The UI calls this URL from the browser; its default assumes port 4200.
        "PREFECT_SERVER_UI_API_URL": f"http://{HOST}:{port}/api",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_DATABASE_CONNECTION_URL": database_url,
        "PREFECT_SERVER_UI_ENABLED": str(ui).lower(),
        "PREFECT_SERVER_UI_SHOW_PROMOTIONAL_CONTENT": "false",
    }
    if auth_string:
        env["PREFECT_SERVER_API_AUTH_STRING"] = auth_string
    command = [sys.executable, "-m", "prefect", "server", "start", "--host", HOST]
    command += ["--port", str(port), "--workers", "1"]
    return Program("prefect", command, base_dir, f"http://{HOST}:{port}/api", port, env)


def worker_program(
    base_dir: Path, api_url: str, pool: str, name: str, auth_string: str | None, env: dict[str, str]
) -> Program:
    """`prefect worker start --type process` on `pool`, known to the server as `name`; its
    flow runs get `env` (the clients' settings)."""
    (base_dir / "worker_home").mkdir(mode=0o700, parents=True, exist_ok=True)
    env = env | {"PREFECT_HOME": str(base_dir / "worker_home"), "PREFECT_API_URL": api_url}
    if auth_string:
        env["PREFECT_API_AUTH_STRING"] = auth_string
    command = [sys.executable, "-m", "prefect", "worker", "start", "--pool", pool]
    command += ["--type", "process", "--name", name]
    return Program("prefect-worker", command, base_dir, api_url, 0, env)


@contextmanager
def prefect_client(api_url: str, auth_string: str | None) -> Iterator[object]:
    """A synchronous Prefect client of the server at `api_url`."""
    from prefect import get_client
    from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL, temporary_settings

    with (
        temporary_settings({PREFECT_API_URL: api_url, PREFECT_API_AUTH_STRING: auth_string}),
        get_client(sync_client=True) as client,
    ):
        yield client


def http_ok(url: str, timeout: float = 2.0) -> bool:
    """Whether GET `url` answers 2xx."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return 200 <= resp.status < 300
    except OSError:
        return False


def postgres_ok(url: str) -> bool:
    """Whether PostgreSQL takes this login; a wrong password is an error, not "not yet"."""
    import psycopg2

    u = sa.make_url(url)
    login = {"user": u.username, "password": u.password, "dbname": u.database}
    try:
        psycopg2.connect(host=u.host, port=u.port, connect_timeout=3, **login).close()
    except psycopg2.OperationalError as err:
        if "password authentication failed" in str(err):
            raise ServiceError(f"PostgreSQL at {u.host}:{u.port} rejects the password") from err
        return False
    return True


def worker_online(api_url: str, auth_string: str | None, pool: str, name: str) -> bool:
    """Whether the server has heard from worker `name` of `pool` and counts it online."""
    try:
        with prefect_client(api_url, auth_string) as client:
            workers = client.read_workers_for_work_pool(pool)
    except Exception:  # noqa: BLE001 - the server not answering (yet) means "not online"
        return False
    return any(w.name == name and w.status == "ONLINE" for w in workers)
