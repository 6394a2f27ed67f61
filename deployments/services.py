"""Start and stop real local services (PostgreSQL, MLflow, Prefect; moto S3 for tests) on loopback.

Used by the integration tests and by `pynomaly services up|down|status`. Every service runs in
its own process group (new session), logs to a file, listens on 127.0.0.1 only and is
health-checked before its handle is returned; its files are created private (umask 077).
Nothing happens at import time.

moto keeps its objects in memory and accepts any credentials: it serves the tests only.
`services up` keeps artifacts in a local folder that MLflow serves (--serve-artifacts, behind
its login) or in an S3 bucket the operator names.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from contextlib import closing, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

PG_BIN = Path(os.environ.get("PYNOMALY_PG_BIN", "/usr/lib/postgresql/15/bin"))
HOST = "127.0.0.1"
TEST_REGION = "us-east-1"


class ServiceError(RuntimeError):
    """A local service failed to start, to answer its health check or to stop."""


# Processes ------------------------------------------------------------------------------------


def free_port(preferred: int | None = None) -> int:
    """A TCP port on 127.0.0.1 that is free now; `preferred` when it still is."""
    if preferred:
        with socket.socket() as s:
            # Servers bind with SO_REUSEADDR, so a port whose old connections sit in TIME_WAIT
            # is free for them; probe the same way, else a restart would never get its port back.
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind((HOST, preferred))
                return preferred
            except OSError:
                pass
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def new_secret(nbytes: int = 24) -> str:
    """A random URL-safe secret (no characters that need quoting in URLs or env files)."""
    return secrets.token_urlsafe(nbytes)


def _proc_table() -> list[tuple[int, str, int, int]]:
    """(pid, state, parent pid, process group) of every process, read from /proc."""
    rows = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # The command name sits in parentheses and may itself contain spaces or parentheses.
        fields = stat[stat.rfind(")") + 2 :].split()
        rows.append((int(entry.name), fields[0], int(fields[1]), int(fields[2])))
    return rows


def group_pids(pgid: int, descendants: bool = True) -> list[int]:
    """Live (not zombie) processes of a process group and, by default, their descendants.

    Descendants count too because some servers move children into groups of their own
    (PostgreSQL's backends call setsid()).
    """
    table = [row for row in _proc_table() if row[1] not in "ZX"]
    found = {pid for pid, _, _, group in table if group == pgid}
    grew = descendants
    while grew:
        more = {pid for pid, _, ppid, _ in table if ppid in found and pid not in found}
        found |= more
        grew = bool(more)
    return sorted(found)


def pid_alive(pid: int) -> bool:
    """Whether a process exists and is not a zombie (whose parent may never reap it)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rfind(")") + 2 :].split()[0] not in "ZX"


def start_time(pid: int) -> int | None:
    """Kernel start time of a process (clock ticks since boot), to tell a reused PID apart."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat[stat.rfind(")") + 2 :].split()[19])


PRIVATE_UMASK = 0o077  # files 0600, folders 0700


def write_private(path: Path, text: str) -> None:
    """Write a file only its owner can read, atomically: 0600 from its first byte, whatever the
    umask (mkstemp), then renamed over the old one, so no reader sees half or a wider mode."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextmanager
def private_umask() -> Iterator[None]:
    """Create everything 0600/0700 in the block (then the old umask again)."""
    old = os.umask(PRIVATE_UMASK)
    try:
        yield
    finally:
        os.umask(old)


def stop_group(
    pgid: int,
    timeout: float = 15.0,
    proc: subprocess.Popen | None = None,
    descendants: bool = True,
) -> None:
    """SIGTERM a process group, SIGKILL what is left after `timeout`, then verify it is gone."""
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
        if not group_pids(pgid, descendants):
            break
        for pid in group_pids(pgid, descendants):
            # Signal each process: descendants may sit in process groups of their own.
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + wait
        while group_pids(pgid, descendants) and time.monotonic() < deadline:
            time.sleep(0.1)
    if proc is not None:
        # Reap our own child so it does not linger as a zombie in long test sessions.
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
    left = group_pids(pgid, descendants)
    if left:
        raise ServiceError(f"process group {pgid} still has processes {left} after SIGKILL")


def log_tail(path: Path, lines: int = 40) -> str:
    """The last lines of a log file, for error messages."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _spawn(
    cmd: list[str],
    log_path: Path,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    user: str | None = None,
) -> subprocess.Popen:
    """Start `cmd` detached (own session) with stdout and stderr appended to `log_path`.

    The service creates its files private (umask 077), and so does its log.
    """
    log_path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    with os.fdopen(fd, "ab") as log:
        return subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=dict(env) if env is not None else None,
            cwd=cwd,
            start_new_session=True,
            user=user,
            group=user,
            extra_groups=[] if user else None,
            umask=PRIVATE_UMASK,
        )


def _wait_until(
    name: str,
    healthy: Callable[[], bool],
    proc: subprocess.Popen,
    log_path: Path,
    timeout: float,
) -> float:
    """Poll `healthy` until it holds; stop the process and raise with the log tail otherwise."""
    start = time.monotonic()
    deadline = start + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ServiceError(
                f"{name} exited with code {proc.returncode} while starting; "
                f"log {log_path}:\n{log_tail(log_path)}"
            )
        try:
            if healthy():
                return time.monotonic() - start
        except ServiceError:
            stop_group(proc.pid, timeout=5, proc=proc)
            raise
        except Exception:  # noqa: BLE001 - any other failure of a probe means "not yet"
            pass
        time.sleep(0.25)
    stop_group(proc.pid, timeout=5, proc=proc)
    raise ServiceError(
        f"{name} did not become healthy within {timeout:.0f} s; "
        f"log {log_path}:\n{log_tail(log_path)}"
    )


def http_ok(url: str, timeout: float = 2.0) -> bool:
    """Whether GET `url` answers 2xx."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return 200 <= resp.status < 300
    except (urllib.error.URLError, OSError):
        return False


@dataclass
class ServiceHandle:
    """A running service: its process group leader, port, URL and log."""

    name: str
    pid: int
    port: int
    url: str
    log_path: Path
    startup_seconds: float = 0.0
    proc: subprocess.Popen | None = field(default=None, repr=False, compare=False)

    def alive(self) -> bool:
        """Whether any process of the service is still running."""
        return bool(group_pids(self.pid))

    def stop(self, timeout: float = 15.0) -> None:
        """Stop the whole process group (SIGTERM, then SIGKILL)."""
        stop_group(self.pid, timeout=timeout, proc=self.proc)


# PostgreSQL -----------------------------------------------------------------------------------


def _pg_user() -> str | None:
    """The OS user to run PostgreSQL as: `postgres` when we are root (initdb refuses root)."""
    return "postgres" if os.geteuid() == 0 else None


def _run_as(cmd: list[str], user: str | None, timeout: float = 60) -> subprocess.CompletedProcess:
    """Run a short command as `user`, raising ServiceError with its output on failure."""
    result = subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        timeout=timeout,
        user=user,
        group=user,
        extra_groups=[] if user else None,
        cwd="/",
    )
    if result.returncode != 0:
        raise ServiceError(f"{' '.join(cmd[:2])} failed: {result.stdout}{result.stderr}")
    return result


@dataclass
class PostgresServer(ServiceHandle):
    """A PostgreSQL cluster on loopback; the superuser logs in with a password over TCP."""

    data_dir: Path = Path()
    user: str = "postgres"
    password: str = ""

    def database_url(
        self,
        database: str = "postgres",
        driver: str = "postgresql+psycopg2",
        login: tuple[str, str] | None = None,
    ) -> str:
        """SQLAlchemy URL of `database` on this server (driver e.g. postgresql+asyncpg), as the
        superuser or as `login` (role, password)."""
        user, password = login or (self.user, self.password)
        password = quote(password, safe="")
        return f"{driver}://{user}:{password}@{HOST}:{self.port}/{database}"

    def _admin(self, database: str = "postgres"):
        import psycopg2

        conn = psycopg2.connect(
            host=HOST, port=self.port, user=self.user, password=self.password, dbname=database
        )
        # CREATE/DROP DATABASE cannot run inside a transaction; note that psycopg2's
        # `with conn:` opens one even in autocommit mode, hence `closing()` at the callers.
        conn.autocommit = True
        return conn

    def create_database(self, name: str, exist_ok: bool = False) -> str:
        """Create an empty database and return its SQLAlchemy (psycopg2) URL."""
        from psycopg2 import errors, sql

        with closing(self._admin()) as conn, conn.cursor() as cur:
            try:
                cur.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
            except errors.DuplicateDatabase:
                if not exist_ok:
                    raise
        return self.database_url(name)

    def ensure_role(self, role: str, password: str, createdb: bool = False) -> None:
        """A login role that is no superuser and cannot make roles; its password set to
        `password`. CREATEDB only where a restore drill makes scratch databases."""
        from psycopg2 import sql

        with closing(self._admin()) as conn, conn.cursor() as cur:
            cur.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,))
            verb = "ALTER" if cur.fetchone() else "CREATE"
            cur.execute(
                sql.SQL("{} ROLE {} LOGIN NOSUPERUSER NOCREATEROLE {} PASSWORD {}").format(
                    sql.SQL(verb),
                    sql.Identifier(role),
                    sql.SQL("CREATEDB" if createdb else "NOCREATEDB"),
                    sql.Literal(password),
                )
            )

    def ensure_database(self, name: str, owner: str) -> None:
        """`name` owned by `owner`, which alone (besides grants) may connect to it.

        A database made before roles existed (owned by the superuser) moves to `owner` with
        its tables, views, sequences and types, so the component keeps working on it.
        """
        from psycopg2 import errors, sql

        db, role = sql.Identifier(name), sql.Identifier(owner)
        with closing(self._admin()) as conn, conn.cursor() as cur:
            try:
                cur.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(db, role))
            except errors.DuplicateDatabase:
                cur.execute(sql.SQL("ALTER DATABASE {} OWNER TO {}").format(db, role))
            cur.execute(sql.SQL("REVOKE ALL ON DATABASE {} FROM PUBLIC").format(db))
        with closing(self._admin(name)) as conn, conn.cursor() as cur:
            cur.execute(sql.SQL(_REOWN).format(owner=sql.Literal(owner)))

    def grant_read_only(self, database: str, reader: str, writer: str) -> None:
        """Let `reader` connect to `database` and read every table `writer` has or makes."""
        from psycopg2 import sql

        db, r, w = sql.Identifier(database), sql.Identifier(reader), sql.Identifier(writer)
        with closing(self._admin()) as conn, conn.cursor() as cur:
            cur.execute(sql.SQL("GRANT CONNECT ON DATABASE {} TO {}").format(db, r))
        with closing(self._admin(database)) as conn, conn.cursor() as cur:
            cur.execute(sql.SQL("GRANT USAGE ON SCHEMA public TO {}").format(r))
            cur.execute(sql.SQL("GRANT SELECT ON ALL TABLES IN SCHEMA public TO {}").format(r))
            cur.execute(
                sql.SQL(
                    "ALTER DEFAULT PRIVILEGES FOR ROLE {} IN SCHEMA public "
                    "GRANT SELECT ON TABLES TO {}"
                ).format(w, r)
            )

    def drop_database(self, name: str) -> None:
        """Drop a database, closing any connections still open to it."""
        from psycopg2 import sql

        with closing(self._admin()) as conn, conn.cursor() as cur:
            cur.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )

    def stop(self, timeout: float = 30.0) -> None:
        """Fast shutdown through pg_ctl; the process group is killed if that fails."""
        if pid_alive(self.pid):
            try:
                _run_as(
                    [
                        str(PG_BIN / "pg_ctl"),
                        "stop",
                        "-D",
                        str(self.data_dir),
                        "-m",
                        "fast",
                        "-w",
                        "-t",
                        str(int(timeout)),
                    ],
                    _pg_user(),
                    timeout=timeout + 5,
                )
            except (ServiceError, subprocess.TimeoutExpired):
                pass
        stop_group(self.pid, timeout=5, proc=self.proc)


# Hands what a superuser made in a database's public schema to its owner (ALTER TABLE moves
# a table's indexes and column sequences along; free-standing sequences and types go apart).
_REOWN = """
DO $$
DECLARE r record;
BEGIN
  FOR r IN SELECT c.oid::regclass AS obj FROM pg_class c
      JOIN pg_namespace n ON n.oid = c.relnamespace
      WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p', 'v', 'm', 'f')
        AND pg_get_userbyid(c.relowner) <> {owner} LOOP
    EXECUTE format('ALTER TABLE %s OWNER TO %I', r.obj, {owner});
  END LOOP;
  FOR r IN SELECT c.oid::regclass AS obj FROM pg_class c
      JOIN pg_namespace n ON n.oid = c.relnamespace
      WHERE n.nspname = 'public' AND c.relkind = 'S'
        AND pg_get_userbyid(c.relowner) <> {owner}
        AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.objid = c.oid AND d.deptype IN ('a', 'i'))
  LOOP
    EXECUTE format('ALTER SEQUENCE %s OWNER TO %I', r.obj, {owner});
  END LOOP;
  FOR r IN SELECT t.oid::regtype AS obj FROM pg_type t
      JOIN pg_namespace n ON n.oid = t.typnamespace
      WHERE n.nspname = 'public' AND t.typtype IN ('e', 'd')
        AND pg_get_userbyid(t.typowner) <> {owner} LOOP
    EXECUTE format('ALTER TYPE %s OWNER TO %I', r.obj, {owner});
  END LOOP;
END
$$
"""

# Settings that make a throwaway cluster start and run fast; durability does not matter there.
FAST_PG_SETTINGS = {
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "shared_buffers": "64MB",
    "max_connections": "200",
}


def start_postgres(
    base_dir: Path,
    password: str | None = None,
    port: int | None = None,
    fast: bool = False,
    timeout: float = 60.0,
) -> PostgresServer:
    """Start PostgreSQL 15 with data in `base_dir/data` (initdb on first use) on a free port.

    The unix socket lives in `base_dir` so it never clashes with a system cluster. Over TCP
    the superuser needs `password` (scram-sha-256); on first use a new one is generated, and
    an existing cluster needs the password it was created with.
    """
    started = time.monotonic()
    base_dir = Path(base_dir).resolve()
    data_dir = base_dir / "data"
    log_path = base_dir / "postgres.log"
    user = _pg_user()
    base_dir.mkdir(parents=True, exist_ok=True)
    if user:
        shutil.chown(base_dir, user, user)
        _check_reachable(base_dir, user)
    fresh = not (data_dir / "PG_VERSION").exists()
    if fresh:
        password = password or new_secret()
        pwfile = base_dir / ".pwfile"
        write_private(pwfile, password + "\n")
        if user:
            shutil.chown(pwfile, user, user)
        try:
            _run_as(
                [
                    str(PG_BIN / "initdb"),
                    "-D",
                    str(data_dir),
                    "-U",
                    "postgres",
                    "--pwfile",
                    str(pwfile),
                    "--auth-host=scram-sha-256",
                    "--auth-local=peer",
                    "-E",
                    "UTF8",
                    "--locale=C.UTF-8",
                    *(["--no-sync"] if fast else []),
                ],
                user,
                timeout=120,
            )
        finally:
            pwfile.unlink(missing_ok=True)
    elif not password:
        raise ServiceError(f"{data_dir} exists: pass the superuser password it was created with")
    port = free_port(port)
    options = {
        "listen_addresses": HOST,
        "port": str(port),
        "unix_socket_directories": str(base_dir),
    }
    if fast:
        options |= FAST_PG_SETTINGS
    cmd = [str(PG_BIN / "postgres"), "-D", str(data_dir)]
    for key, value in options.items():
        cmd += ["-c", f"{key}={value}"]
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8"}
    proc = _spawn(cmd, log_path, env=env, cwd=base_dir, user=user)
    handle = PostgresServer(
        name="postgres",
        pid=proc.pid,
        port=port,
        url="",
        log_path=log_path,
        proc=proc,
        data_dir=data_dir,
        password=password,
    )

    def healthy() -> bool:
        import psycopg2

        try:
            with closing(handle._admin()) as conn, conn.cursor() as cur:
                cur.execute("SELECT 1")
        except psycopg2.OperationalError as err:
            if "password authentication failed" in str(err):
                # Retrying cannot help: the cluster was created with another password.
                raise ServiceError(f"PostgreSQL in {data_dir} rejects the password") from err
            raise
        return True

    handle.url = handle.database_url()
    _wait_until("PostgreSQL", healthy, proc, log_path, timeout)
    handle.startup_seconds = time.monotonic() - started  # initdb included
    return handle


def _check_reachable(folder: Path, user: str) -> None:
    """Fail with a clear message when `user` cannot reach `folder` (e.g. it sits under /root)."""
    from pynomaly.errors import InputError

    check = subprocess.run(
        ["test", "-w", str(folder), "-a", "-x", str(folder)], user=user, group=user, cwd="/"
    )
    if check.returncode != 0:
        raise InputError(
            f"the '{user}' user cannot write to {folder}: PostgreSQL refuses to run as root, so "
            f"choose a folder whose parents are world-traversable (e.g. under /tmp or /srv)"
        )


# S3 (moto server) -----------------------------------------------------------------------------


def start_moto(log_dir: Path, port: int | None = None, timeout: float = 60.0) -> ServiceHandle:
    """Start moto's S3-compatible server as its own process (state lives in its memory only)."""
    log_path = Path(log_dir) / "moto.log"
    port = free_port(port)
    env = dict(os.environ)
    proc = _spawn(
        [sys.executable, "-m", "moto.server", "-H", HOST, "-p", str(port)],
        log_path,
        env=env,
        cwd=Path(log_dir),
    )
    url = f"http://{HOST}:{port}"
    handle = ServiceHandle("s3", proc.pid, port, url, log_path, proc=proc)
    handle.startup_seconds = _wait_until(
        "moto S3 server", lambda: http_ok(f"{url}/moto-api/"), proc, log_path, timeout
    )
    return handle


def s3_client(endpoint_url: str, access_key: str, secret_key: str, region: str = TEST_REGION):
    """A boto3 S3 client for `endpoint_url` with explicit credentials."""
    import boto3

    return boto3.client(
        "s3",
        endpoint_url=endpoint_url,
        aws_access_key_id=access_key,
        aws_secret_access_key=secret_key,
        region_name=region,
    )


def create_bucket(
    endpoint_url: str, name: str, access_key: str, secret_key: str, versioned: bool = False
) -> None:
    """Create a bucket (no error when it already exists), optionally with versioning on."""
    client = s3_client(endpoint_url, access_key, secret_key)
    try:
        client.create_bucket(Bucket=name)
    except client.exceptions.BucketAlreadyOwnedByYou:
        pass
    if versioned:
        client.put_bucket_versioning(Bucket=name, VersioningConfiguration={"Status": "Enabled"})


# MLflow ---------------------------------------------------------------------------------------


@dataclass
class MlflowAuth:
    """Basic-auth settings of an MLflow server: admin login and where users are stored."""

    admin_password: str
    database_uri: str
    secret_key: str
    admin_username: str = "admin"


def start_mlflow(
    base_dir: Path,
    backend_store_uri: str,
    artifacts_destination: str,
    s3_endpoint_url: str | None = None,
    aws_access_key_id: str | None = None,
    aws_secret_access_key: str | None = None,
    auth: MlflowAuth | None = None,
    port: int | None = None,
    workers: int = 1,
    timeout: float = 180.0,
) -> ServiceHandle:
    """Start `mlflow server` with a SQL backend and artifacts proxied (--serve-artifacts) to a
    local folder or S3 (`s3_endpoint_url` None: AWS, or the credentials of this environment).

    Storage credentials live only in the server's environment, so clients need none.
    """
    base_dir = Path(base_dir)
    base_dir.mkdir(parents=True, exist_ok=True)
    log_path = base_dir / "mlflow.log"
    port = free_port(port)
    env = _clean_env(("MLFLOW_",))
    if artifacts_destination.startswith("s3://"):
        if s3_endpoint_url:
            env["MLFLOW_S3_ENDPOINT_URL"] = s3_endpoint_url
        if aws_access_key_id and aws_secret_access_key:
            env |= {
                "AWS_ACCESS_KEY_ID": aws_access_key_id,
                "AWS_SECRET_ACCESS_KEY": aws_secret_access_key,
            }
        env.setdefault("AWS_DEFAULT_REGION", TEST_REGION)
    else:
        env = {k: v for k, v in env.items() if not k.startswith("AWS_")}
        Path(artifacts_destination).mkdir(mode=0o700, parents=True, exist_ok=True)
    env |= {
        # Through the environment, so the database password never shows in `ps`.
        "MLFLOW_BACKEND_STORE_URI": backend_store_uri,
        # The job runner (GenAI jobs) forks ~7 huey consumers of ~200 MB each; not needed here.
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
    }
    cmd = [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--serve-artifacts",
        "--artifacts-destination",
        artifacts_destination,
        "--host",
        HOST,
        "--port",
        str(port),
        # The default is 4 uvicorn workers; one is plenty for a local server on 2 cores.
        "--workers",
        str(workers),
    ]
    if auth:
        ini = base_dir / "mlflow_auth.ini"
        # Private: the user-store URI in it carries the database password.
        write_private(
            ini,
            "[mlflow]\n"
            "default_permission = READ\n"
            f"database_uri = {auth.database_uri}\n"
            f"admin_username = {auth.admin_username}\n"
            "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n",
        )
        env |= {
            "MLFLOW_AUTH_CONFIG_PATH": str(ini),
            # Read only on first start, when the admin user is created.
            "MLFLOW_AUTH_ADMIN_PASSWORD": auth.admin_password,
            "MLFLOW_FLASK_SERVER_SECRET_KEY": auth.secret_key,
        }
        cmd += ["--app-name", "basic-auth"]
    proc = _spawn(cmd, log_path, env=env, cwd=base_dir)
    url = f"http://{HOST}:{port}"
    handle = ServiceHandle("mlflow", proc.pid, port, url, log_path, proc=proc)
    handle.startup_seconds = _wait_until(
        "MLflow server", lambda: http_ok(f"{url}/health"), proc, log_path, timeout
    )
    return handle


def _mlflow_call(
    url: str, path: str, body: dict[str, Any], admin: tuple[str, str], method: str = "POST"
) -> tuple[int, str]:
    """One JSON request to an MLflow server's REST API as `admin` (user, password)."""
    token = base64.b64encode(":".join(admin).encode()).decode()
    request = urllib.request.Request(
        f"{url}{path}",
        data=json.dumps(body).encode(),
        method=method,
        headers={"Content-Type": "application/json", "Authorization": f"Basic {token}"},
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as resp:
            return resp.status, resp.read().decode(errors="replace")
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode(errors="replace")


def ensure_mlflow_user(
    url: str, admin: tuple[str, str], username: str, password: str, edit_all: bool = False
) -> None:
    """A non-admin MLflow user with this password; `edit_all` lets it run experiments and
    registered models (all of them, so those an admin made earlier too), never manage users.

    Without `edit_all` the user reads what the server's default permission (READ) allows.
    """
    status, body = _mlflow_call(
        url, "/api/2.0/mlflow/users/create", {"username": username, "password": password}, admin
    )
    if status != 200 and "RESOURCE_ALREADY_EXISTS" in body:
        status, body = _mlflow_call(
            url,
            "/api/2.0/mlflow/users/update-password",
            {"username": username, "password": password},
            admin,
            method="PATCH",
        )
    if status != 200:
        raise ServiceError(f"MLflow user {username!r}: HTTP {status} {body[:300]}")
    if not edit_all:
        return
    for resource_type in ("experiment", "registered_model"):
        status, body = _mlflow_call(
            url,
            "/api/3.0/mlflow/users/permissions/grant",
            {
                "username": username,
                "resource_type": resource_type,
                "resource_id": "*",
                "permission": "EDIT",
            },
            admin,
        )
        if status != 200 and "RESOURCE_ALREADY_EXISTS" not in body:
            raise ServiceError(f"MLflow grant to {username!r}: HTTP {status} {body[:300]}")


def _clean_env(prefixes: tuple[str, ...]) -> dict[str, str]:
    """This process's environment without variables that would leak into a service's config."""
    return {k: v for k, v in os.environ.items() if not k.startswith(prefixes)}


# Prefect --------------------------------------------------------------------------------------


def start_prefect(
    base_dir: Path,
    database_url: str,
    auth_string: str | None = None,
    port: int | None = None,
    ui: bool = False,
    timeout: float = 180.0,
) -> ServiceHandle:
    """Start `prefect server start` on a PostgreSQL database (postgresql+asyncpg:// URL)."""
    base_dir = Path(base_dir)
    home = base_dir / "prefect_home"
    home.mkdir(parents=True, exist_ok=True)
    log_path = base_dir / "prefect.log"
    port = free_port(port)
    env = _clean_env(("PREFECT_",))
    env |= {
        "PREFECT_HOME": str(home),
        # The UI calls this URL from the browser; its default assumes port 4200.
        "PREFECT_SERVER_UI_API_URL": f"http://{HOST}:{port}/api",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_DATABASE_CONNECTION_URL": database_url,
        "PREFECT_SERVER_UI_ENABLED": "true" if ui else "false",
        "PREFECT_SERVER_UI_SHOW_PROMOTIONAL_CONTENT": "false",
    }
    if auth_string:
        env["PREFECT_SERVER_API_AUTH_STRING"] = auth_string
    cmd = [
        sys.executable,
        "-m",
        "prefect",
        "server",
        "start",
        "--host",
        HOST,
        "--port",
        str(port),
        "--workers",
        "1",
    ]
    proc = _spawn(cmd, log_path, env=env, cwd=base_dir)
    url = f"http://{HOST}:{port}/api"
    handle = ServiceHandle("prefect", proc.pid, port, url, log_path, proc=proc)
    handle.startup_seconds = _wait_until(
        "Prefect server", lambda: http_ok(f"{url}/health"), proc, log_path, timeout
    )
    return handle


def prefect_request(
    api_url: str, method: str, path: str, body: dict | None = None, auth_string: str | None = None
) -> tuple[int, object]:
    """One JSON request to the Prefect REST API; returns (status, decoded body)."""
    headers = {"Content-Type": "application/json"}
    if auth_string:
        # Prefect clients send the auth string as HTTP Basic credentials.
        token = base64.b64encode(auth_string.encode()).decode()
        headers["Authorization"] = f"Basic {token}"
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(f"{api_url}{path}", data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            payload = resp.read()
            return resp.status, json.loads(payload) if payload else None
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode(errors="replace")


def create_work_pool(api_url: str, name: str, auth_string: str | None = None) -> None:
    """Create a process work pool (no error when it already exists)."""
    status, body = prefect_request(
        api_url, "POST", "/work_pools/", {"name": name, "type": "process"}, auth_string
    )
    if status not in (200, 201, 409):
        raise ServiceError(f"creating work pool {name!r} failed: HTTP {status} {body}")


@dataclass
class PrefectWorker(ServiceHandle):
    """A Prefect worker process; `worker_name` is how the server knows it."""

    pool: str = ""
    worker_name: str = ""


def start_prefect_worker(
    base_dir: Path,
    api_url: str,
    pool: str,
    auth_string: str | None = None,
    extra_env: Mapping[str, str] | None = None,
    query_seconds: float | None = None,
    timeout: float = 120.0,
) -> PrefectWorker:
    """Start `prefect worker start --type process` on `pool`; healthy once it heartbeats.

    The worker polls for work every 10 s by default; `query_seconds` lowers that.
    """
    base_dir = Path(base_dir)
    home = base_dir / "worker_home"
    home.mkdir(parents=True, exist_ok=True)
    log_path = base_dir / "prefect-worker.log"
    env = _clean_env(("PREFECT_",)) | dict(extra_env or {})
    env |= {"PREFECT_HOME": str(home), "PREFECT_API_URL": api_url}
    if auth_string:
        env["PREFECT_API_AUTH_STRING"] = auth_string
    if query_seconds is not None:
        env["PREFECT_WORKER_QUERY_SECONDS"] = str(query_seconds)
    name = f"{pool}-{new_secret(4)}"
    cmd = [
        sys.executable,
        "-m",
        "prefect",
        "worker",
        "start",
        "--pool",
        pool,
        "--type",
        "process",
        "--name",
        name,
    ]
    proc = _spawn(cmd, log_path, env=env, cwd=base_dir)
    handle = PrefectWorker(
        "prefect-worker", proc.pid, 0, api_url, log_path, proc=proc, pool=pool, worker_name=name
    )
    handle.startup_seconds = _wait_until(
        "Prefect worker",
        lambda: name in worker_names(api_url, pool, auth_string),
        proc,
        log_path,
        timeout,
    )
    return handle


def worker_names(api_url: str, pool: str, auth_string: str | None = None) -> list[str]:
    """Names of the workers of `pool` that the server has heard from and considers online."""
    status, body = prefect_request(
        api_url, "POST", f"/work_pools/{pool}/workers/filter", {}, auth_string
    )
    if status != 200 or not isinstance(body, list):
        return []
    return [w["name"] for w in body if w.get("status") == "ONLINE"]
