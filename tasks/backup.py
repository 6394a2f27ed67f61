"""Back up and restore the whole platform state, with a signed manifest and verified restores.

A backup is a folder `<id>/` in the backup store (a local folder or s3://bucket/prefix):

    manifest.json          what is inside: files + sha256, counts, versions, sources, warnings
    manifest.sig           HMAC-SHA256 of manifest.json under the backup key, which never lives
                           in the backup store: whoever can write the store cannot re-sign a
                           changed backup (format 1 backups, made before signatures, carried
                           only manifest.sha256 and are treated as unauthenticated)
    mlflow.sqlite.gz | mlflow.pgdump      MLflow backend store (SQLite copy or pg_dump -Fc)
    results.*, optuna.*, prefect.*        the other databases, when the platform has them
    expectations.tar.gz    the expectation suites
    artifacts.tar.gz | artifacts-listing.json.gz   the artifact store: a copy, or for a
                           versioned S3 bucket a listing of key, size, ETag and version id
    champions.json.gz      per champion: sample input rows and the scores it gave

Consistency across stores comes from the order things are taken in: each later part is a
superset of what the earlier parts refer to (results -> MLflow -> artifacts), and counts are
read from the very snapshot that is dumped (the SQLite copy, or pg_dump's exported snapshot).
"""

from __future__ import annotations

import gzip
import hashlib
import hmac
import json
import os
import re
import secrets
import shutil
import sqlite3
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from pynomaly.errors import InputError
from tasks.staging import staging_folder
from tasks.store import ArtifactStore, s3_client, s3_error, split_s3_uri

FORMAT_VERSION = 2  # 2: manifest.sig (HMAC) and champion warnings; 1: manifest.sha256 only
READABLE_FORMATS = (1, 2)
MANIFEST = "manifest.json"
MANIFEST_SUM = "manifest.sha256"  # format 1 only: an integrity check, not an authentication
SIGNATURE = "manifest.sig"
KEY_ENV = "PYNOMALY_BACKUP_KEY"
KEY_FILE = "backup.key"  # embedded mode: under the platform home, never in the backup store
MIN_KEY_CHARS = 32
SIGNATURE_ALGORITHM = "HMAC-SHA256"
ID_PATTERN = re.compile(r"\d{8}T\d{6}Z-[0-9a-f]{1,16}")
CHAMPIONS = "champions.json.gz"
EXPECTATIONS = "expectations.tar.gz"
ARTIFACTS_COPY = "artifacts.tar.gz"
ARTIFACTS_LISTING = "artifacts-listing.json.gz"
ID_TIME_FORMAT = "%Y%m%dT%H%M%SZ"
SAMPLE_ROWS = 5
GZIP_LEVEL = 6
# A backup folder without a manifest this old is a failed run, not one still being written.
INCOMPLETE_GRACE = timedelta(days=1)
DB_ROLES = ("results", "optuna", "mlflow", "prefect")  # dump order: referrers before referees
DB_FILES = {"sqlite": "{role}.sqlite.gz", "postgresql": "{role}.pgdump"}
# Every file a backup may hold: a manifest naming anything else is refused before any path is
# built from it.
BACKUP_FILES = frozenset(
    {CHAMPIONS, EXPECTATIONS, ARTIFACTS_COPY, ARTIFACTS_LISTING}
    | {pattern.format(role=role) for pattern in DB_FILES.values() for role in DB_ROLES}
)
# What `backup list` reports per backup; only "ok" (and, without the key, "unchecked") count as
# backups one can restore.
USABLE_STATUSES = ("ok", "unchecked")

COUNT_QUERIES: dict[str, dict[str, tuple[str, str]]] = {
    # role -> count name -> (table, SQL)
    "mlflow": {
        "experiments": ("experiments", "SELECT count(*) FROM experiments"),
        "runs": ("runs", "SELECT count(*) FROM runs"),
        "registered_models": ("registered_models", "SELECT count(*) FROM registered_models"),
        "model_versions": ("model_versions", "SELECT count(*) FROM model_versions"),
        "aliases": ("registered_model_aliases", "SELECT count(*) FROM registered_model_aliases"),
    },
    "results": {
        "detection_rows": ("detection_results", "SELECT count(*) FROM detection_results"),
        "detection_batches": (
            "detection_results",
            "SELECT count(DISTINCT batch_id) FROM detection_results",
        ),
    },
    "optuna": {
        "optuna_studies": ("studies", "SELECT count(*) FROM studies"),
        "optuna_trials": ("trials", "SELECT count(*) FROM trials"),
    },
    "prefect": {"prefect_flow_runs": ("flow_run", "SELECT count(*) FROM flow_run")},
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


# Sources -------------------------------------------------------------------------------------


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
        return sa.make_url(self.url).render_as_string(hide_password=True)

    def exists(self) -> bool:
        """Whether the database is there (a dropped one is restored by creating it)."""
        if self.kind == "sqlite":
            return self.sqlite_path.exists()
        name = sa.make_url(self.url).database
        with _pg_maintenance(self.url) as conn:
            found = conn.execute(
                sa.text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": name}
            ).first()
        return found is not None


@dataclass(frozen=True)
class PlatformState:
    """Everywhere the platform keeps state; backups read it and restores write it."""

    mlflow: Database
    results: Database
    artifacts: ArtifactStore
    optuna: Database | None = None
    prefect: Database | None = None
    # The MLflow server in front of the `mlflow` database, when there is one: models whose
    # artifacts it proxies (mlflow-artifacts:/ URIs) load only through it.
    server_uri: str | None = None
    # Where backups, restores and drills stage files (None: the system temp folder); staging
    # folders name their process, so one a killed command left is removed by the next.
    staging: Path | None = None

    def databases(self) -> dict[str, Database]:
        """role -> database, in dump order."""
        found = {"results": self.results, "optuna": self.optuna, "mlflow": self.mlflow}
        found["prefect"] = self.prefect
        return {role: found[role] for role in DB_ROLES if found[role] is not None}

    @property
    def tracking_uri(self) -> str:
        return self.server_uri or self.mlflow.url


def platform_state(settings: Any) -> PlatformState:
    """The platform's state as the settings describe it."""
    tracking = settings.mlflow_tracking_uri
    server_uri = None
    if tracking.startswith(("http://", "https://", "databricks")):
        server_uri = tracking
        if not settings.mlflow_backend_uri:
            raise InputError(
                f"the MLflow tracking URI {tracking} is a server: backups read its database, "
                "so set PYNOMALY_MLFLOW_BACKEND_URI to the server's backend store URL"
            )
        tracking = settings.mlflow_backend_uri
    return PlatformState(
        mlflow=Database("mlflow", tracking),
        results=Database("results", settings.results_url),
        artifacts=ArtifactStore(settings.artifact_store, settings.s3_endpoint_url),
        optuna=Database("optuna", settings.optuna_storage) if settings.optuna_storage else None,
        prefect=prefect_database(Path(settings.prefect_home)),
        server_uri=server_uri,
        staging=Path(settings.staging_dir),
    )


def prefect_database(prefect_home: Path) -> Database | None:
    """The embedded Prefect SQLite DB under prefect_home, unless a Prefect server holds the DB."""
    if os.environ.get("PREFECT_API_URL"):
        return None  # a Prefect server owns its database; back it up where it runs
    path = prefect_home / "prefect.db"
    configured = os.environ.get("PREFECT_API_DATABASE_CONNECTION_URL")
    if configured and Path(sa.make_url(configured).database or "") != path:
        return None
    return Database("prefect", f"sqlite:///{path}")


# Backup store --------------------------------------------------------------------------------


@dataclass(frozen=True)
class BackupStore(ArtifactStore):
    """The backup store: an ArtifactStore whose S3 objects are encrypted at rest (SSE-S3)."""

    def put_file(self, key: str, path: Path) -> str:
        """Store a file; on S3 with ServerSideEncryption=AES256."""
        if not self.is_s3:
            return super().put_file(key, path)
        target = self.uri(key)
        bucket, k = split_s3_uri(target)
        try:
            s3_client(self.endpoint_url).upload_file(
                str(path), bucket, k, ExtraArgs={"ServerSideEncryption": "AES256"}
            )
        except Exception as exc:
            raise s3_error(exc, target, self.endpoint_url) from exc
        return target

    def delete_prefix(self, prefix: str) -> int:
        """Remove every key under a prefix; the number removed."""
        keys = self.list(prefix)
        if not self.is_s3:
            for key in keys:
                Path(self.uri(key)).unlink(missing_ok=True)
            folder = Path(self.uri(prefix))
            if folder.is_dir():
                shutil.rmtree(folder, ignore_errors=True)
            return len(keys)
        bucket, root_key = split_s3_uri(self.root.rstrip("/") + "/")
        client = s3_client(self.endpoint_url)
        for start in range(0, len(keys), 1000):
            batch = [{"Key": root_key + k} for k in keys[start : start + 1000]]
            try:
                client.delete_objects(Bucket=bucket, Delete={"Objects": batch, "Quiet": True})
            except Exception as exc:
                raise s3_error(exc, self.uri(prefix), self.endpoint_url) from exc
        return len(keys)


def backup_store(root: str, endpoint_url: str | None = None) -> BackupStore:
    """The backup store at a folder or s3://bucket/prefix."""
    return BackupStore(root, endpoint_url)


# Key and signatures ----------------------------------------------------------------------------


@dataclass(frozen=True)
class BackupKey:
    """The secret that signs manifests; kept outside the backup store, never logged."""

    secret: bytes = field(repr=False)
    source: str  # where it came from: the environment variable's name or the key file's path

    @property
    def key_id(self) -> str:
        """A short fingerprint naming the key (tells "another key" from "altered")."""
        return hashlib.sha256(b"pynomaly backup key id:" + self.secret).hexdigest()[:12]

    def mac(self, body: bytes) -> str:
        """HMAC-SHA256 of the manifest bytes, hex."""
        return hmac.new(self.secret, body, hashlib.sha256).hexdigest()

    def signature(self, body: bytes) -> bytes:
        """The manifest.sig content for a manifest."""
        sig = {"algorithm": SIGNATURE_ALGORITHM, "key_id": self.key_id, "mac": self.mac(body)}
        return json.dumps(sig, sort_keys=True).encode()


def load_backup_key(
    env_value: str | None, key_file: Path | None, *, create: bool = False
) -> BackupKey | None:
    """The backup key: `env_value` when set, else the key file (made once when `create`).

    None when there is none and `create` is false (read-only commands never make a key).
    """
    if env_value:
        if len(env_value.strip()) < MIN_KEY_CHARS:
            raise InputError(
                f"{KEY_ENV} is shorter than {MIN_KEY_CHARS} characters: use a random secret, "
                "e.g. `openssl rand -hex 32`"
            )
        return BackupKey(env_value.strip().encode(), KEY_ENV)
    if key_file is None:
        if create:
            raise InputError(
                f"backups to an S3 store are signed with a key kept outside it: set {KEY_ENV} "
                "(from your secret store) on every process that backs up, verifies or restores"
            )
        return None
    if not key_file.exists():
        if not create:
            return None
        _create_key_file(key_file)
    mode = key_file.stat().st_mode
    if mode & 0o077:
        raise InputError(
            f"backup key file {key_file} is readable by others (mode {mode & 0o777:o}): "
            f"chmod 600 it, or set {KEY_ENV}"
        )
    secret = key_file.read_text().strip()
    if len(secret) < MIN_KEY_CHARS:
        raise InputError(f"backup key file {key_file} is empty or too short")
    return BackupKey(secret.encode(), str(key_file))


def _create_key_file(path: Path) -> None:
    """Write a new random key at `path`, atomically and 0600 from the first byte."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # mkstemp creates the file 0600; the link publishes it complete, and fails if another
    # process made the key first (then that key is the one everyone uses).
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_hex(32) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass
    finally:
        os.unlink(tmp)


def backup_key(settings: Any, store: BackupStore, *, create: bool = False) -> BackupKey | None:
    """The key for a backup store as the settings describe it (call at the edge).

    `PYNOMALY_BACKUP_KEY` wins; a local backup store (embedded mode) otherwise uses
    `$PYNOMALY_HOME/backup.key`; an S3 store needs the environment variable.
    """
    key_file = None
    if not store.is_s3:
        key_file = Path(settings.home_dir) / KEY_FILE
        root = Path(store.root).expanduser().resolve()
        if key_file.resolve() == root or root in key_file.resolve().parents:
            raise InputError(
                f"the backup key file {key_file} would be inside the backup store {store.root}: "
                f"set {KEY_ENV}, or move PYNOMALY_BACKUP_ROOT out of PYNOMALY_HOME's top folder"
            )
    return load_backup_key(os.environ.get(KEY_ENV), key_file, create=create)


def signature_status(
    body: bytes, signature: bytes | None, key: BackupKey | None, legacy_sum: bytes | None
) -> tuple[str, str | None]:
    """(status, problem) of a manifest's signature: ok, unchecked, unsigned or bad-signature."""
    if signature is None:
        if legacy_sum is not None and hashlib.sha256(body).hexdigest() != legacy_sum.strip().decode(
            errors="replace"
        ):
            return "malformed", f"{MANIFEST} does not match {MANIFEST_SUM}"
        return "unsigned", "not signed (made before backups were signed, or its signature removed)"
    try:
        sig = json.loads(signature)
        algorithm, key_id, mac = sig["algorithm"], sig["key_id"], sig["mac"]
    except (ValueError, TypeError, KeyError):
        return "bad-signature", f"{SIGNATURE} is not a signature"
    if algorithm != SIGNATURE_ALGORITHM or not isinstance(mac, str):
        return "bad-signature", f"{SIGNATURE} uses {algorithm!r}, not {SIGNATURE_ALGORITHM}"
    if key is None:
        return "unchecked", "signed, but no backup key here to check it"
    if hmac.compare_digest(mac, key.mac(body)):
        return "ok", None
    if key_id != key.key_id:
        return "bad-signature", f"signed with another key (id {key_id}; this key is {key.key_id})"
    return "bad-signature", "its signature does not match: the manifest was changed after signing"


# Ids and retention ---------------------------------------------------------------------------


def new_backup_id(now: datetime | None = None) -> str:
    """`20260101T020000Z-1a2b`: sortable by time, unique when two start in the same second."""
    now = (now or datetime.now(UTC)).astimezone(UTC)
    return f"{now.strftime(ID_TIME_FORMAT)}-{secrets.token_hex(2)}"


def backup_time(backup_id: str) -> datetime:
    """The UTC time a backup id was made at."""
    try:
        return datetime.strptime(backup_id.split("-")[0], ID_TIME_FORMAT).replace(tzinfo=UTC)
    except ValueError:
        raise InputError(
            f"{backup_id!r} is not a backup id (expected e.g. 20260101T020000Z-1a2b)"
        ) from None


def select_retained(
    times: dict[str, datetime],
    now: datetime,
    keep_last: int,
    keep_daily_days: int,
    keep_weekly_weeks: int,
) -> set[str]:
    """Ids to keep: the newest `keep_last`, plus the newest of each of the last
    `keep_daily_days` UTC calendar days and of each of the last `keep_weekly_weeks` ISO weeks
    (today and this week count as the first). Everything else may be pruned.
    """
    newest_first = sorted(times, key=lambda i: (times[i], i), reverse=True)
    keep = set(newest_first[: max(keep_last, 0)])
    today = now.astimezone(UTC).date()
    days = {today - timedelta(days=k) for k in range(keep_daily_days)}
    weeks = {_iso_week(today - timedelta(weeks=k)) for k in range(keep_weekly_weeks)}
    seen_days: set[date] = set()
    seen_weeks: set[tuple[int, int]] = set()
    for backup_id in newest_first:
        day = times[backup_id].astimezone(UTC).date()
        if day in days and day not in seen_days:
            seen_days.add(day)
            keep.add(backup_id)
        week = _iso_week(day)
        if week in weeks and week not in seen_weeks:
            seen_weeks.add(week)
            keep.add(backup_id)
    return keep


def _iso_week(day: date) -> tuple[int, int]:
    year, week, _ = day.isocalendar()
    return year, week


# Files ---------------------------------------------------------------------------------------


def sha256_of(path: Path) -> str:
    """Hex sha256 of a file."""
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def gzip_file(src: Path, dest: Path) -> Path:
    """Compress a file."""
    with open(src, "rb") as fin, gzip.open(dest, "wb", compresslevel=GZIP_LEVEL) as fout:
        shutil.copyfileobj(fin, fout, 1 << 20)
    return dest


def gunzip_file(src: Path, dest: Path) -> Path:
    """Decompress a file."""
    with gzip.open(src, "rb") as fin, open(dest, "wb") as fout:
        shutil.copyfileobj(fin, fout, 1 << 20)
    return dest


def write_json_gz(path: Path, data: Any) -> Path:
    """JSON, gzip-compressed; floats keep their exact repr."""
    with gzip.open(path, "wt", compresslevel=GZIP_LEVEL, encoding="utf-8") as fh:
        json.dump(data, fh)
    return path


def read_json_gz(path: Path) -> Any:
    """Read what write_json_gz wrote."""
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        return json.load(fh)


# Databases -----------------------------------------------------------------------------------


def pg_tool(name: str) -> str:
    """Path of pg_dump/pg_restore: $PYNOMALY_PG_BIN, the newest installed PostgreSQL, or PATH."""
    folder = os.environ.get("PYNOMALY_PG_BIN")
    candidates = [Path(folder) / name] if folder else []
    installed = Path("/usr/lib/postgresql")
    if installed.is_dir():
        versions = sorted(
            (p for p in installed.iterdir() if p.name.isdigit()),
            key=lambda p: int(p.name),
            reverse=True,
        )
        candidates += [p / "bin" / name for p in versions]
    for candidate in candidates:
        if candidate.exists():
            return str(candidate)
    found = shutil.which(name)
    if not found:
        raise InputError(f"{name} not found: install the PostgreSQL client or set PYNOMALY_PG_BIN")
    return found


def _libpq(url: str) -> tuple[str, dict[str, str]]:
    """A libpq URI without the password, and an environment carrying it (never on argv)."""
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
def _pg_maintenance(url: str) -> Iterator[sa.Connection]:
    """An autocommit connection to the server's `postgres` database (CREATE/DROP DATABASE)."""
    engine = sa.create_engine(
        sa.make_url(url).set(database="postgres"),
        isolation_level="AUTOCOMMIT",
        poolclass=sa.NullPool,
    )
    try:
        with engine.connect() as conn:
            yield conn
    finally:
        engine.dispose()


def create_pg_database(url: str) -> None:
    """Create the database of a URL if it is missing."""
    name = sa.make_url(url).database
    with _pg_maintenance(url) as conn:
        if conn.execute(
            sa.text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": name}
        ).first():
            return
        quoted = conn.dialect.identifier_preparer.quote(name)
        conn.execute(sa.text(f"CREATE DATABASE {quoted}"))


def drop_pg_database(url: str) -> None:
    """Drop the database of a URL, closing its connections."""
    name = sa.make_url(url).database
    with _pg_maintenance(url) as conn:
        quoted = conn.dialect.identifier_preparer.quote(name)
        conn.execute(sa.text(f"DROP DATABASE IF EXISTS {quoted} WITH (FORCE)"))


def count_state(conn: sa.Connection, role: str) -> dict[str, int]:
    """The manifest counts one database holds (a missing table counts 0)."""
    inspector = sa.inspect(conn)
    counts = {}
    for name, (table, sql) in COUNT_QUERIES.get(role, {}).items():
        counts[name] = int(conn.execute(sa.text(sql)).scalar()) if inspector.has_table(table) else 0
    return counts


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


def dump_database(db: Database, folder: Path) -> dict[str, Any]:
    """Dump one database into `folder`; counts (and MLflow facts) read from the same snapshot."""
    if not db.exists():
        return {"absent": True, "kind": db.kind, "url": db.display}
    if db.kind == "sqlite":
        copy = folder / f"{db.role}.sqlite"
        src = sqlite3.connect(f"file:{db.sqlite_path}?mode=ro", uri=True, timeout=60)
        dst = sqlite3.connect(copy)
        try:
            src.backup(dst)  # one step: a consistent snapshot even while writers are busy
        finally:
            dst.close()
            src.close()
        engine = sa.create_engine(f"sqlite:///{copy}", poolclass=sa.NullPool)
        with engine.connect() as conn:
            facts = _facts(conn, db.role)
        engine.dispose()
        file = gzip_file(copy, folder / f"{db.role}.sqlite.gz")
        copy.unlink()
    else:
        file = folder / f"{db.role}.pgdump"
        conninfo, env = _libpq(db.url)
        engine = sa.create_engine(db.url, poolclass=sa.NullPool)
        try:
            with engine.connect().execution_options(isolation_level="REPEATABLE READ") as conn:
                # pg_dump reads the snapshot this transaction exported, so the counts below
                # describe exactly the rows in the dump.
                snapshot = conn.execute(sa.text("SELECT pg_export_snapshot()")).scalar()
                _run_pg(
                    [pg_tool("pg_dump"), "-Fc", "-Z", str(GZIP_LEVEL), f"--snapshot={snapshot}"]
                    + ["-f", str(file), "-d", conninfo],
                    env,
                    f"pg_dump of the {db.role} database",
                )
                facts = _facts(conn, db.role)
        finally:
            engine.dispose()
    return {"kind": db.kind, "url": db.display, "file": file.name, **facts}


def _facts(conn: sa.Connection, role: str) -> dict[str, Any]:
    facts: dict[str, Any] = {"counts": count_state(conn, role)}
    if role == "mlflow":
        facts.update(mlflow_facts(conn))
    return facts


def restore_database(db: Database, file: Path, kind: str) -> None:
    """Overwrite a database with a dump made by dump_database."""
    if kind != db.kind:
        raise InputError(
            f"the backup holds a {kind} {db.role} database but the platform uses {db.kind}"
        )
    if db.kind == "sqlite":
        target = db.sqlite_path
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.restore.")
        os.close(fd)
        try:
            gunzip_file(file, Path(tmp))
            src = sqlite3.connect(tmp)
            dst = sqlite3.connect(target, timeout=60)
            try:
                # Through SQLite rather than a file copy: open readers and WAL files stay valid.
                src.backup(dst)
            finally:
                dst.close()
                src.close()
        finally:
            os.unlink(tmp)
        return
    create_pg_database(db.url)
    conninfo, env = _libpq(db.url)
    _run_pg(
        [pg_tool("pg_restore"), "--clean", "--if-exists", "--no-owner", "--no-privileges"]
        + ["--single-transaction", "--exit-on-error", "-d", conninfo, str(file)],
        env,
        f"pg_restore of the {db.role} database",
    )


def read_counts(db: Database) -> dict[str, Any]:
    """Counts (and MLflow facts) of a live database."""
    engine = sa.create_engine(db.url, poolclass=sa.NullPool)
    try:
        with engine.connect() as conn:
            return _facts(conn, db.role)
    finally:
        engine.dispose()


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


# Artifacts -----------------------------------------------------------------------------------


def artifact_root_uri(store: ArtifactStore) -> str:
    """The artifact root as MLflow records it (file:///abs/path or s3://bucket/prefix)."""
    if store.is_s3:
        return store.root.rstrip("/")
    return Path(store.root).resolve().as_uri()


def s3_objects(store: ArtifactStore) -> dict[str, int]:
    """key (relative to the root) -> size of every object in an S3 store."""
    bucket, root_key = split_s3_uri(store.root.rstrip("/") + "/")
    found: dict[str, int] = {}
    try:
        pages = s3_client(store.endpoint_url).get_paginator("list_objects_v2")
        for page in pages.paginate(Bucket=bucket, Prefix=root_key):
            for obj in page.get("Contents", []):
                found[obj["Key"][len(root_key) :]] = int(obj["Size"])
    except Exception as exc:
        raise s3_error(exc, store.root, store.endpoint_url) from exc
    return found


def store_objects(store: ArtifactStore) -> dict[str, int]:
    """key -> size of every file in a store (local folder or S3)."""
    if store.is_s3:
        return s3_objects(store)
    base = Path(store.root)
    if not base.exists():
        return {}
    return {str(p.relative_to(base)): p.stat().st_size for p in base.rglob("*") if p.is_file()}


def bucket_versioned(store: ArtifactStore) -> bool:
    """Whether the S3 bucket under a store keeps object versions."""
    bucket, _ = split_s3_uri(store.root)
    try:
        status = s3_client(store.endpoint_url).get_bucket_versioning(Bucket=bucket)
    except Exception as exc:
        raise s3_error(exc, store.root, store.endpoint_url) from exc
    return status.get("Status") == "Enabled"


def pack_store(store: ArtifactStore, dest: Path, prefix: str = "") -> dict[str, int]:
    """A tar.gz of every file under a prefix of a store; key -> size of what went in."""
    packed: dict[str, int] = {}
    with tarfile.open(dest, "w:gz", compresslevel=GZIP_LEVEL) as tar:
        if not store.is_s3:
            base = Path(store.root)
            start = base / prefix
            files = sorted(p for p in start.rglob("*") if p.is_file()) if start.exists() else []
            for path in files:
                key = str(path.relative_to(base))
                try:
                    tar.add(path, arcname=key, recursive=False)
                except FileNotFoundError:
                    continue  # removed while we walked (e.g. a temp file renamed into place)
                packed[key] = tar.getmember(key).size
        else:
            bucket, root_key = split_s3_uri(store.root.rstrip("/") + "/")
            client = s3_client(store.endpoint_url)
            for key, size in sorted(s3_objects(store).items()):
                if not key.startswith(prefix):
                    continue
                try:
                    body = client.get_object(Bucket=bucket, Key=root_key + key)["Body"]
                except Exception as exc:
                    raise s3_error(exc, store.uri(key), store.endpoint_url) from exc
                info = tarfile.TarInfo(key)
                info.size = size
                info.mtime = int(time.time())
                tar.addfile(info, body)  # streamed: no local copy of the bucket
                packed[key] = size
    return packed


def list_versions(store: ArtifactStore) -> list[dict[str, Any]]:
    """Current key, size, ETag and version id of every object in a versioned S3 store."""
    bucket, root_key = split_s3_uri(store.root.rstrip("/") + "/")
    listing = []
    try:
        pages = s3_client(store.endpoint_url).get_paginator("list_object_versions")
        for page in pages.paginate(Bucket=bucket, Prefix=root_key):
            for v in page.get("Versions", []):
                if v.get("IsLatest"):
                    listing.append(
                        {
                            "key": v["Key"][len(root_key) :],
                            "size": int(v["Size"]),
                            "etag": v["ETag"].strip('"'),
                            "version_id": v["VersionId"],
                        }
                    )
    except Exception as exc:
        raise s3_error(exc, store.root, store.endpoint_url) from exc
    return sorted(listing, key=lambda o: o["key"])


def unpack_into(store: ArtifactStore, archive: Path) -> dict[str, int]:
    """Write every file of a tar.gz into a store; key -> size written."""
    written: dict[str, int] = {}
    with tarfile.open(archive, "r:gz") as tar:
        if not store.is_s3:
            base = Path(store.root)
            base.mkdir(parents=True, exist_ok=True)
            members = [m for m in tar.getmembers() if m.isfile()]
            tar.extractall(base, members=members, filter="data")  # no paths out of the root
            return {m.name: m.size for m in members}
        for member in tar:
            if not member.isfile():
                continue
            fh = tar.extractfile(member)
            with tempfile.NamedTemporaryFile() as tmp:
                shutil.copyfileobj(fh, tmp)
                tmp.flush()
                store.put_file(member.name, Path(tmp.name))
            written[member.name] = member.size
    return written


def restore_versions(store: ArtifactStore, listing: list[dict[str, Any]]) -> int:
    """Make each listed version the current object again where it is not; copies made."""
    bucket, root_key = split_s3_uri(store.root.rstrip("/") + "/")
    client = s3_client(store.endpoint_url)
    current = {o["key"]: o["version_id"] for o in list_versions(store)}
    copied = 0
    for obj in listing:
        if current.get(obj["key"]) == obj["version_id"]:
            continue
        key = root_key + obj["key"]
        try:
            client.copy_object(
                Bucket=bucket,
                Key=key,
                CopySource={"Bucket": bucket, "Key": key, "VersionId": obj["version_id"]},
            )
        except Exception as exc:
            raise s3_error(exc, store.uri(obj["key"]), store.endpoint_url) from exc
        copied += 1
    return copied


def download_versions(store: ArtifactStore, listing: list[dict[str, Any]], folder: Path) -> None:
    """Fetch each listed version into a local folder (a drill's scratch copy)."""
    bucket, root_key = split_s3_uri(store.root.rstrip("/") + "/")
    client = s3_client(store.endpoint_url)
    for obj in listing:
        path = folder / obj["key"]
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            body = client.get_object(
                Bucket=bucket, Key=root_key + obj["key"], VersionId=obj["version_id"]
            )["Body"]
        except Exception as exc:
            raise s3_error(exc, store.uri(obj["key"]), store.endpoint_url) from exc
        with open(path, "wb") as fh:
            shutil.copyfileobj(body, fh)


# Champions -----------------------------------------------------------------------------------


@contextmanager
def mlflow_uris(tracking_uri: str) -> Iterator[None]:
    """Point MLflow's process-wide tracking and registry URIs somewhere, then exactly back.

    MLflow keeps both in module globals and mirrors them into environment variables; all
    four are restored, or a later client in this process would silently use our URI.
    """
    import mlflow
    from mlflow.tracking._model_registry import utils as registry_utils
    from mlflow.tracking._tracking_service import utils as tracking_utils

    names = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")
    saved_env = {name: os.environ.get(name) for name in names}
    saved = (tracking_utils._tracking_uri, registry_utils._registry_uri)
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(saved[0])
        registry_utils._registry_uri = saved[1]
        for name, value in saved_env.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _load_version(name: str, version: int, folder: Path) -> tuple[Any, str]:
    """A model version loaded from a local download, and that download's path."""
    import mlflow

    local = mlflow.artifacts.download_artifacts(
        artifact_uri=f"models:/{name}/{version}", dst_path=str(folder)
    )
    return mlflow.pyfunc.load_model(local), local


def _scores(model: Any, frame: Any) -> list[float]:
    import numpy as np
    import pandas as pd

    out = model.predict(frame)
    if isinstance(out, pd.DataFrame) and "score" in out.columns:
        out = out["score"]
    return [float(v) for v in np.asarray(out, dtype=float).ravel()]


def _frame(sample: dict[str, Any]) -> Any:
    import pandas as pd

    frame = pd.DataFrame(sample["data"], columns=sample["columns"])
    return frame.astype(sample["dtypes"])


def record_champion_samples(
    tracking_uri: str, champions: list[dict[str, Any]], rows: int = SAMPLE_ROWS
) -> list[dict[str, Any]]:
    """Per champion: its input example's first rows and the scores the model gives them."""
    from mlflow.models import Model

    samples = []
    with mlflow_uris(tracking_uri), tempfile.TemporaryDirectory() as tmp:
        for i, champ in enumerate(champions):
            try:
                samples.append(_champion_sample(champ, Path(tmp) / str(i), rows, Model))
            except Exception as exc:  # noqa: BLE001 - one broken champion must not stop a backup
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
                reason = f"does not load or score: {type(exc).__name__}: {first}".rstrip(": ")
                samples.append({**champ, "sample": None, "reason": reason, "failed": True})
    return samples


def _champion_sample(champ: dict[str, Any], folder: Path, rows: int, model_cls: Any) -> dict:
    """One champion's sample rows and scores (raises when the champion cannot load or score)."""
    model, local = _load_version(champ["model"], champ["version"], folder)
    example = model_cls.load(local).load_input_example(local)
    if example is None:
        return {**champ, "sample": None, "reason": "no input example logged"}
    example = example.head(rows)
    # Score the rows as they come back from JSON, exactly as the check will later
    # (JSON keeps every float's repr, so nothing is rounded on the way).
    sample = json.loads(
        json.dumps(
            {
                "columns": [str(c) for c in example.columns],
                "dtypes": {str(c): str(t) for c, t in example.dtypes.items()},
                "data": example.to_numpy().tolist(),
            }
        )
    )
    return {**champ, "sample": sample, "scores": _scores(model, _frame(sample))}


def check_champion_samples(tracking_uri: str, samples: list[dict[str, Any]]) -> list[str]:
    """Problems found re-scoring each recorded sample with the restored champion."""
    problems = []
    with mlflow_uris(tracking_uri), tempfile.TemporaryDirectory() as tmp:
        for i, rec in enumerate(samples):
            label = f"{rec['model']} v{rec['version']}"
            if rec.get("sample") is None:
                continue
            try:
                model, _ = _load_version(rec["model"], rec["version"], Path(tmp) / str(i))
            except Exception as exc:
                problems.append(f"champion {label} does not load: {type(exc).__name__}: {exc}")
                continue
            got = _scores(model, _frame(rec["sample"]))
            if got != rec["scores"]:
                problems.append(
                    f"champion {label} scores {got} where the backup recorded {rec['scores']}"
                )
    return problems


# Create --------------------------------------------------------------------------------------


def create_backup(
    state: PlatformState,
    store: BackupStore,
    *,
    key: BackupKey,
    kind: str = "manual",
    artifacts_mode: str = "auto",
    record_champions: bool = True,
    now: datetime | None = None,
    work_dir: Path | None = None,
) -> dict[str, Any]:
    """Take a backup of the whole platform state into the backup store, signed with `key`;
    its manifest. A champion that cannot load is a warning in the manifest, not a failure."""
    from importlib import metadata

    import mlflow

    started = time.perf_counter()
    backup_id = new_backup_id(now)
    if artifacts_mode not in {"auto", "copy", "listing"}:
        raise InputError(f"artifacts mode {artifacts_mode!r}: choose auto, copy or listing")
    with staging_folder(f"pynomaly-backup-{backup_id}-", work_dir or state.staging) as staging:
        databases = {role: dump_database(db, staging) for role, db in state.databases().items()}
        suites = pack_store(state.artifacts, staging / EXPECTATIONS, prefix="expectations/")

        # Artifacts last: a superset of what the MLflow dump refers to.
        mode = artifacts_mode
        if mode == "auto":
            mode = (
                "listing" if state.artifacts.is_s3 and bucket_versioned(state.artifacts) else "copy"
            )
        if mode == "listing":
            if not state.artifacts.is_s3 or not bucket_versioned(state.artifacts):
                raise InputError("artifacts mode 'listing' needs a versioned S3 bucket")
            listing = list_versions(state.artifacts)
            write_json_gz(staging / ARTIFACTS_LISTING, listing)
            artifact_files = {o["key"]: o["size"] for o in listing}
        else:
            artifact_files = pack_store(state.artifacts, staging / ARTIFACTS_COPY)

        mlflow_db = databases.get("mlflow", {})
        champions = mlflow_db.get("champions", [])
        warnings: list[str] = []
        if record_champions and champions:
            samples = record_champion_samples(state.tracking_uri, champions)
            write_json_gz(staging / CHAMPIONS, samples)
            warnings += [
                f"champion {s['model']} v{s['version']} {s['reason']}: backed up, not checkable"
                for s in samples
                if s.get("failed")
            ]

        counts: dict[str, int] = {}
        for info in databases.values():
            counts.update(info.pop("counts", {}))
        counts["artifacts"] = len(artifact_files)
        counts["expectation_suites"] = len(suites)
        files = {
            p.name: {"sha256": sha256_of(p), "bytes": p.stat().st_size}
            for p in sorted(staging.iterdir())
        }
        manifest = {
            "format": FORMAT_VERSION,
            "id": backup_id,
            "kind": kind,
            "created_at": backup_time(backup_id).isoformat(),
            "platform": {
                "pynomaly": metadata.version("pynomaly"),
                "mlflow": mlflow.__version__,
            },
            "schema": {"mlflow_alembic_revision": mlflow_db.get("alembic_revision")},
            "databases": databases,
            "artifacts": {
                "mode": mode,
                "root_uri": artifact_root_uri(state.artifacts),
                "bytes": sum(artifact_files.values()),
            },
            "counts": counts,
            "champions": [{k: c[k] for k in ("model", "version")} for c in champions]
            if record_champions
            else [],
            "files": files,
            "warnings": warnings,
        }
        # Data first, then the signature, the manifest last: a backup without manifest.json
        # is incomplete, and a complete one always has its signature.
        for name in files:
            store.put_file(f"{backup_id}/{name}", staging / name)
        manifest["seconds"] = round(time.perf_counter() - started, 2)
        write_manifest(store, manifest, key)
    manifest["size_bytes"] = sum(f["bytes"] for f in manifest["files"].values())
    return manifest


def write_manifest(store: BackupStore, manifest: dict[str, Any], key: BackupKey) -> bytes:
    """Store a backup's signature, then its manifest (which marks it complete); the bytes."""
    body = json.dumps(manifest, indent=2, sort_keys=True).encode()
    store.put_bytes(f"{manifest['id']}/{SIGNATURE}", key.signature(body))
    store.put_bytes(f"{manifest['id']}/{MANIFEST}", body)
    return body


# List, verify, prune -------------------------------------------------------------------------


def _ids(store: BackupStore) -> dict[str, set[str]]:
    """backup id -> names of the files stored under it."""
    found: dict[str, set[str]] = {}
    for key in store.list():
        backup_id, _, name = key.partition("/")
        if name and "/" not in name:
            found.setdefault(backup_id, set()).add(name)
    return {i: names for i, names in found.items() if _is_id(i)}


def _is_id(text: str) -> bool:
    if not ID_PATTERN.fullmatch(text):
        return False
    try:
        backup_time(text)
    except InputError:
        return False
    return True


def check_id(backup_id: str) -> str:
    """A backup id, refused unless it is exactly one (it becomes part of every key read)."""
    if not _is_id(backup_id):
        raise InputError(f"{backup_id!r} is not a backup id (expected e.g. 20260101T020000Z-1a2b)")
    return backup_id


def check_member(name: Any, backup_id: str, what: str, prefix: str = "") -> str:
    """A relative path inside an archive or listing, checked before any path is built from it:
    no absolute path, no `..`, no backslash, nothing outside `prefix`."""
    parts = name.split("/") if isinstance(name, str) else []
    if (
        not parts
        or "\\" in name
        or name.startswith("/")
        or ":" in parts[0]
        or any(p in {"", ".", ".."} for p in parts)
        or any(ord(c) < 32 for c in name)
        or not name.startswith(prefix)
    ):
        where = f" under {prefix}" if prefix else ""
        raise InputError(f"backup {backup_id}: {what} holds {name!r}, not a relative path{where}")
    return name


def parse_manifest(body: bytes, backup_id: str) -> dict[str, Any]:
    """The manifest as data, with format, schema, names and sections checked (InputError)."""
    bad = f"backup {backup_id}: {MANIFEST}"
    try:
        manifest = json.loads(body)
    except ValueError:
        raise InputError(f"{bad} is not JSON") from None
    if not isinstance(manifest, dict):
        raise InputError(f"{bad} is not a JSON object")
    fmt = manifest.get("format")
    if fmt is None:
        raise InputError(f"{bad} has no format")
    if type(fmt) is not int or fmt not in READABLE_FORMATS:
        raise InputError(
            f"{bad} has format {fmt!r}; this Pynomaly reads formats "
            f"{', '.join(map(str, READABLE_FORMATS))} (use the version that made it)"
        )
    schema = manifest.get("schema")
    if not isinstance(schema, dict) or "mlflow_alembic_revision" not in schema:
        raise InputError(f"{bad} has no schema (mlflow_alembic_revision)")
    if not isinstance(schema["mlflow_alembic_revision"], str | None):
        raise InputError(f"{bad}: schema.mlflow_alembic_revision is not a revision")
    if manifest.get("id") != backup_id:
        raise InputError(f"{bad} belongs to backup {manifest.get('id')!r}")
    for section, kind in (
        ("created_at", str),
        ("counts", dict),
        ("files", dict),
        ("databases", dict),
        ("artifacts", dict),
        ("champions", list),
        ("platform", dict),
    ):
        if not isinstance(manifest.get(section), kind):
            raise InputError(f"{bad} has no valid {section}")
    files = manifest["files"]
    for name, info in files.items():
        if name not in BACKUP_FILES:
            raise InputError(f"{bad} names {name!r}, which is not a backup file")
        if not (
            isinstance(info, dict)
            and isinstance(info.get("sha256"), str)
            and type(info.get("bytes")) is int
        ):
            raise InputError(f"{bad}: {name} has no sha256 and size")
    for role, info in manifest["databases"].items():
        if role not in DB_ROLES or not isinstance(info, dict):
            raise InputError(f"{bad} holds an unknown database {role!r}")
        if info.get("absent"):
            continue
        kind = info.get("kind")
        if kind not in DB_FILES or info.get("file") != DB_FILES[kind].format(role=role):
            raise InputError(f"{bad}: the {role} database names {info.get('file')!r}")
        if info["file"] not in files:
            raise InputError(f"{bad}: the {role} database's {info['file']} is not listed")
    mode = manifest["artifacts"].get("mode")
    archive = {"copy": ARTIFACTS_COPY, "listing": ARTIFACTS_LISTING}.get(mode)
    if archive is None or archive not in files or EXPECTATIONS not in files:
        raise InputError(f"{bad}: artifacts mode {mode!r} without its files")
    if not isinstance(manifest["artifacts"].get("root_uri"), str):
        raise InputError(f"{bad}: artifacts have no root_uri")
    return manifest


def read_manifest(
    store: BackupStore,
    backup_id: str,
    key: BackupKey | None,
    *,
    trust_unsigned: bool = False,
) -> dict[str, Any]:
    """A backup's manifest, authenticated by its signature, then checked (InputError).

    Refuses, before anything else of the backup is read: a missing or wrong signature, a
    signature no key here can check, and (unless `trust_unsigned`) an unsigned backup.
    """
    check_id(backup_id)
    key_ = f"{backup_id}/{MANIFEST}"
    if not store.exists(key_):
        raise InputError(f"backup {backup_id} not found in {store.root} (or it is incomplete)")
    body = store.get_bytes(key_)
    sig_key, sum_key = f"{backup_id}/{SIGNATURE}", f"{backup_id}/{MANIFEST_SUM}"
    signature = store.get_bytes(sig_key) if store.exists(sig_key) else None
    legacy = store.get_bytes(sum_key) if signature is None and store.exists(sum_key) else None
    status, problem = signature_status(body, signature, key, legacy)
    if status == "unchecked":
        raise InputError(
            f"backup {backup_id} is signed but there is no backup key here: set {KEY_ENV} "
            "to the key that signed it"
        )
    if status == "unsigned" and not trust_unsigned:
        raise InputError(
            f"backup {backup_id} is {problem}: refused (restore --trust-unsigned takes it "
            "if you know where it came from)"
        )
    if status not in {"ok", "unsigned"}:
        raise InputError(f"backup {backup_id} is refused: {problem}")
    manifest = parse_manifest(body, backup_id)
    manifest["signed"] = status == "ok"
    return manifest


def inspect_backup(store: BackupStore, backup_id: str, key: BackupKey | None) -> dict[str, Any]:
    """One backup's summary with its status; a bad backup is described, never raised."""
    row: dict[str, Any] = {"id": backup_id, "status": "unreadable", "problem": None}
    row |= {"created_at": backup_time(backup_id).isoformat(), "kind": None, "size_bytes": None}
    row |= {"counts": {}, "warnings": []}
    try:
        body = store.get_bytes(f"{backup_id}/{MANIFEST}")
        names = {k.rpartition("/")[2] for k in store.list(f"{backup_id}/")}
        signature = store.get_bytes(f"{backup_id}/{SIGNATURE}") if SIGNATURE in names else None
        legacy = None
        if signature is None and MANIFEST_SUM in names:
            legacy = store.get_bytes(f"{backup_id}/{MANIFEST_SUM}")
        status, problem = signature_status(body, signature, key, legacy)
        if status in {"ok", "unchecked", "unsigned"}:
            try:
                manifest = parse_manifest(body, backup_id)
            except InputError as exc:
                status, problem = "malformed", str(exc).removeprefix(f"backup {backup_id}: ")
            else:
                row |= {
                    "created_at": manifest["created_at"],
                    "kind": manifest.get("kind"),
                    "size_bytes": sum(f["bytes"] for f in manifest["files"].values()),
                    "counts": manifest["counts"],
                    "warnings": manifest.get("warnings", []),
                }
        row |= {"status": status, "problem": problem}
    except Exception as exc:  # noqa: BLE001 - one unreadable backup is reported, not fatal
        row["problem"] = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0]}"
    return row


def list_backups(store: BackupStore, key: BackupKey | None = None) -> list[dict[str, Any]]:
    """Complete backups (those with a manifest), newest first, each with its status.

    Without a key, signed backups show as "unchecked": their signature is not verified.
    """
    return [
        inspect_backup(store, backup_id, key)
        for backup_id, names in sorted(_ids(store).items(), reverse=True)
        if MANIFEST in names
    ]


def resolve_backup_id(store: BackupStore, backup_id: str) -> str:
    """`latest` -> the newest complete backup's id; other ids as given (checked)."""
    if backup_id != "latest":
        return check_id(backup_id)
    complete = sorted(i for i, names in _ids(store).items() if MANIFEST in names)
    if not complete:
        raise InputError(f"no backups in {store.root}")
    return complete[-1]


def archive_members(path: Path, backup_id: str, prefix: str = "") -> dict[str, int]:
    """name -> size of the files in a backup's tar.gz, every member checked (InputError):
    regular files and folders only, each a relative path under `prefix`."""
    found: dict[str, int] = {}
    try:
        with tarfile.open(path, "r:gz") as tar:
            for member in tar.getmembers():
                check_member(member.name, backup_id, path.name, prefix)
                if member.isdir():
                    continue
                if not member.isfile():
                    raise InputError(
                        f"backup {backup_id}: {path.name} holds {member.name!r}, "
                        "which is not a regular file"
                    )
                found[member.name] = member.size
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise InputError(
            f"backup {backup_id}: {path.name} is not a readable archive: {exc}"
        ) from None
    return found


def check_staged(manifest: dict[str, Any], folder: Path) -> dict[str, Any]:
    """Read every verified file's content list and check it (names, types) before any of it is
    written anywhere; what they hold: {artifacts, suites, listing, champions}."""
    backup_id = manifest["id"]
    staged: dict[str, Any] = {
        "suites": archive_members(folder / EXPECTATIONS, backup_id, "expectations/")
    }
    if manifest["artifacts"]["mode"] == "listing":
        listing = read_json_gz(folder / ARTIFACTS_LISTING)
        if not isinstance(listing, list):
            raise InputError(f"backup {backup_id}: {ARTIFACTS_LISTING} is not a listing")
        for obj in listing:
            if not (
                isinstance(obj, dict)
                and type(obj.get("size")) is int
                and isinstance(obj.get("version_id"), str)
            ):
                raise InputError(f"backup {backup_id}: {ARTIFACTS_LISTING} has a bad entry")
            check_member(obj.get("key"), backup_id, ARTIFACTS_LISTING)
        staged["listing"] = listing
        staged["artifacts"] = {o["key"]: o["size"] for o in listing}
    else:
        staged["artifacts"] = archive_members(folder / ARTIFACTS_COPY, backup_id)
    champions = read_json_gz(folder / CHAMPIONS) if CHAMPIONS in manifest["files"] else []
    if not isinstance(champions, list) or not all(
        isinstance(c, dict)
        and isinstance(c.get("model"), str)
        and type(c.get("version")) is int
        and isinstance(c.get("sample"), dict | None)
        for c in champions
    ):
        raise InputError(f"backup {backup_id}: {CHAMPIONS} is not a list of champion samples")
    staged["champions"] = champions
    return staged


def verify_backup(
    store: BackupStore,
    backup_id: str,
    folder: Path,
    key: BackupKey | None,
    *,
    trust_unsigned: bool = False,
) -> dict[str, Any]:
    """Authenticate a backup's manifest, fetch every file into `folder`, check its sha256 and
    what the archives hold; the manifest.

    A missing or wrong signature, an unknown format, a bad name, or any missing, truncated or
    altered file is an InputError naming it; nothing is unpacked or loaded here.
    """
    manifest = read_manifest(store, backup_id, key, trust_unsigned=trust_unsigned)
    folder.mkdir(parents=True, exist_ok=True)
    for name, expected in sorted(manifest["files"].items()):
        key_ = f"{backup_id}/{name}"
        if not store.exists(key_):
            raise InputError(f"backup {backup_id}: {name} is missing")
        path = store.download(key_, folder / name)  # a name from BACKUP_FILES: no traversal
        size, digest = path.stat().st_size, sha256_of(path)
        if digest != expected["sha256"]:
            raise InputError(
                f"backup {backup_id}: {name} is corrupted (sha256 {digest[:12]}…, expected "
                f"{expected['sha256'][:12]}…; {size} bytes, expected {expected['bytes']})"
            )
    try:
        check_staged(manifest, folder)
    except (ValueError, OSError, EOFError) as exc:
        if isinstance(exc, InputError):
            raise
        raise InputError(f"backup {backup_id}: a file does not read back: {exc}") from None
    return manifest


def prune_backups(
    store: BackupStore,
    *,
    keep_last: int,
    keep_daily_days: int,
    keep_weekly_weeks: int,
    now: datetime | None = None,
    dry_run: bool = False,
) -> dict[str, list[str]]:
    """Delete the backups retention does not keep (and failed, incomplete ones)."""
    now = now or datetime.now(UTC)
    found = _ids(store)
    complete = {i: backup_time(i) for i, names in found.items() if MANIFEST in names}
    keep = select_retained(complete, now, keep_last, keep_daily_days, keep_weekly_weeks)
    stale = [
        i
        for i, names in found.items()
        if MANIFEST not in names and now - backup_time(i) > INCOMPLETE_GRACE
    ]
    delete = sorted(set(complete) - keep) + sorted(stale)
    if not dry_run:
        for backup_id in delete:
            store.delete_prefix(f"{backup_id}/")
    return {"kept": sorted(keep, reverse=True), "deleted": delete}


# Restore -------------------------------------------------------------------------------------


def check_restored(state: PlatformState, manifest: dict[str, Any], folder: Path) -> dict[str, Any]:
    """Compare the restored state with the manifest: counts, artifacts, champion scores."""
    expected = manifest["counts"]
    found: dict[str, int] = {}
    for role, info in manifest["databases"].items():
        db = state.databases().get(role)
        if db is not None and not info.get("absent"):
            found.update(read_counts(db)["counts"])
    # Files count when they are back with the size they had.
    restored = store_objects(state.artifacts)
    staged = check_staged(manifest, folder)
    wanted = staged["artifacts"]
    found["artifacts"] = sum(1 for k, size in wanted.items() if restored.get(k) == size)
    suites = staged["suites"]
    found["expectation_suites"] = sum(1 for k, size in suites.items() if restored.get(k) == size)
    problems = [
        f"{name}: backup has {value}, restored state has {found.get(name)}"
        for name, value in sorted(expected.items())
        if found.get(name) != value
    ]
    samples = staged["champions"]
    problems += check_champion_samples(state.tracking_uri, samples)
    return {
        "counts": found,
        "champions_checked": sum(1 for s in samples if s.get("sample") is not None),
        "problems": problems,
    }


def _check_schema(manifest: dict[str, Any]) -> bool:
    """Whether the backup's MLflow schema needs migrating; refuses one newer than this MLflow."""
    revision = manifest["schema"].get("mlflow_alembic_revision")
    if revision is None:
        return False
    if revision not in known_mlflow_revisions():
        raise InputError(
            f"backup {manifest['id']} has MLflow schema {revision}, unknown to MLflow here "
            f"(made by MLflow {manifest['platform']['mlflow']}); restore with that version"
        )
    return revision != mlflow_head_revision()


def check_applicable(state: PlatformState, manifest: dict[str, Any]) -> bool:
    """Refuse, before anything is written, a backup this state cannot take: a database the
    platform lacks or of another kind, S3 versions into a local store, a newer MLflow schema.
    Whether the MLflow schema needs migrating."""
    dbs = state.databases()
    for role, info in manifest["databases"].items():
        if info.get("absent"):
            continue
        if role not in dbs:
            raise InputError(f"the backup holds a {role} database the platform is not set up for")
        if info["kind"] != dbs[role].kind:
            raise InputError(
                f"the backup holds a {info['kind']} {role} database but the platform uses "
                f"{dbs[role].kind}"
            )
    if manifest["artifacts"]["mode"] == "listing" and not state.artifacts.is_s3:
        raise InputError("the backup lists S3 object versions but the artifact store is local")
    return _check_schema(manifest)


def apply_backup(state: PlatformState, manifest: dict[str, Any], folder: Path) -> dict[str, Any]:
    """Write verified, staged backup files over a state: databases, artifacts, suites,
    migrations (everything checkable is checked first)."""
    migrate = check_applicable(state, manifest)
    staged = check_staged(manifest, folder)
    dbs = state.databases()
    restored = []
    for role, info in manifest["databases"].items():
        if info.get("absent"):
            continue
        restore_database(dbs[role], folder / info["file"], info["kind"])
        restored.append(role)
    report: dict[str, Any] = {"databases": restored}
    if manifest["artifacts"]["mode"] == "listing":
        report["artifact_versions_restored"] = restore_versions(state.artifacts, staged["listing"])
    else:
        report["artifacts_written"] = len(unpack_into(state.artifacts, folder / ARTIFACTS_COPY))
    report["expectation_suites_written"] = len(unpack_into(state.artifacts, folder / EXPECTATIONS))
    if migrate and "mlflow" in restored:
        upgrade_mlflow_schema(state.mlflow.url)
        report["mlflow_schema_upgraded"] = (
            f"{manifest['schema']['mlflow_alembic_revision']} -> {mlflow_head_revision()}"
        )
    return report


def restore_backup(
    state: PlatformState,
    store: BackupStore,
    backup_id: str = "latest",
    *,
    key: BackupKey | None,
    trust_unsigned: bool = False,
    safety_backup: bool = True,
    work_dir: Path | None = None,
) -> dict[str, Any]:
    """Verify a backup, back up the current state, restore over it and check the result.

    Everything is authenticated, fetched, checksummed and checked in a staging folder (removed
    on every exit) before any live database or artifact is written. An unsigned backup is
    refused unless `trust_unsigned`.
    """
    started = time.perf_counter()
    backup_id = resolve_backup_id(store, backup_id)
    if safety_backup and key is None:
        raise InputError(
            f"restoring backup {backup_id} backs up the current state first, signed: set {KEY_ENV}"
        )
    with staging_folder("pynomaly-restore-", work_dir or state.staging) as folder:
        # Refuses before touching anything: signature, format, names, checksums, archives.
        manifest = verify_backup(store, backup_id, folder, key, trust_unsigned=trust_unsigned)
        check_applicable(state, manifest)
        report: dict[str, Any] = {"id": backup_id, "signed": manifest["signed"]}
        if safety_backup:
            before = create_backup(
                state,
                store,
                key=key,
                kind="pre-restore",
                record_champions=False,
                work_dir=work_dir,
            )
            report["pre_restore_backup"] = before["id"]
        report.update(apply_backup(state, manifest, folder))
        report["verification"] = check_restored(state, manifest, folder)
    report["seconds"] = round(time.perf_counter() - started, 2)
    problems = report["verification"]["problems"]
    if problems:
        raise InputError(
            f"restored backup {backup_id} but it does not check out: " + "; ".join(problems)
        )
    return report


# Drill ---------------------------------------------------------------------------------------


def scratch_state(state: PlatformState, folder: Path, token: str) -> PlatformState:
    """A state of the same kinds as `state`, in scratch files and databases."""

    def scratch(db: Database | None) -> Database | None:
        if db is None:
            return None
        if db.kind == "sqlite":
            return Database(db.role, f"sqlite:///{folder / (db.role + '.db')}")
        url = sa.make_url(db.url)
        name = f"{url.database}_drill_{token}"[-63:]
        return Database(db.role, url.set(database=name).render_as_string(hide_password=False))

    return PlatformState(
        mlflow=scratch(state.mlflow),
        results=scratch(state.results),
        artifacts=ArtifactStore(str(folder / "artifacts")),
        optuna=scratch(state.optuna),
        prefect=scratch(state.prefect),
    )


def rewrite_artifact_root(db: Database, old: str, new: str) -> int:
    """Point the MLflow DB's artifact locations under `old` at `new`; rows changed."""
    engine = sa.create_engine(db.url, poolclass=sa.NullPool)
    changed = 0
    try:
        with engine.begin() as conn:
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
    finally:
        engine.dispose()
    return changed


def drill_restore(
    state: PlatformState,
    store: BackupStore,
    backup_id: str = "latest",
    *,
    key: BackupKey | None,
    work_dir: Path | None = None,
) -> dict[str, Any]:
    """Restore a backup into scratch databases and folders, check it, and clean up.

    Only a backup whose signature checks out under `key` is restored (its champions are
    loaded, so unpickled); live state is only read (a listing-mode backup fetches its S3
    object versions).
    """
    started = time.perf_counter()
    backup_id = resolve_backup_id(store, backup_id)
    token = secrets.token_hex(3)
    with staging_folder("pynomaly-drill-", work_dir or state.staging) as folder:
        scratch = scratch_state(state, folder / "state", token)
        (folder / "state").mkdir()
        pg_scratch = [d for d in scratch.databases().values() if d.kind == "postgresql"]
        try:
            manifest = verify_backup(store, backup_id, folder / "backup", key)
            listing_mode = manifest["artifacts"]["mode"] == "listing"
            drill_manifest = manifest
            if listing_mode:
                # The scratch store is a folder: fetch the recorded versions into it instead.
                download_versions(
                    state.artifacts,
                    read_json_gz(folder / "backup" / ARTIFACTS_LISTING),
                    Path(scratch.artifacts.root),
                )
                drill_manifest = {**manifest, "artifacts": {**manifest["artifacts"]}}
                drill_manifest["artifacts"]["mode"] = "copy"
                pack_store(scratch.artifacts, folder / "backup" / ARTIFACTS_COPY)
            report = apply_backup(scratch, drill_manifest, folder / "backup")
            if state.server_uri:
                # The server stores mlflow-artifacts:/<path> for <artifact root>/mlflow/<path>
                # (`services up` and the compose file serve artifacts from there).
                rewrite_artifact_root(
                    scratch.mlflow,
                    "mlflow-artifacts:",
                    artifact_root_uri(scratch.artifacts).rstrip("/") + "/mlflow",
                )
            report["artifact_locations_rewritten"] = rewrite_artifact_root(
                scratch.mlflow,
                manifest["artifacts"]["root_uri"],
                artifact_root_uri(scratch.artifacts),
            )
            report["verification"] = check_restored(scratch, drill_manifest, folder / "backup")
        finally:
            for db in pg_scratch:
                drop_pg_database(db.url)
    report.update({"id": backup_id, "seconds": round(time.perf_counter() - started, 2)})
    problems = report["verification"]["problems"]
    if problems:
        raise InputError(f"restore drill of backup {backup_id} failed: " + "; ".join(problems))
    return report
