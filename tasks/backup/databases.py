"""The platform's databases: SQLite copies through SQLite's backup API, PostgreSQL through
pg_dump/pg_restore on an exported snapshot, with the counts read from that same snapshot."""

from __future__ import annotations

import gzip
import os
import shutil
import sqlite3
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import AbstractContextManager, closing, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from pynomaly.errors import InputError

GZIP_LEVEL = 6
DB_ROLES = ("results", "optuna", "mlflow", "prefect")  # dump order: referrers before referees
DB_FILES = {"sqlite": "{role}.sqlite.gz", "postgresql": "{role}.pgdump"}

COUNT_QUERIES: dict[str, dict[str, tuple[str, str]]] = {
    # role -> count name -> (table, what is counted in it)
    "mlflow": {
        "experiments": ("experiments", "count(*)"),
        "runs": ("runs", "count(*)"),
        "registered_models": ("registered_models", "count(*)"),
        "model_versions": ("model_versions", "count(*)"),
        "aliases": ("registered_model_aliases", "count(*)"),
    },
    "results": {
        "detection_rows": ("detection_results", "count(*)"),
        "detection_batches": ("detection_results", "count(DISTINCT batch_id)"),
    },
    "optuna": {"optuna_studies": ("studies", "count(*)"), "optuna_trials": ("trials", "count(*)")},
    "prefect": {"prefect_flow_runs": ("flow_run", "count(*)")},
}
# Columns of the MLflow DB that hold artifact locations (rewritten when a drill restores the
# artifacts into a scratch folder, so the drill loads the backed-up files, not the live ones).
ARTIFACT_COLUMNS = [
    ("experiments", "artifact_location"),
    ("runs", "artifact_uri"),
    ("model_versions", "source"),
    ("model_versions", "storage_location"),
    ("logged_models", "artifact_location"),
]


@dataclass(frozen=True)
class Database:
    """One database the platform keeps state in: a SQLite file or a PostgreSQL database."""

    role: str
    url: str

    @property
    def kind(self) -> str:
        backend = sa.make_url(self.url).get_backend_name()
        if backend not in {"sqlite", "postgresql"}:
            raise InputError(f"{self.role} database: backups support SQLite and PostgreSQL only")
        return backend

    @property
    def sqlite_path(self) -> Path:
        name = sa.make_url(self.url).database
        if not name or name == ":memory:":
            raise InputError(f"{self.role} database: an in-memory SQLite DB cannot be backed up")
        return Path(name)

    @property
    def display(self) -> str:
        """The URL with its password masked (safe for manifests and logs)."""
        from tasks.ingest import redact

        return redact(self.url)

    def exists(self) -> bool:
        """Whether the database is there (a dropped one is restored by creating it)."""
        if self.kind == "sqlite":
            return self.sqlite_path.exists()
        with _pg_maintenance(self.url) as conn:
            return _pg_exists(conn, self.url)


# PostgreSQL ------------------------------------------------------------------------------------


def pg_tool(name: str, folder: Path | None = None) -> str:
    """Path of a PostgreSQL program (pg_dump, initdb, ...): in `folder` (PYNOMALY_PG_BIN) when
    given, else the newest /usr/lib/postgresql/<version>/bin, else PATH."""
    installed = [
        p for p in Path("/usr/lib/postgresql").glob(f"*/bin/{name}") if p.parts[-3].isdigit()
    ]
    candidates = ([folder / name] if folder else []) + sorted(
        installed, key=lambda p: int(p.parts[-3]), reverse=True
    )
    found = next((str(p) for p in candidates if p.exists()), None) or shutil.which(name)
    if not found:
        raise InputError(f"{name} not found: install the PostgreSQL client or set PYNOMALY_PG_BIN")
    return found


def _libpq(url: str) -> tuple[str, dict[str, str]]:
    """A libpq URI without the password, and the child's environment carrying it (never argv)."""
    parsed = sa.make_url(url)
    env = dict(os.environ)
    if parsed.password:
        env["PGPASSWORD"] = str(parsed.password)
    plain = parsed.set(drivername="postgresql", password=None)
    return plain.render_as_string(hide_password=False), env


def _run_pg(cmd: list[str], env: dict[str, str], what: str) -> None:
    """Run pg_dump/pg_restore; failure -> RuntimeError with their stderr (no password in it)."""
    result = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if result.returncode != 0:
        raise RuntimeError(f"{what} failed: {result.stderr.strip()[-2000:]}")


@contextmanager
def _connection(url: str | sa.URL, **engine_options: Any) -> Iterator[sa.Connection]:
    """A connection on an engine of its own (no pool), disposed on exit."""
    engine = sa.create_engine(url, poolclass=sa.NullPool, **engine_options)
    try:
        with engine.connect() as conn:
            yield conn
    finally:
        engine.dispose()


def _pg_maintenance(url: str) -> AbstractContextManager[sa.Connection]:
    """An autocommit connection to the server's `postgres` database (CREATE/DROP DATABASE)."""
    return _connection(sa.make_url(url).set(database="postgres"), isolation_level="AUTOCOMMIT")


def create_pg_database(url: str) -> None:
    """Create the database of a URL if it is missing."""
    with _pg_maintenance(url) as conn:
        if not _pg_exists(conn, url):
            quoted = conn.dialect.identifier_preparer.quote(sa.make_url(url).database)
            conn.execute(sa.text(f"CREATE DATABASE {quoted}"))


def _pg_exists(conn: sa.Connection, url: str) -> bool:
    query = sa.text("SELECT 1 FROM pg_database WHERE datname = :n")
    return conn.execute(query, {"n": sa.make_url(url).database}).first() is not None


def drop_pg_database(url: str) -> None:
    """Drop the database of a URL, closing its connections."""
    name = sa.make_url(url).database
    with _pg_maintenance(url) as conn:
        quoted = conn.dialect.identifier_preparer.quote(name)
        conn.execute(sa.text(f"DROP DATABASE IF EXISTS {quoted} WITH (FORCE)"))


# Dump, restore, count --------------------------------------------------------------------------


def count_state(conn: sa.Connection, role: str) -> dict[str, int]:
    """The manifest counts one database holds (a missing table counts 0)."""
    inspector = sa.inspect(conn)
    return {
        name: int(conn.execute(sa.text(f"SELECT {what} FROM {table}")).scalar())
        if inspector.has_table(table)
        else 0
        for name, (table, what) in COUNT_QUERIES.get(role, {}).items()
    }


def mlflow_facts(conn: sa.Connection) -> dict[str, Any]:
    """Alembic revision and champion (model, version) pairs of an MLflow DB."""
    inspector = sa.inspect(conn)
    revision = None
    if inspector.has_table("alembic_version"):
        revision = conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalar()
    champions = []
    if inspector.has_table("registered_model_aliases"):
        rows = conn.execute(
            sa.text(
                "SELECT name, version FROM registered_model_aliases WHERE alias = 'champion' "
                "ORDER BY name"
            )
        )
        champions = [{"model": r[0], "version": int(r[1])} for r in rows]
    return {"alembic_revision": revision, "champions": champions}


def dump_database(db: Database, folder: Path, pg_bin: Path | None = None) -> dict[str, Any]:
    """Dump one database into `folder`; counts (and MLflow facts) read from the same snapshot."""
    if not db.exists():
        return {"absent": True, "kind": db.kind, "url": db.display}
    if db.kind == "sqlite":
        copy = folder / f"{db.role}.sqlite"
        source = sqlite3.connect(f"file:{db.sqlite_path}?mode=ro", uri=True, timeout=60)
        with closing(source) as src, closing(sqlite3.connect(copy)) as dst:
            src.backup(dst)  # one step: a consistent snapshot even while writers are busy
        with _connection(f"sqlite:///{copy}") as conn:
            facts = _facts(conn, db.role)
        file = folder / f"{db.role}.sqlite.gz"
        with open(copy, "rb") as fin, gzip.open(file, "wb", compresslevel=GZIP_LEVEL) as fout:
            shutil.copyfileobj(fin, fout, 1 << 20)
        copy.unlink()
    else:
        file = folder / f"{db.role}.pgdump"
        conninfo, env = _libpq(db.url)
        with _connection(db.url, isolation_level="REPEATABLE READ") as conn:
            # pg_dump reads the snapshot this transaction exported, so the counts below
            # describe exactly the rows in the dump.
            snapshot = conn.execute(sa.text("SELECT pg_export_snapshot()")).scalar()
            _run_pg(
                [pg_tool("pg_dump", pg_bin), "-Fc", "-Z", str(GZIP_LEVEL)]
                + [f"--snapshot={snapshot}", "-f", str(file), "-d", conninfo],
                env,
                f"pg_dump of the {db.role} database",
            )
            facts = _facts(conn, db.role)
    return {"kind": db.kind, "url": db.display, "file": file.name, **facts}


def _facts(conn: sa.Connection, role: str) -> dict[str, Any]:
    facts: dict[str, Any] = {"counts": count_state(conn, role)}
    if role == "mlflow":
        facts.update(mlflow_facts(conn))
    return facts


def restore_database(db: Database, file: Path, pg_bin: Path | None = None) -> None:
    """Overwrite a database with a dump of its kind made by dump_database (restore.check_applicable
    refuses one of another kind)."""
    if db.kind == "sqlite":
        target = db.sqlite_path
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.restore.")
        os.close(fd)
        try:
            with gzip.open(file, "rb") as fin, open(tmp, "wb") as fout:
                shutil.copyfileobj(fin, fout, 1 << 20)
            # Through SQLite rather than a file copy: open readers and WAL files stay valid.
            with closing(sqlite3.connect(tmp)) as src:
                with closing(sqlite3.connect(target, timeout=60)) as dst:
                    src.backup(dst)
        finally:
            os.unlink(tmp)
        return
    create_pg_database(db.url)
    conninfo, env = _libpq(db.url)
    _run_pg(
        [pg_tool("pg_restore", pg_bin), "--clean", "--if-exists", "--no-owner", "--no-privileges"]
        + ["--single-transaction", "--exit-on-error", "-d", conninfo, str(file)],
        env,
        f"pg_restore of the {db.role} database",
    )


def read_counts(db: Database) -> dict[str, Any]:
    """Counts (and MLflow facts) of a live database."""
    with _connection(db.url) as conn:
        return _facts(conn, db.role)


def rewrite_artifact_root(db: Database, old: str, new: str) -> int:
    """Point the MLflow DB's artifact locations under `old` at `new`; rows changed."""
    changed = 0
    with _connection(db.url) as conn, conn.begin():
        inspector = sa.inspect(conn)
        for table, column in ARTIFACT_COLUMNS:
            if not inspector.has_table(table):
                continue
            if column not in {c["name"] for c in inspector.get_columns(table)}:
                continue
            result = conn.execute(
                sa.text(
                    f"UPDATE {table} SET {column} = :new || substr({column}, :n) "
                    f"WHERE substr({column}, 1, :m) = :old"
                ),
                {"new": new, "old": old, "n": len(old) + 1, "m": len(old)},
            )
            changed += result.rowcount
    return changed


# MLflow schema ---------------------------------------------------------------------------------


def mlflow_head_revision() -> str:
    """The newest MLflow schema revision this installation knows."""
    from mlflow.store.db.utils import _get_latest_schema_revision

    return _get_latest_schema_revision()


def known_mlflow_revisions() -> set[str]:
    """Every MLflow schema revision this installation can migrate from."""
    from alembic.script import ScriptDirectory
    from mlflow.store.db.utils import _get_alembic_config

    script = ScriptDirectory.from_config(_get_alembic_config(db_url=""))
    return {rev.revision for rev in script.walk_revisions()}


def upgrade_mlflow_schema(url: str) -> None:
    """What `mlflow db upgrade URL` does, in-process so the URL's password stays off argv."""
    from mlflow.store.db.utils import _upgrade_db, create_sqlalchemy_engine_with_retry

    engine = create_sqlalchemy_engine_with_retry(url)
    try:
        _upgrade_db(engine)
    finally:
        engine.dispose()
