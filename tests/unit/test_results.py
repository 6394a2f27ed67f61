"""detection_results on SQLite: a batch is replaced whole per model version, never duplicated
or half-written, and never touched by another model or version; older DBs migrate in place."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

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
    detection_batches,
    detection_results,
    metadata,
    migrate_results_key,
    read_batch,
    replace_batch,
    results_engine,
)


def chunks(n: int, size: int, anomaly_every: int = 10) -> Iterator[pd.DataFrame]:
    for start in range(0, n, size):
        idx = np.arange(start, min(n, start + size))
        yield pd.DataFrame(
            {"row_index": idx, "score": idx / n, "is_anomaly": idx % anomaly_every == 0}
        )


def write(
    engine: sa.Engine,
    batch: str,
    frames: Iterator[pd.DataFrame],
    version: int = 1,
    model: str = "m",
) -> int:
    return replace_batch(
        engine,
        batch,
        frames,
        model_name=model,
        model_version=version,
        scored_at=datetime.now(UTC),
    )


def counts(engine: sa.Engine, batch: str, version: int = 1, model: str = "m") -> tuple[int, int]:
    return batch_counts(engine, batch, model_name=model, model_version=version)


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[sa.Engine]:
    engine = results_engine(f"sqlite:///{tmp_path / 'results.db'}")
    yield engine
    engine.dispose()


def test_rescoring_a_batch_with_the_same_version_keeps_one_copy(engine: sa.Engine) -> None:
    assert write(engine, "b1", chunks(250, 100)) == 250
    assert write(engine, "b1", chunks(250, 60, anomaly_every=5)) == 250
    assert write(engine, "b2", chunks(40, 100)) == 40
    assert counts(engine, "b1") == (250, 50)
    assert counts(engine, "b2") == (40, 4)
    assert stored_rows(engine) == 290
    assert summaries(engine) == {("b1", "m", 1): (250, 50), ("b2", "m", 1): (40, 4)}


def test_two_models_and_versions_scoring_one_batch_keep_all_rows(engine: sa.Engine) -> None:
    """Champion and challenger on the same batch: before the model was part of the key, the
    second scoring deleted the first one's rows and summary."""
    assert write(engine, "b1", chunks(300, 100), model="m1") == 300
    assert write(engine, "b1", chunks(300, 100, anomaly_every=3), model="m2") == 300
    assert write(engine, "b1", chunks(120, 100, anomaly_every=4), model="m2", version=2) == 120
    assert counts(engine, "b1", model="m1") == (300, 30)
    assert counts(engine, "b1", model="m2") == (300, 100)
    assert counts(engine, "b1", model="m2", version=2) == (120, 30)
    assert stored_rows(engine) == 720
    assert summaries(engine) == {
        ("b1", "m1", 1): (300, 30),
        ("b1", "m2", 1): (300, 100),
        ("b1", "m2", 2): (120, 30),
    }
    # Re-scoring one version replaces only its own rows.
    assert write(engine, "b1", chunks(50, 100), model="m2") == 50
    assert counts(engine, "b1", model="m1") == (300, 30)
    assert counts(engine, "b1", model="m2") == (50, 5)
    assert counts(engine, "b1", model="m2", version=2) == (120, 30)
    assert stored_rows(engine) == 470
    rows = read_batch(engine, "b1", model_name="m2", model_version=2)
    assert rows["row_index"].tolist() == list(range(120))
    assert set(rows["model_version"]) == {2}


def stored_rows(engine: sa.Engine) -> int:
    with engine.connect() as conn:
        return conn.execute(sa.select(sa.func.count()).select_from(detection_results)).scalar()


def test_failure_midway_keeps_the_previous_rows(engine: sa.Engine) -> None:
    write(engine, "b1", chunks(100, 30))

    def failing() -> Iterator[pd.DataFrame]:
        yield from chunks(50, 30)
        raise RuntimeError("scoring crashed")

    with pytest.raises(RuntimeError, match="scoring crashed"):
        write(engine, "b1", failing())
    assert counts(engine, "b1") == (100, 10)
    assert summaries(engine) == {("b1", "m", 1): (100, 10)}


def test_table_has_model_and_time_indexes(engine: sa.Engine) -> None:
    names = {ix["name"] for ix in sa.inspect(engine).get_indexes("detection_results")}
    assert {"ix_detection_results_model", "ix_detection_results_scored_at"} <= names


# Migration of a results DB keyed by batch_id alone -------------------------------------------


@pytest.mark.parametrize("with_summaries", [True, False])
def test_old_results_db_is_migrated_in_place_keeping_every_row(
    tmp_path: Path, with_summaries: bool
) -> None:
    url = f"sqlite:///{tmp_path / 'old.db'}"
    written = create_old_results_db(url, with_summaries=with_summaries)
    engine = open_and_check_migrated(url, written)
    names = {ix["name"] for ix in sa.inspect(engine).get_indexes("detection_results")}
    assert {"ix_detection_results_model", "ix_detection_results_scored_at"} <= names
    # Every table of the results metadata (tasks.feedback adds its own once imported), and no
    # leftover of the migration.
    assert sa.inspect(engine).get_table_names() == sorted(metadata.tables)
    assert migrate_results_key(engine) == []  # idempotent

    # The new key works: another model scores b1 beside m1's rows.
    assert write(engine, "b1", chunks(300, 100), model="m3") == 300
    assert counts(engine, "b1", model="m1") == expected_summaries(written)[("b1", "m1", 1)]
    assert counts(engine, "b1", model="m3") == (300, 30)
    assert stored_rows(engine) == len(written) + 300
    engine.dispose()


def test_failed_migration_leaves_the_old_db_as_it_was(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The SQLite rebuild runs in one transaction: a failure at its last step undoes it all."""
    url = f"sqlite:///{tmp_path / 'old.db'}"
    written = create_old_results_db(url)

    def fail(*args: object, **kwargs: object) -> None:
        raise RuntimeError("disk full")

    monkeypatch.setattr(sa.Index, "create", fail)
    engine = sa.create_engine(url)
    with pytest.raises(RuntimeError, match="disk full"):
        migrate_results_key(engine)
    assert primary_key(engine, "detection_results") == ["batch_id", "row_index"]
    assert sa.inspect(engine).get_table_names() == ["detection_batches", "detection_results"]
    pd.testing.assert_frame_equal(read_rows(engine), written)
    engine.dispose()


def test_two_openers_migrate_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two processes opening an old DB at once: one migrates under the write lock, the other
    finds it done."""
    url = f"sqlite:///{tmp_path / 'old.db'}"
    written = create_old_results_db(url)
    engines = [sa.create_engine(url), sa.create_engine(url)]
    racing(monkeypatch)
    with ThreadPoolExecutor(2) as pool:
        migrated = list(pool.map(migrate_results_key, engines))
    assert sorted(migrated, key=len) == [[], ["detection_results", "detection_batches"]]
    pd.testing.assert_frame_equal(read_rows(engines[0]), written)
    for engine in engines:
        engine.dispose()


# Scores whose repr is long or extreme: the stored value must be the same float.
AWKWARD = [0.1 + 0.2, 1e-300, -2.5e250, 1 / 3, 123456789.00000001, 0.0, -0.0, 5e-324]


def awkward_frame() -> pd.DataFrame:
    n = len(AWKWARD)
    return pd.DataFrame(
        {"row_index": np.arange(n) * 7, "score": AWKWARD, "is_anomaly": np.arange(n) % 2 == 0}
    )


def test_rows_are_stored_exactly_as_scored_with_the_batch_key(engine: sa.Engine) -> None:
    at = datetime(2026, 3, 4, 5, 6, 7, 891011, tzinfo=UTC)
    written = replace_batch(
        engine, "b\t1", [awkward_frame()], model_name="m'x", model_version=3, scored_at=at
    )
    assert written == len(AWKWARD)
    stored = read_batch(engine, "b\t1", model_name="m'x", model_version=3)
    assert stored["score"].tolist() == AWKWARD
    assert stored["row_index"].tolist() == (np.arange(len(AWKWARD)) * 7).tolist()
    assert stored["is_anomaly"].tolist() == [i % 2 == 0 for i in range(len(AWKWARD))]
    # The constant columns are bound as SQLAlchemy binds them: read back, the same instant
    # (SQLite keeps no zone: SQLAlchemy stores UTC there without one, as in detection_batches).
    read = {pd.Timestamp(v) for v in stored["scored_at"]}
    assert {v if v.tzinfo else v.tz_localize(UTC) for v in read} == {pd.Timestamp(at)}
    with engine.connect() as conn:
        summary_at = conn.execute(sa.select(detection_batches.c.scored_at)).scalar_one()
    assert {pd.Timestamp(v) for v in stored["scored_at"]} == {pd.Timestamp(summary_at)}
    assert set(stored["batch_id"]) == {"b\t1"} and set(stored["model_name"]) == {"m'x"}
    assert set(stored["model_version"]) == {3}
