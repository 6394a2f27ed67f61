"""Servers for the integration tests: the programs of deployments/local (what `services up`
runs under supervisord) started directly, each in its own session with a private umask and a
log file, health-checked before they are handed out, stopped with their children (psutil).
moto's S3 server is for the tests only: it keeps objects in memory and takes any credentials.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import psutil

from deployments.local import servers
from deployments.local.servers import HOST, MlflowAuth, Program, ServiceError, free_port, pg_url
from deployments.local.supervisor import log_tail
from tasks.backup import create_pg_database, drop_pg_database

TEST_REGION = "us-east-1"
TEST_KEYS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}


@dataclass
class Server:
    """A running test server: its process, URL, port and log."""

    url: str
    port: int
    proc: subprocess.Popen
    log: Path

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM (PostgreSQL: its fast shutdown, SIGINT) the server and its children, SIGKILL
        what is left after `timeout`."""
        try:
            tree = [psutil.Process(self.proc.pid)]
            tree += tree[0].children(recursive=True)
        except psutil.NoSuchProcess:
            tree = []
        first = signal.SIGINT if isinstance(self, PostgresServer) else signal.SIGTERM
        for i, proc in enumerate(tree):
            try:
                proc.send_signal(first if i == 0 else signal.SIGTERM)
            except psutil.NoSuchProcess:
                pass
        _, alive = psutil.wait_procs(tree, timeout=timeout)
        for proc in alive:
            proc.kill()
        psutil.wait_procs(alive, timeout=5)
        self.proc.wait(timeout=5)


def run(program: Program, log: Path, healthy: Callable[[], bool], timeout: float) -> Server:
    """Start `program` and wait until `healthy()`; stop it and raise with its log otherwise."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_"))}
    log.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    with open(os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600), "ab") as out:
        proc = subprocess.Popen(
            program.command,
            cwd=program.cwd,
            env=env | program.env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            user=program.user,
            group=program.user,
            extra_groups=[] if program.user else None,
            umask=0o077,
        )
    cls = PostgresServer if program.name == "postgres" else Server
    server = cls(program.url, program.port, proc, log)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ServiceError(f"{program.name} exited while starting; log {log}:\n{log_tail(log)}")
        try:
            if healthy():
                return server
        except ServiceError:
            server.stop(5)
            raise
        time.sleep(0.25)
    server.stop(5)
    raise ServiceError(
        f"{program.name} not healthy in {timeout:.0f} s; log {log}:\n{log_tail(log)}"
    )


@dataclass
class PostgresServer(Server):
    """A PostgreSQL cluster on loopback; the superuser logs in with a password over TCP."""

    user: str = "postgres"
    password: str = ""

    def database_url(
        self,
        database: str = "postgres",
        driver: str = "postgresql+psycopg2",
        login: tuple[str, str] | None = None,
    ) -> str:
        """SQLAlchemy URL of `database` (driver e.g. postgresql+asyncpg) as the superuser or
        as `login` (role, password)."""
        return pg_url(self.port, login or (self.user, self.password), database, driver)

    def create_database(self, name: str) -> str:
        """Create an empty database (if missing) and return its psycopg2 URL."""
        url = self.database_url(name)
        create_pg_database(url)
        return url

    def drop_database(self, name: str) -> None:
        drop_pg_database(self.database_url(name))


def start_postgres(base_dir: Path, password: str | None = None) -> PostgresServer:
    """A throwaway PostgreSQL cluster in `base_dir`, fast: durability does not matter here."""
    password = password or servers.new_secret()
    base_dir = base_dir.resolve()
    servers.init_cluster(base_dir, password)
    program = servers.postgres_program(base_dir, free_port())
    for option in ("fsync=off", "synchronous_commit=off", "full_page_writes=off"):
        program.command += ["-c", option]
    program.command += ["-c", "max_connections=200"]
    url = pg_url(program.port, ("postgres", password), "postgres")
    server = run(program, base_dir / "postgres.log", lambda: servers.postgres_ok(url), 60)
    server.password = password
    return server


def start_moto(log_dir: Path) -> Server:
    """moto's S3-compatible server (state in its memory only)."""
    port = free_port()
    url = f"http://{HOST}:{port}"
    command = [sys.executable, "-m", "moto.server", "-H", HOST, "-p", str(port)]
    program = Program("s3", command, log_dir, url, port)
    return run(program, log_dir / "moto.log", lambda: servers.http_ok(f"{url}/moto-api/"), 60)


def create_bucket(endpoint_url: str, name: str, versioned: bool = False) -> None:
    """A bucket on the moto server (no error when it exists), optionally versioned."""
    import boto3

    keys = {k.lower(): v for k, v in TEST_KEYS.items()}
    client = boto3.client("s3", endpoint_url=endpoint_url, region_name=TEST_REGION, **keys)
    try:
        client.create_bucket(Bucket=name)
    except client.exceptions.BucketAlreadyOwnedByYou:
        pass
    if versioned:
        client.put_bucket_versioning(Bucket=name, VersioningConfiguration={"Status": "Enabled"})


def start_mlflow(
    base_dir: Path,
    backend_store_uri: str,
    artifacts_destination: str,
    s3_endpoint_url: str | None = None,
    auth: MlflowAuth | None = None,
) -> Server:
    """An MLflow server; S3 artifacts on the moto server at `s3_endpoint_url`."""
    storage = {}
    if s3_endpoint_url:
        storage = TEST_KEYS | {
            "MLFLOW_S3_ENDPOINT_URL": s3_endpoint_url,
            "AWS_DEFAULT_REGION": TEST_REGION,
        }
    port = free_port()
    program = servers.mlflow_program(
        base_dir, port, backend_store_uri, artifacts_destination, auth, storage
    )
    log = base_dir / "mlflow.log"
    return run(program, log, lambda: servers.http_ok(f"{program.url}/health"), 180)


def start_prefect(base_dir: Path, database_url: str) -> Server:
    """A Prefect server on a PostgreSQL database (postgresql+asyncpg:// URL)."""
    program = servers.prefect_program(base_dir, free_port(), database_url)
    log = base_dir / "prefect.log"
    return run(program, log, lambda: servers.http_ok(f"{program.url}/health"), 180)


def start_prefect_worker(
    base_dir: Path, api_url: str, pool: str, extra_env: dict[str, str], query_seconds: float
) -> Server:
    """A process worker on `pool` polling every `query_seconds`; healthy once it is online."""
    name = f"{pool}-{servers.new_secret(4)}"
    env = extra_env | {"PREFECT_WORKER_QUERY_SECONDS": str(query_seconds)}
    program = servers.worker_program(base_dir, api_url, pool, name, None, env)
    healthy = lambda: servers.worker_online(api_url, None, pool, name)  # noqa: E731
    return run(program, base_dir / "prefect-worker.log", healthy, 120)
