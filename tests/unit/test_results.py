"""detection_results on SQLite: a batch id is replaced whole, never duplicated or half-written."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa

from tasks.results import (
    batch_counts,
    detection_batches,
    detection_results,
    replace_batch,
    results_engine,
)


def chunks(n: int, size: int, anomaly_every: int = 10) -> Iterator[pd.DataFrame]:
    for start in range(0, n, size):
        idx = np.arange(start, min(n, start + size))
        yield pd.DataFrame(
            {"row_index": idx, "score": idx / n, "is_anomaly": idx % anomaly_every == 0}
        )


def write(engine: sa.Engine, batch: str, frames: Iterator[pd.DataFrame], version: int = 1) -> int:
    return replace_batch(
        engine,
        batch,
        frames,
        model_name="m",
        model_version=version,
        scored_at=datetime.now(UTC),
    )


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[sa.Engine]:
    engine = results_engine(f"sqlite:///{tmp_path / 'results.db'}")
    yield engine
    engine.dispose()


def test_rescoring_a_batch_replaces_its_rows(engine: sa.Engine) -> None:
    assert write(engine, "b1", chunks(250, 100)) == 250
    assert write(engine, "b1", chunks(250, 60), version=2) == 250
    assert write(engine, "b2", chunks(40, 100)) == 40
    assert batch_counts(engine, "b1") == (250, 25)
    with engine.connect() as conn:
        versions = conn.execute(
            sa.select(detection_results.c.model_version)
            .distinct()
            .where(detection_results.c.batch_id == "b1")
        ).scalars()
        assert list(versions) == [2]
    assert batch_counts(engine, "b2") == (40, 4)
    assert summaries(engine) == {"b1": ("m", 2, 250, 25), "b2": ("m", 1, 40, 4)}


def summaries(engine: sa.Engine) -> dict[str, tuple]:
    """detection_batches as {batch: (model, version, rows, anomalies)}."""
    b = detection_batches
    query = sa.select(
        b.c.batch_id, b.c.model_name, b.c.model_version, b.c.row_count, b.c.anomaly_count
    )
    with engine.connect() as conn:
        return {row[0]: tuple(row[1:]) for row in conn.execute(query)}


def test_failure_midway_keeps_the_previous_rows(engine: sa.Engine) -> None:
    write(engine, "b1", chunks(100, 30))

    def failing() -> Iterator[pd.DataFrame]:
        yield from chunks(50, 30)
        raise RuntimeError("scoring crashed")

    with pytest.raises(RuntimeError, match="scoring crashed"):
        write(engine, "b1", failing(), version=2)
    assert batch_counts(engine, "b1") == (100, 10)
    assert summaries(engine) == {"b1": ("m", 1, 100, 10)}


def test_table_has_model_and_time_indexes(engine: sa.Engine) -> None:
    names = {ix["name"] for ix in sa.inspect(engine).get_indexes("detection_results")}
    assert {"ix_detection_results_model", "ix_detection_results_scored_at"} <= names
