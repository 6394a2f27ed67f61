"""Analyst feedback on PostgreSQL 15: upserts, all-or-nothing files, newest label, precision;
and the whole scenario (feedback changes a gate decision, feeds a retrain) on a PostgreSQL
results DB."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest
import sqlalchemy as sa

from pynomaly.errors import InputError
from tasks.feedback import (
    detection_feedback,
    feedback_counts,
    feedback_engine,
    latest_labels,
    model_feedback,
    record_batch_snapshot,
    record_feedback,
    record_feedback_file,
)
from tasks.results import replace_batch

pytestmark = pytest.mark.integration

T0 = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)


def score(engine, batch: str, version: int, flags: list[bool]) -> None:
    frame = pd.DataFrame(
        {"row_index": range(len(flags)), "score": [float(f) for f in flags], "is_anomaly": flags}
    )
    replace_batch(engine, batch, [frame], model_name="m", model_version=version, scored_at=T0)


def write(tmp_path: Path, name: str, rows: list[tuple]) -> str:
    path = tmp_path / name
    pd.DataFrame(rows, columns=["batch_id", "row_index", "label"]).to_csv(path, index=False)
    return str(path)


def stored(engine) -> list[tuple]:
    f = detection_feedback
    with engine.connect() as conn:
        query = sa.select(
            f.c.batch_id, f.c.row_index, f.c.model_version, f.c.labelled_by, f.c.label
        ).order_by(f.c.batch_id, f.c.row_index, f.c.model_version, f.c.labelled_by)
        return [tuple(r) for r in conn.execute(query)]


def test_feedback_on_postgres(pg_url: str, tmp_path: Path) -> None:
    engine = feedback_engine(pg_url)
    try:
        assert engine.dialect.name == "postgresql"
        score(engine, "b1", 1, [True, True, False, False])
        score(engine, "b1", 2, [True, False, True, False])  # champion and challenger, one batch

        first = write(tmp_path, "first.csv", [("b1", 0, 1), ("b1", 1, 0), ("b1", 2, 1)])
        result = record_feedback(engine, first, "ana", labelled_at=T0)
        assert (result["written"], result["replaced"]) == (6, 0)

        # Relabelling by the same person replaces (ON CONFLICT DO UPDATE), another person adds.
        again = write(tmp_path, "again.csv", [("b1", 1, 1)])
        result = record_feedback(engine, again, "ana", labelled_at=T0 + timedelta(hours=1))
        assert (result["written"], result["replaced"]) == (2, 2)
        other = write(tmp_path, "other.csv", [("b1", 2, 0)])
        record_feedback(engine, other, "bo", labelled_at=T0 + timedelta(hours=2))
        assert stored(engine) == [
            ("b1", 0, 1, "ana", 1),
            ("b1", 0, 2, "ana", 1),
            ("b1", 1, 1, "ana", 1),
            ("b1", 1, 2, "ana", 1),
            ("b1", 2, 1, "ana", 1),
            ("b1", 2, 1, "bo", 0),
            ("b1", 2, 2, "ana", 1),
            ("b1", 2, 2, "bo", 0),
        ]

        # A bad file writes nothing: the second row names a row never scored.
        before = stored(engine)
        bad = write(tmp_path, "bad.csv", [("b1", 3, 1), ("b1", 99, 1)])
        with pytest.raises(InputError, match="row 2: batch 'b1' has no scored row 99"):
            record_feedback(engine, bad, "ana")
        assert stored(engine) == before

        # Newest label per row (Bo's 0 on row 2 is newer than Ana's 1).
        labels = latest_labels(engine, "m")
        assert labels[["row_index", "label"]].values.tolist() == [[0, 1], [1, 1], [2, 0]]

        # Precision of flagged rows per version, from the newest labels (window function).
        counts = {c.version: c for c in feedback_counts(engine)}
        assert (counts[1].labelled_flagged, counts[1].flagged_true) == (2, 2)
        assert (counts[2].labelled_flagged, counts[2].flagged_true) == (2, 1)
        assert counts[2].flagged_precision == 0.5

        # Snapshots: an upsert per (batch, model, version), then joined to the labels.
        from tasks.store import ArtifactStore

        for sha in ("aa" * 32, "bb" * 32):  # re-scored from another snapshot: replaced
            record_batch_snapshot(
                engine, "b1", model_name="m", model_version=2, dataset="m-batches", sha256=sha,
                rows=4,
            )  # fmt: skip
        joined = model_feedback(engine, ArtifactStore(str(tmp_path / "a")), "m")
        assert set(joined["snapshot"]) == {f"m-batches/{'bb' * 32}"}
    finally:
        engine.dispose()
    # The CLI's entry point on a PostgreSQL URL.
    url = engine.url.render_as_string(hide_password=False)
    extra = write(tmp_path, "extra.csv", [("b1", 3, 0)])
    assert record_feedback_file(url, extra, "cy")["written"] == 2


def test_feedback_scenario_on_a_postgres_results_db(
    pg_url: str, platform_home: Path, prefect_harness: None, tmp_path: Path, monkeypatch
) -> None:
    from feedback_scenario import feedback_scenario

    from pynomaly.settings import get_settings

    monkeypatch.setenv("PYNOMALY_RESULTS_DB_URL", pg_url)
    get_settings.cache_clear()
    feedback_scenario(tmp_path)
    engine = sa.create_engine(pg_url)
    with engine.connect() as conn:
        labelled = conn.execute(sa.text("SELECT count(*) FROM detection_feedback")).scalar()
        snapshots = conn.execute(sa.text("SELECT count(*) FROM batch_snapshots")).scalar()
    engine.dispose()
    assert labelled > 0 and snapshots == 1
    assert not (platform_home / "results.db").exists()  # nothing went to the embedded DB
