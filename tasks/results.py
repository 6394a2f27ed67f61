"""The results database: `detection_results`, written idempotently per batch id."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable
from datetime import datetime

import pandas as pd
import sqlalchemy as sa

metadata = sa.MetaData()

detection_results = sa.Table(
    "detection_results",
    metadata,
    sa.Column("batch_id", sa.String(128), primary_key=True),
    sa.Column("row_index", sa.BigInteger, primary_key=True),
    sa.Column("score", sa.Float, nullable=False),
    sa.Column("is_anomaly", sa.Boolean, nullable=False),
    sa.Column("model_name", sa.String(200), nullable=False),
    sa.Column("model_version", sa.Integer, nullable=False),
    sa.Column("scored_at", sa.DateTime(timezone=True), nullable=False),
    sa.Index("ix_detection_results_model", "model_name", "model_version"),
    sa.Index("ix_detection_results_scored_at", "scored_at"),
)

COLUMNS = [c.name for c in detection_results.columns]


def results_engine(url: str) -> sa.Engine:
    """An engine on the results DB with the table created if missing."""
    engine = sa.create_engine(url, pool_pre_ping=True)
    metadata.create_all(engine, checkfirst=True)
    return engine


def _copy_rows(conn: sa.Connection, frame: pd.DataFrame) -> None:
    """PostgreSQL bulk load through COPY on the transaction's own connection."""
    buf = io.StringIO()
    frame[COLUMNS].to_csv(buf, index=False, header=False, quoting=csv.QUOTE_MINIMAL)
    statement = f"COPY detection_results ({', '.join(COLUMNS)}) FROM STDIN WITH CSV"
    cursor = conn.connection.driver_connection.cursor()
    if hasattr(cursor, "copy_expert"):  # psycopg2
        buf.seek(0)
        cursor.copy_expert(statement, buf)
    else:  # psycopg 3 (SQLAlchemy's default driver for postgresql://)
        with cursor.copy(statement) as copy:
            copy.write(buf.getvalue())


def replace_batch(
    engine: sa.Engine,
    batch_id: str,
    chunks: Iterable[pd.DataFrame],
    *,
    model_name: str,
    model_version: int,
    scored_at: datetime,
) -> int:
    """Replace every row of a batch in one transaction; a failure leaves the old rows intact.

    `chunks` are frames with a `row_index`, `score` and `is_anomaly` column; they are consumed
    inside the transaction, so chunked scoring streams straight into the table.
    """
    written = 0
    postgres = engine.dialect.name == "postgresql"
    with engine.begin() as conn:
        conn.execute(sa.delete(detection_results).where(detection_results.c.batch_id == batch_id))
        for chunk in chunks:
            frame = chunk.assign(
                batch_id=batch_id,
                model_name=model_name,
                model_version=int(model_version),
                scored_at=scored_at,
            )
            if postgres:
                _copy_rows(conn, frame)
            else:
                conn.execute(sa.insert(detection_results), frame[COLUMNS].to_dict("records"))
            written += len(frame)
    return written


def batch_counts(engine: sa.Engine, batch_id: str) -> tuple[int, int]:
    """(rows, anomalies) stored for a batch."""
    t = detection_results
    with engine.connect() as conn:
        rows, anomalies = conn.execute(
            sa.select(
                sa.func.count(),
                sa.func.coalesce(sa.func.sum(sa.cast(t.c.is_anomaly, sa.Integer)), 0),
            ).where(t.c.batch_id == batch_id)
        ).one()
    return int(rows), int(anomalies)
