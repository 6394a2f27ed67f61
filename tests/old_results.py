"""A results DB as releases before the model-version key wrote it, for the migration tests.

Shared by tests/unit/test_results.py (SQLite) and tests/integration/test_results_postgres.py
(PostgreSQL). The tables are the old definitions verbatim: detection_results keyed by
(batch_id, row_index), detection_batches by batch_id.
"""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa

old_metadata = sa.MetaData()

old_results = sa.Table(
    "detection_results",
    old_metadata,
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

old_batches = sa.Table(
    "detection_batches",
    old_metadata,
    sa.Column("batch_id", sa.String(128), primary_key=True),
    sa.Column("model_name", sa.String(200), nullable=False),
    sa.Column("model_version", sa.Integer, nullable=False),
    sa.Column("row_count", sa.BigInteger, nullable=False),
    sa.Column("anomaly_count", sa.BigInteger, nullable=False),
    sa.Column("scored_at", sa.DateTime(timezone=True), nullable=False),
    sa.Index("ix_detection_batches_model", "model_name", "model_version"),
    sa.Index("ix_detection_batches_scored_at", "scored_at"),
)

# batch -> (model, version, rows): one model version per batch, all the old key could hold.
OLD_BATCHES = {"b1": ("m1", 1, 300), "b2": ("m1", 2, 120), "b3": ("m2", 1, 45)}


def create_old_results_db(url: str, *, with_summaries: bool = True) -> pd.DataFrame:
    """Create the old tables at `url`, fill them, and return every row written (sorted)."""
    engine = sa.create_engine(url, poolclass=sa.NullPool)
    tables = [old_results, old_batches] if with_summaries else [old_results]
    old_metadata.create_all(engine, tables=tables)
    start = datetime(2026, 1, 1, tzinfo=UTC)
    frames = []
    for n, (batch, (model, version, rows)) in enumerate(OLD_BATCHES.items()):
        idx = np.arange(rows)
        frames.append(
            pd.DataFrame(
                {
                    "batch_id": batch,
                    "row_index": idx,
                    "score": np.sin(idx + n) * 3.0,
                    "is_anomaly": idx % 7 == n,
                    "model_name": model,
                    "model_version": version,
                    "scored_at": start + timedelta(hours=n),
                }
            )
        )
    rows = pd.concat(frames, ignore_index=True)
    with engine.begin() as conn:
        conn.execute(old_results.insert(), rows.to_dict("records"))
        if with_summaries:
            for batch, group in rows.groupby("batch_id"):
                conn.execute(
                    old_batches.insert().values(
                        batch_id=batch,
                        model_name=group.model_name.iloc[0],
                        model_version=int(group.model_version.iloc[0]),
                        row_count=len(group),
                        anomaly_count=int(group.is_anomaly.sum()),
                        scored_at=group.scored_at.max(),
                    )
                )
    engine.dispose()
    return sort_rows(rows)


def sort_rows(rows: pd.DataFrame) -> pd.DataFrame:
    """Rows in one comparable order and form (SQLite hands back naive UTC times)."""
    rows = rows[[c.name for c in old_results.columns]].copy()
    rows["scored_at"] = pd.to_datetime(rows["scored_at"], utc=True).astype("datetime64[us, UTC]")
    rows["is_anomaly"] = rows["is_anomaly"].astype(bool)
    rows["model_version"] = rows["model_version"].astype("int64")
    rows["row_index"] = rows["row_index"].astype("int64")
    return rows.sort_values(["batch_id", "model_name", "model_version", "row_index"]).reset_index(
        drop=True
    )


def read_rows(engine: sa.Engine) -> pd.DataFrame:
    """Every row of detection_results, in sort_rows' form."""
    with engine.connect() as conn:
        return sort_rows(pd.read_sql(sa.text("SELECT * FROM detection_results"), conn))


def expected_summaries(rows: pd.DataFrame) -> dict[tuple, tuple]:
    """{(batch, model, version): (rows, anomalies)} computed from the rows themselves."""
    grouped = rows.groupby(["batch_id", "model_name", "model_version"])
    return {(b, m, int(v)): (len(g), int(g.is_anomaly.sum())) for (b, m, v), g in grouped}


def primary_key(engine: sa.Engine, table: str) -> list[str]:
    return sa.inspect(engine).get_pk_constraint(table)["constrained_columns"]


def summaries(engine: sa.Engine) -> dict[tuple, tuple]:
    """detection_batches as {(batch, model, version): (rows, anomalies)}."""
    from tasks.results import detection_batches as b

    query = sa.select(
        b.c.batch_id, b.c.model_name, b.c.model_version, b.c.row_count, b.c.anomaly_count
    )
    with engine.connect() as conn:
        return {tuple(row[:3]): tuple(row[3:]) for row in conn.execute(query)}


def open_and_check_migrated(url: str, written: pd.DataFrame) -> sa.Engine:
    """Open an old-keyed results DB through results_engine; check the new keys and every row."""
    from tasks.results import results_engine

    plain = sa.create_engine(url)
    assert primary_key(plain, "detection_results") == ["batch_id", "row_index"]
    plain.dispose()

    engine = results_engine(url)
    assert primary_key(engine, "detection_results") == [
        "batch_id",
        "model_name",
        "model_version",
        "row_index",
    ]
    assert primary_key(engine, "detection_batches") == ["batch_id", "model_name", "model_version"]
    pd.testing.assert_frame_equal(read_rows(engine), written)
    assert summaries(engine) == expected_summaries(written)
    return engine


def racing(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make two migrate_results_key calls both pass the first, unlocked check before either
    migrates, so the check repeated under the lock is what keeps the second from migrating."""
    import tasks.results

    original = tasks.results.outdated_tables
    barrier = threading.Barrier(2, timeout=30)
    first_check = threading.local()

    def outdated(conn: sa.Connection) -> list[sa.Table]:
        found = original(conn)
        if not getattr(first_check, "done", False):
            first_check.done = True
            barrier.wait()
        return found

    monkeypatch.setattr(tasks.results, "outdated_tables", outdated)
