"""The results database: `detection_results`, written idempotently per batch and model version.

Rows are keyed by (batch_id, model_name, model_version, row_index): scoring a batch replaces only
that model version's rows, so a champion and a challenger scored on the same batch both keep
theirs. Beside the rows, `detection_batches` keeps one summary row per batch and model version
(row and anomaly counts, scored_at), written in the same transaction. Monitoring reads the
summaries, so a metrics scrape costs one row per batch, not a scan of every scored row.
A results DB written before this key (batch_id, row_index) is migrated in place when opened.
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pandas as pd
import sqlalchemy as sa

from pynomaly.errors import InputError

metadata = sa.MetaData()

detection_results = sa.Table(
    "detection_results",
    metadata,
    sa.Column("batch_id", sa.String(128), nullable=False),
    sa.Column("row_index", sa.BigInteger, nullable=False),
    sa.Column("score", sa.Float, nullable=False),
    sa.Column("is_anomaly", sa.Boolean, nullable=False),
    sa.Column("model_name", sa.String(200), nullable=False),
    sa.Column("model_version", sa.Integer, nullable=False),
    sa.Column("scored_at", sa.DateTime(timezone=True), nullable=False),
    # The model version is part of the key: no scoring by one version touches another's rows.
    sa.PrimaryKeyConstraint(
        "batch_id", "model_name", "model_version", "row_index", name="detection_results_pkey"
    ),
    sa.Index("ix_detection_results_model", "model_name", "model_version"),
    sa.Index("ix_detection_results_scored_at", "scored_at"),
)

detection_batches = sa.Table(
    "detection_batches",
    metadata,
    sa.Column("batch_id", sa.String(128), nullable=False),
    sa.Column("model_name", sa.String(200), nullable=False),
    sa.Column("model_version", sa.Integer, nullable=False),
    sa.Column("row_count", sa.BigInteger, nullable=False),
    sa.Column("anomaly_count", sa.BigInteger, nullable=False),
    sa.Column("scored_at", sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint(
        "batch_id", "model_name", "model_version", name="detection_batches_pkey"
    ),
    sa.Index("ix_detection_batches_model", "model_name", "model_version"),
    sa.Index("ix_detection_batches_scored_at", "scored_at"),
)

# The batch id column's width: checked before scoring, so SQLite (which ignores widths) and
# PostgreSQL (which refuses longer values) both refuse a longer id the same way, up front.
BATCH_ID_MAX = detection_results.c.batch_id.type.length


def check_batch_id(batch_id: str | None) -> str | None:
    """A batch id that fits the results tables: 1-128 printable characters (None: the default)."""
    if batch_id is None:
        return None
    shown = repr(batch_id[:40]) + ("..." if len(batch_id) > 40 else "")
    if not batch_id.strip():
        raise InputError(f"--batch-id {shown}: is empty (omit it to use the batch's content hash)")
    if len(batch_id) > BATCH_ID_MAX:
        raise InputError(
            f"--batch-id {shown}: {len(batch_id)} characters, at most {BATCH_ID_MAX} fit"
        )
    if not batch_id.isprintable():
        raise InputError(f"--batch-id {shown}: holds a line break or control character")
    return batch_id


# Anomalies among detection_results rows (0, not NULL, over no rows).
ANOMALY_COUNT = sa.func.coalesce(
    sa.func.sum(sa.cast(detection_results.c.is_anomaly, sa.Integer)), 0
)


def summarised_rows() -> sa.Select:
    """detection_results grouped per batch and model version, in detection_batches' columns."""
    t = detection_results
    return sa.select(
        t.c.batch_id,
        t.c.model_name,
        t.c.model_version,
        sa.func.count().label("row_count"),
        ANOMALY_COUNT.label("anomaly_count"),
        sa.func.max(t.c.scored_at).label("scored_at"),
    ).group_by(t.c.batch_id, t.c.model_name, t.c.model_version)


def backfill_batches(engine: sa.Engine) -> int:
    """Summarise the batches of a results DB written before detection_batches existed.

    Runs when the summaries are empty but rows exist (an upgrade, or a restored older backup);
    returns the number of batches summarised.
    """
    with engine.begin() as conn:
        if conn.execute(sa.select(detection_batches.c.batch_id).limit(1)).first() is not None:
            return 0
        if conn.execute(sa.select(detection_results.c.batch_id).limit(1)).first() is None:
            return 0
        summary = summarised_rows().subquery()
        conn.execute(
            sa.insert(detection_batches).from_select(
                [c.name for c in detection_batches.columns], sa.select(summary)
            )
        )
        return int(conn.execute(sa.select(sa.func.count()).select_from(detection_batches)).scalar())


# Migration of results DBs keyed by batch_id alone ----------------------------------------------


def _key(table: sa.Table) -> list[str]:
    return [c.name for c in table.primary_key.columns]


def outdated_tables(conn: sa.Connection) -> list[sa.Table]:
    """The result tables whose stored primary key is not this module's (e.g. batch_id only)."""
    inspector = sa.inspect(conn)
    return [
        t
        for t in (detection_results, detection_batches)
        if inspector.has_table(t.name)
        and inspector.get_pk_constraint(t.name)["constrained_columns"] != _key(t)
    ]


def _rebuild_sqlite_table(conn: sa.Connection, table: sa.Table) -> None:
    """SQLite cannot alter a primary key: copy into a new table, swap names, rebuild indexes."""
    quote = conn.dialect.identifier_preparer.quote
    new = table.to_metadata(sa.MetaData(), name=f"{table.name}_migrating")
    new.indexes.clear()  # index names are global in SQLite: they are made after the swap
    before = conn.execute(sa.select(sa.func.count()).select_from(table)).scalar()
    new.create(conn)
    names = [c.name for c in table.columns]
    conn.execute(sa.insert(new).from_select(names, sa.select(*[table.c[n] for n in names])))
    copied = conn.execute(sa.select(sa.func.count()).select_from(new)).scalar()
    if copied != before:
        raise RuntimeError(f"migrating {table.name}: copied {copied} of {before} rows")
    conn.exec_driver_sql(f"DROP TABLE {quote(table.name)}")
    conn.exec_driver_sql(f"ALTER TABLE {quote(new.name)} RENAME TO {quote(table.name)}")
    for index in table.indexes:
        index.create(conn)


def _alter_postgres_key(conn: sa.Connection, table: sa.Table) -> None:
    """Swap the primary key in place (the rows stay where they are)."""
    quote = conn.dialect.identifier_preparer.quote
    old = sa.inspect(conn).get_pk_constraint(table.name)["name"]
    if old:
        conn.exec_driver_sql(f"ALTER TABLE {quote(table.name)} DROP CONSTRAINT {quote(old)}")
    columns = ", ".join(quote(n) for n in _key(table))
    conn.exec_driver_sql(
        f"ALTER TABLE {quote(table.name)} ADD CONSTRAINT "
        f"{quote(table.primary_key.name)} PRIMARY KEY ({columns})"
    )


def migrate_results_key(engine: sa.Engine) -> list[str]:
    """Re-key result tables of an older DB by model version too, in place, in one transaction.

    Idempotent (an up-to-date DB costs one catalog read) and safe against a concurrent opener:
    the check is repeated under the write lock. Every row is kept. Returns the tables migrated.
    """
    with engine.connect() as conn:
        if not outdated_tables(conn):
            return []
    if engine.dialect.name == "sqlite":
        with engine.connect() as conn:
            # pysqlite does not put DDL in a transaction by itself: BEGIN explicitly.
            conn = conn.execution_options(isolation_level="AUTOCOMMIT")
            conn.exec_driver_sql("BEGIN IMMEDIATE")
            try:
                tables = outdated_tables(conn)
                for table in tables:
                    _rebuild_sqlite_table(conn, table)
            except BaseException:
                conn.exec_driver_sql("ROLLBACK")
                raise
            conn.exec_driver_sql("COMMIT")
        return [t.name for t in tables]
    if engine.dialect.name != "postgresql":
        raise RuntimeError(
            f"results DB on {engine.dialect.name}: only SQLite and PostgreSQL can be migrated"
        )
    with engine.begin() as conn:
        quote = conn.dialect.identifier_preparer.quote
        names = [quote(t.name) for t in outdated_tables(conn)]
        if not names:  # another opener migrated them meanwhile
            return []
        conn.exec_driver_sql(f"LOCK TABLE {', '.join(names)} IN ACCESS EXCLUSIVE MODE")
        tables = outdated_tables(conn)
        for table in tables:
            _alter_postgres_key(conn, table)
    return [t.name for t in tables]


def results_engine(url: str) -> sa.Engine:
    """An engine on the results DB: tables created if missing, an older DB migrated in place,
    summaries backfilled."""
    engine = sa.create_engine(url, pool_pre_ping=True)
    metadata.create_all(engine, checkfirst=True)
    migrate_results_key(engine)
    backfill_batches(engine)
    return engine


# The batch's constant columns first: each chunk then sends only row_index, score, is_anomaly.
KEY_COLUMNS = ["batch_id", "model_name", "model_version", "scored_at"]
INSERT_ORDER = [*KEY_COLUMNS, "row_index", "score", "is_anomaly"]


def _chunk_rows(chunk: pd.DataFrame) -> Iterator[tuple[int, float, bool]]:
    """(row_index, score, is_anomaly) of a scored chunk as Python values."""
    return zip(
        chunk["row_index"].to_numpy(dtype=np.int64).tolist(),
        chunk["score"].to_numpy(dtype=np.float64).tolist(),
        chunk["is_anomaly"].to_numpy(dtype=bool).tolist(),
        strict=True,
    )


def _copy_csv(chunk: pd.DataFrame, key: list[Any]) -> Any:
    """A chunk as CSV for COPY, the batch key repeated on every row, written by Arrow's CSV
    writer (C++; shortest round-trip floats, so scores are exact; strings quoted)."""
    import pyarrow as pa
    import pyarrow.csv as pa_csv

    n = len(chunk)
    columns = {
        name: pa.repeat(pa.scalar(value), n) for name, value in zip(KEY_COLUMNS, key, strict=True)
    }
    table = pa.table(
        {
            **columns,
            "row_index": chunk["row_index"].to_numpy(dtype=np.int64),
            "score": chunk["score"].to_numpy(dtype=np.float64),
            "is_anomaly": chunk["is_anomaly"].to_numpy(dtype=bool),
        }
    )
    out = pa.BufferOutputStream()
    pa_csv.write_csv(table, out, pa_csv.WriteOptions(include_header=False))
    return out.getvalue()


def _write_postgres(
    conn: sa.Connection, key: list[Any], chunks: Iterable[pd.DataFrame]
) -> Iterator[pd.DataFrame]:
    """Stream chunks into detection_results by COPY on the transaction's own connection: each
    chunk goes as CSV and is let go. psycopg 3 (SQLAlchemy's default driver for
    postgresql://) keeps one COPY open; psycopg2 runs one COPY per chunk."""
    statement = f"COPY detection_results ({', '.join(INSERT_ORDER)}) FROM STDIN WITH (FORMAT csv)"
    cursor = conn.connection.driver_connection.cursor()
    if hasattr(cursor, "copy_expert"):  # psycopg2
        for chunk in chunks:
            cursor.copy_expert(statement, io.BytesIO(_copy_csv(chunk, key).to_pybytes()))
            yield chunk
        return
    with cursor.copy(statement) as copy:
        for chunk in chunks:
            copy.write(memoryview(_copy_csv(chunk, key)))
            yield chunk


def _write_sqlite(
    conn: sa.Connection, key: tuple, chunks: Iterable[pd.DataFrame]
) -> Iterator[pd.DataFrame]:
    """Chunks into detection_results as one executemany of plain tuples each (no dicts)."""
    marks = ", ".join("?" * len(INSERT_ORDER))
    statement = f"INSERT INTO detection_results ({', '.join(INSERT_ORDER)}) VALUES ({marks})"
    for chunk in chunks:
        conn.exec_driver_sql(statement, [(*key, i, s, int(a)) for i, s, a in _chunk_rows(chunk)])
        yield chunk


def _bound_key(engine: sa.Engine, key: dict, scored_at: datetime) -> tuple:
    """The constant columns as the dialect stores them (SQLAlchemy's own bind processing, bound
    once: scored_at is text for SQLite here, not a datetime sqlite3 converts on every row)."""
    values = {**key, "scored_at": scored_at}
    bound = []
    for name in KEY_COLUMNS:
        column_type = detection_results.c[name].type.dialect_impl(engine.dialect)
        process = column_type.bind_processor(engine.dialect)
        bound.append(process(values[name]) if process else values[name])
    return tuple(bound)


def replace_batch(
    engine: sa.Engine,
    batch_id: str,
    chunks: Iterable[pd.DataFrame],
    *,
    model_name: str,
    model_version: int,
    scored_at: datetime,
) -> int:
    """Replace one model version's rows of a batch in one transaction; a failure leaves the old
    rows intact, and other models' or versions' rows of the batch are never touched.

    `chunks` are frames with a `row_index`, `score` and `is_anomaly` column; they are consumed
    inside the transaction, so chunked scoring streams straight into the table.
    """
    written = anomalies = 0
    postgres = engine.dialect.name == "postgresql"
    key = {"batch_id": batch_id, "model_name": model_name, "model_version": int(model_version)}
    with engine.begin() as conn:
        for table in (detection_results, detection_batches):
            conn.execute(sa.delete(table).where(_of(table, batch_id, model_name, model_version)))
        if postgres:
            values = [batch_id, model_name, int(model_version), scored_at.isoformat()]
            stored = _write_postgres(conn, values, chunks)
        else:
            stored = _write_sqlite(conn, _bound_key(engine, key, scored_at), chunks)
        # Each chunk is written, counted and let go: no more than one is held at a time.
        for chunk in stored:
            written += len(chunk)
            anomalies += int(chunk["is_anomaly"].astype(bool).sum())
        conn.execute(
            sa.insert(detection_batches).values(
                **key, row_count=written, anomaly_count=anomalies, scored_at=scored_at
            )
        )
    return written


def _of(table: sa.Table, batch_id: str, model_name: str, model_version: int) -> sa.ColumnElement:
    return sa.and_(
        table.c.batch_id == batch_id,
        table.c.model_name == model_name,
        table.c.model_version == int(model_version),
    )


def batch_counts(
    engine: sa.Engine, batch_id: str, *, model_name: str, model_version: int
) -> tuple[int, int]:
    """(rows, anomalies) one model version stored for a batch."""
    where = _of(detection_results, batch_id, model_name, model_version)
    with engine.connect() as conn:
        rows, anomalies = conn.execute(sa.select(sa.func.count(), ANOMALY_COUNT).where(where)).one()
    return int(rows), int(anomalies)


def read_batch(
    engine: sa.Engine, batch_id: str, *, model_name: str, model_version: int
) -> pd.DataFrame:
    """One model version's scored rows of a batch, in row order."""
    t = detection_results
    query = t.select().where(_of(t, batch_id, model_name, model_version)).order_by(t.c.row_index)
    with engine.connect() as conn:
        return pd.read_sql(query, conn)


def store_scores(
    results_url: str, batch_id: str, chunks: Iterable[pd.DataFrame], resolved: Any
) -> dict[str, Any]:
    """Write scored chunks of a batch into detection_results in one transaction (replacing that
    model version's rows of the batch), whether one process or Dask workers scored them."""
    engine = results_engine(results_url)
    key = {"model_name": resolved.name, "model_version": resolved.version}
    try:
        rows = replace_batch(engine, batch_id, chunks, **key, scored_at=datetime.now(UTC))
        stored, anomalies = batch_counts(engine, batch_id, **key)
    finally:
        engine.dispose()
    return {
        "model": resolved.name,
        "version": resolved.version,
        "alias": resolved.alias,
        "batch_id": batch_id,
        "rows_scored": rows,
        "rows_stored": stored,
        "anomalies": anomalies,
    }
