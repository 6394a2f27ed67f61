"""The results database: `detection_results`, written idempotently per batch id.

Beside the rows, `detection_batches` keeps one summary row per batch (model, version, row and
anomaly counts, scored_at), written in the same transaction. Monitoring reads the summaries, so
a metrics scrape costs one row per batch, not a scan of every scored row.
"""

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

detection_batches = sa.Table(
    "detection_batches",
    metadata,
    sa.Column("batch_id", sa.String(128), primary_key=True),
    sa.Column("model_name", sa.String(200), nullable=False),
    sa.Column("model_version", sa.Integer, nullable=False),
    sa.Column("row_count", sa.BigInteger, nullable=False),
    sa.Column("anomaly_count", sa.BigInteger, nullable=False),
    sa.Column("scored_at", sa.DateTime(timezone=True), nullable=False),
    sa.Index("ix_detection_batches_model", "model_name", "model_version"),
    sa.Index("ix_detection_batches_scored_at", "scored_at"),
)

COLUMNS = [c.name for c in detection_results.columns]


def summarised_rows() -> sa.Select:
    """detection_results grouped per batch, in detection_batches' columns (it was built so)."""
    t = detection_results
    return sa.select(
        t.c.batch_id,
        sa.func.min(t.c.model_name).label("model_name"),
        sa.func.min(t.c.model_version).label("model_version"),
        sa.func.count().label("row_count"),
        sa.func.coalesce(sa.func.sum(sa.cast(t.c.is_anomaly, sa.Integer)), 0).label(
            "anomaly_count"
        ),
        sa.func.max(t.c.scored_at).label("scored_at"),
    ).group_by(t.c.batch_id)


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


def results_engine(url: str) -> sa.Engine:
    """An engine on the results DB with the tables created (and summaries backfilled) if missing."""
    engine = sa.create_engine(url, pool_pre_ping=True)
    metadata.create_all(engine, checkfirst=True)
    backfill_batches(engine)
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
    written = anomalies = 0
    postgres = engine.dialect.name == "postgresql"
    with engine.begin() as conn:
        conn.execute(sa.delete(detection_results).where(detection_results.c.batch_id == batch_id))
        conn.execute(sa.delete(detection_batches).where(detection_batches.c.batch_id == batch_id))
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
            anomalies += int(frame["is_anomaly"].astype(bool).sum())
        conn.execute(
            sa.insert(detection_batches).values(
                batch_id=batch_id,
                model_name=model_name,
                model_version=int(model_version),
                row_count=written,
                anomaly_count=anomalies,
                scored_at=scored_at,
            )
        )
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
