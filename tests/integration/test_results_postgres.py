"""detection_results on PostgreSQL: per model version replacement through COPY, and the in-place
migration of a results DB keyed by batch_id alone."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa
from old_results import (
    create_old_results_db,
    expected_summaries,
    open_and_check_migrated,
    primary_key,
    racing,
    read_rows,
    summaries,
)

from tasks.results import (
    batch_counts,
    migrate_results_key,
    replace_batch,
    results_engine,
)

pytestmark = pytest.mark.integration


def scored(n: int, anomaly_every: int) -> Iterator[pd.DataFrame]:
    for start in range(0, n, 1_000):
        idx = np.arange(start, min(n, start + 1_000))
        yield pd.DataFrame(
            {"row_index": idx, "score": idx * 0.5, "is_anomaly": idx % anomaly_every == 0}
        )


def write(engine: sa.Engine, batch: str, model: str, version: int, n: int, every: int) -> int:
    return replace_batch(
        engine,
        batch,
        scored(n, every),
        model_name=model,
        model_version=version,
        scored_at=datetime.now(UTC),
    )


def total(engine: sa.Engine) -> int:
    with engine.connect() as conn:
        return conn.execute(sa.text("SELECT count(*) FROM detection_results")).scalar()


def test_champion_and_challenger_on_one_batch_keep_both_on_postgres(pg_url: str) -> None:
    # Plain postgresql:// (psycopg 3): rows go in through COPY.
    engine = results_engine("postgresql" + pg_url[pg_url.index("://") :])
    assert write(engine, "b", "fraud", 1, 3_000, 10) == 3_000
    assert write(engine, "b", "fraud", 2, 2_500, 5) == 2_500
    assert write(engine, "b", "other", 1, 300, 3) == 300
    assert write(engine, "b", "fraud", 1, 3_000, 4) == 3_000  # re-scored: one copy
    assert batch_counts(engine, "b", model_name="fraud", model_version=1) == (3_000, 750)
    assert batch_counts(engine, "b", model_name="fraud", model_version=2) == (2_500, 500)
    assert batch_counts(engine, "b", model_name="other", model_version=1) == (300, 100)
    assert total(engine) == 5_800
    assert summaries(engine) == {
        ("b", "fraud", 1): (3_000, 750),
        ("b", "fraud", 2): (2_500, 500),
        ("b", "other", 1): (300, 100),
    }
    engine.dispose()


def test_old_results_db_is_migrated_in_place_on_postgres(pg_url: str) -> None:
    written = create_old_results_db(pg_url)
    engine = open_and_check_migrated(pg_url, written)
    assert migrate_results_key(engine) == []  # idempotent

    # The new key works: a challenger scores b1 beside m1's rows, through COPY.
    assert write(engine, "b1", "m1", 9, 400, 8) == 400
    m1 = expected_summaries(written)[("b1", "m1", 1)]
    assert batch_counts(engine, "b1", model_name="m1", model_version=1) == m1
    assert batch_counts(engine, "b1", model_name="m1", model_version=9) == (400, 50)
    assert total(engine) == len(written) + 400
    engine.dispose()


def test_two_openers_migrate_once_on_postgres(pg_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    written = create_old_results_db(pg_url)
    engines = [sa.create_engine(pg_url), sa.create_engine(pg_url)]
    racing(monkeypatch)
    with ThreadPoolExecutor(2) as pool:
        migrated = list(pool.map(migrate_results_key, engines))
    assert sorted(migrated, key=len) == [[], ["detection_results", "detection_batches"]]
    assert primary_key(engines[0], "detection_results")[-1] == "row_index"
    pd.testing.assert_frame_equal(read_rows(engines[0]), written)
    for engine in engines:
        engine.dispose()


@pytest.mark.parametrize("driver", ["postgresql+psycopg2", "postgresql"])
def test_copy_stores_scores_exactly_and_escapes_the_batch_key(pg_url: str, driver: str) -> None:
    from tasks.results import read_batch

    awkward = [0.1 + 0.2, 1e-300, -2.5e250, 1 / 3, 123456789.00000001, 0.0, -0.0, 5e-324]
    frame = pd.DataFrame(
        {"row_index": np.arange(8) * 7, "score": awkward, "is_anomaly": np.arange(8) % 2 == 0}
    )
    engine = results_engine(driver + pg_url[pg_url.index("://") :])
    at = datetime(2026, 3, 4, 5, 6, 7, 891011, tzinfo=UTC)
    batch, model = "b\t1\\n\nx", "m'x"
    chunks = [frame.iloc[:3], frame.iloc[3:]]
    assert replace_batch(engine, batch, chunks, model_name=model, model_version=3, scored_at=at)
    stored = read_batch(engine, batch, model_name=model, model_version=3)
    engine.dispose()
    assert stored["score"].tolist() == awkward
    assert stored["is_anomaly"].tolist() == [i % 2 == 0 for i in range(8)]
    assert set(stored["scored_at"]) == {pd.Timestamp(at)}
    assert set(stored["batch_id"]) == {batch} and set(stored["model_name"]) == {model}
