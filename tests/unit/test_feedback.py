"""Analyst feedback: recording, replacing, reading labels back, precision, and the gate's use."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa

from pynomaly.errors import InputError
from registry.gate import (
    KEEP,
    MIN_FEEDBACK_ANOMALIES,
    PROMOTE,
    REJECT,
    FeedbackScores,
    GateConfig,
    decide,
)
from tasks.feedback import (
    FEEDBACK_LABEL,
    apply_feedback_labels,
    detection_feedback,
    drop_trained_rows,
    feedback_counts,
    feedback_engine,
    latest_labels,
    model_feedback,
    record_batch_snapshot,
    record_feedback,
)
from tasks.results import replace_batch

T0 = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)


def score(engine, batch: str, model: str, version: int, flags: list[bool]) -> None:
    frame = pd.DataFrame(
        {"row_index": range(len(flags)), "score": [float(f) for f in flags], "is_anomaly": flags}
    )
    replace_batch(engine, batch, [frame], model_name=model, model_version=version, scored_at=T0)


def fb(batch: str, row: int, label: object) -> dict:
    return {"batch_id": batch, "row_index": row, "label": label}


def write(tmp_path: Path, rows: list[dict], name: str = "fb.csv") -> str:
    path = tmp_path / name
    frame = pd.DataFrame(rows)
    if name.endswith(".parquet"):
        frame.to_parquet(path, index=False)
    else:
        frame.to_csv(path, index=False)
    return str(path)


@pytest.fixture
def engine(tmp_path: Path):
    engine = feedback_engine(f"sqlite:///{tmp_path / 'results.db'}")
    yield engine
    engine.dispose()


def stored(engine) -> list[tuple]:
    f = detection_feedback
    with engine.connect() as conn:
        return sorted(
            tuple(r)
            for r in conn.execute(
                sa.select(
                    f.c.batch_id,
                    f.c.row_index,
                    f.c.model_name,
                    f.c.model_version,
                    f.c.labelled_by,
                    f.c.label,
                    f.c.note,
                )
            )
        )


def test_record_writes_one_row_per_scoring_version_and_relabelling_replaces(
    engine, tmp_path: Path
) -> None:
    score(engine, "b1", "m", 1, [True, False, True])
    score(engine, "b1", "m", 2, [True, True, False])  # a challenger scored the same batch
    first = write(
        tmp_path,
        [
            {"batch_id": "b1", "row_index": 0, "label": 1, "note": "fraud ring"},
            {"batch_id": "b1", "row_index": 2, "label": 0, "note": ""},
        ],
    )
    result = record_feedback(engine, first, "ana", labelled_at=T0)
    assert (result["rows"], result["written"], result["replaced"], result["anomalies"]) == (
        2,
        4,
        0,
        1,
    )
    assert result["models"] == [
        {"model": "m", "version": 1, "rows": 2},
        {"model": "m", "version": 2, "rows": 2},
    ]
    assert stored(engine) == [
        ("b1", 0, "m", 1, "ana", 1, "fraud ring"),
        ("b1", 0, "m", 2, "ana", 1, "fraud ring"),
        ("b1", 2, "m", 1, "ana", 0, None),
        ("b1", 2, "m", 2, "ana", 0, None),
    ]

    # Ana changes her mind on row 2 (Parquet this time): her label is replaced, not added.
    again = write(tmp_path, [{"batch_id": "b1", "row_index": 2, "label": 1}], "fb2.parquet")
    result = record_feedback(engine, again, "ana", labelled_at=T0 + timedelta(hours=1))
    assert (result["written"], result["replaced"]) == (2, 2)
    # Bo labels the same row: a second opinion beside Ana's.
    record_feedback(engine, first, "bo", labelled_at=T0 + timedelta(hours=2))
    rows = stored(engine)
    assert len(rows) == 8
    assert ("b1", 2, "m", 1, "ana", 1, None) in rows
    assert ("b1", 2, "m", 1, "bo", 0, None) in rows


def test_latest_label_wins_when_people_disagree(engine, tmp_path: Path) -> None:
    score(engine, "b1", "m", 1, [True, True, False])
    one = write(tmp_path, [{"batch_id": "b1", "row_index": 1, "label": 1}])
    record_feedback(engine, one, "ana", labelled_at=T0 + timedelta(hours=3))
    zero = write(tmp_path, [{"batch_id": "b1", "row_index": 1, "label": 0}], "z.csv")
    record_feedback(engine, zero, "bo", labelled_at=T0)
    labels = latest_labels(engine, "m")
    assert labels[["batch_id", "row_index", "label"]].values.tolist() == [["b1", 1, 1]]
    assert latest_labels(engine, "other").empty


def test_flagged_precision_per_model_version(engine, tmp_path: Path) -> None:
    score(engine, "b1", "m", 1, [True, True, True, False, False])
    score(engine, "b2", "m", 2, [True, False, False])
    rows = [
        {"batch_id": "b1", "row_index": 0, "label": 1},
        {"batch_id": "b1", "row_index": 1, "label": 0},
        {"batch_id": "b1", "row_index": 2, "label": 1},
        {"batch_id": "b1", "row_index": 3, "label": 1},  # missed by v1: not flagged
        {"batch_id": "b2", "row_index": 0, "label": 0},
    ]
    record_feedback(engine, write(tmp_path, rows), "ana", labelled_at=T0)
    # Bo overrules Ana on b1 row 1 later: the newest label counts.
    fix = write(tmp_path, [{"batch_id": "b1", "row_index": 1, "label": 1}], "fix.csv")
    record_feedback(engine, fix, "bo", labelled_at=T0 + timedelta(days=1))
    counts = {(c.model, c.version): c for c in feedback_counts(engine)}
    v1, v2 = counts[("m", 1)], counts[("m", 2)]
    assert (v1.labelled_rows, v1.labelled_anomalies, v1.labelled_flagged, v1.flagged_true) == (
        4,
        4,
        3,
        3,
    )
    assert v1.flagged_precision == 1.0
    assert (v2.labelled_flagged, v2.flagged_true, v2.flagged_precision) == (1, 0, 0.0)


def test_no_feedback_table_reads_as_no_feedback(tmp_path: Path) -> None:
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'old.db'}")
    assert feedback_counts(engine) == []
    assert latest_labels(engine, "m").empty
    engine.dispose()


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ([{"batch_id": "b1", "row_index": 0, "label": 2}], "row 1: label '2' is not 0 or 1"),
        ([{"batch_id": "b1", "row_index": 0, "label": "yes"}], "label 'yes' is not 0 or 1"),
        ([{"batch_id": "b1", "row_index": 0, "label": ""}], "label '(empty)' is not 0 or 1"),
        ([{"batch_id": "nope", "row_index": 0, "label": 1}], "batch 'nope' was never scored"),
        (
            [fb("b1", 0, 1), fb("b1", 7, 0)],
            "row 2: batch 'b1' has no scored row 7",
        ),
        (
            [fb("b1", 1, 1), fb("b1", 1, 0)],
            "rows 1 and 2 both label batch 'b1' row 1",
        ),
        ([{"batch_id": "b1", "label": 1}], "missing column(s) row_index"),
        ([{"batch_id": "b1", "row_index": "x", "label": 1}], "row_index 'x' is not a row number"),
    ],
)  # fmt: skip
def test_bad_feedback_is_refused_and_nothing_is_written(
    engine, tmp_path: Path, rows: list[dict], message: str
) -> None:
    score(engine, "b1", "m", 1, [True, False])
    record_feedback(
        engine, write(tmp_path, [{"batch_id": "b1", "row_index": 0, "label": 0}], "ok.csv"), "ana"
    )
    before = stored(engine)
    source = write(tmp_path, rows)
    with pytest.raises(InputError) as err:
        record_feedback(engine, source, "ana")
    assert str(err.value).startswith(source) and message in str(err.value)
    assert stored(engine) == before


def test_numeric_looking_batch_ids_stay_text(engine, tmp_path: Path) -> None:
    """A batch id of digits (a content hash can be) is not read as a number."""
    score(engine, "0012", "m", 1, [True])
    path = tmp_path / "fb.csv"
    path.write_text("batch_id,row_index,label\n0012,0,1\n")
    assert record_feedback(engine, str(path), "ana")["batches"] == ["0012"]


def test_feedback_joins_rows_to_their_snapshot(engine, tmp_path: Path) -> None:
    from tasks.store import ArtifactStore

    store = ArtifactStore(str(tmp_path / "artifacts"))
    score(engine, "custom-id", "m", 1, [True, False, True])
    record_batch_snapshot(
        engine,
        "custom-id",
        model_name="m",
        model_version=1,
        dataset="m-batches",
        sha256="ab" * 32,
        rows=3,
    )
    record_feedback(
        engine, write(tmp_path, [{"batch_id": "custom-id", "row_index": 2, "label": 1}]), "ana"
    )
    labelled = model_feedback(engine, store, "m")
    assert labelled[["row_index", "label", "snapshot"]].values.tolist() == [
        [2, 1, f"m-batches/{'ab' * 32}"]
    ]


def test_apply_feedback_labels_sets_labels_and_presumes_unlabelled_rows_normal() -> None:
    train = pd.DataFrame({"x": [0.0, 1.0, 2.0], "y": [1, 0, 0]})
    batch = pd.DataFrame({"x": [float(i) for i in range(10, 20)]})
    labels = [1, 1, 1, 1, 1, 0, 0]
    labelled = pd.DataFrame({"row_index": range(7), "label": labels, "snapshot": ["d/batch"] * 7})
    frames, column, stats = apply_feedback_labels(
        [("d/train", train), ("d/batch", batch)], labelled, "y"
    )
    assert column == "y"
    assert frames[0]["y"].tolist() == [1, 0, 0]  # the snapshot's own labels stay
    assert frames[1]["x"].tolist() == [float(i) for i in range(10, 20)]
    assert frames[1]["y"].tolist() == labels + [0, 0, 0]
    assert stats == {
        "feedback_rows": 7,
        "feedback_anomalies": 5,
        "unlabelled_rows_presumed_normal": 3,
    }

    # Without a label column of its own, the model's feedback gets its own column.
    frames, column, _ = apply_feedback_labels([("d/batch", batch)], labelled, None)
    assert column == FEEDBACK_LABEL and frames[0][FEEDBACK_LABEL].tolist() == labels + [0, 0, 0]

    # A sample of the batch keeps its row numbers as index: labels go by them, not position.
    sample = batch.iloc[[0, 2, 4, 5, 6, 9]]
    frames, _, stats = apply_feedback_labels([("d/batch", sample)], labelled, None)
    assert frames[0]["x"].tolist() == [10.0, 12.0, 14.0, 15.0, 16.0, 19.0]
    assert frames[0][FEEDBACK_LABEL].tolist() == [1, 1, 1, 0, 0, 0]
    assert stats["feedback_rows"] == 5 and stats["unlabelled_rows_presumed_normal"] == 1

    # Too few labelled anomalies in the window: no labelled training.
    thin = labelled.assign(
        label=[1] * (MIN_FEEDBACK_ANOMALIES - 1) + [0] * (8 - MIN_FEEDBACK_ANOMALIES)
    )
    assert apply_feedback_labels([("d/batch", batch)], thin, None) is None
    elsewhere = labelled.assign(snapshot="d/other")
    assert apply_feedback_labels([("d/batch", batch)], elsewhere, None) is None


def test_drop_trained_rows_matches_feature_content() -> None:
    features = pd.DataFrame({"a": [1.0, 2.0, 3.0], "b": [4.0, 5.0, 6.0]})
    labels = np.array([1, 0, 1])
    trained = pd.DataFrame({"a": [2.0, 9.0], "b": [5.0, 9.0], "label": [0, 0]})
    kept, kept_labels, dropped = drop_trained_rows(features, labels, [trained], ["label"])
    assert kept["a"].tolist() == [1.0, 3.0] and kept_labels.tolist() == [1, 1] and dropped == 1


# The gate ------------------------------------------------------------------------------------


def _label_free_pair(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Challenger and champion scores that disagree (the label-free gate asks for review)."""
    champion = rng.normal(size=200)
    challenger = rng.normal(size=200)
    return challenger, champion


def test_feedback_lets_a_better_challenger_through() -> None:
    rng = np.random.default_rng(0)
    challenger, champion = _label_free_pair(rng)
    threshold = float(np.quantile(challenger, 0.95))
    common = {"champion_scores": champion, "stability": 0.99, "config": GateConfig()}
    label_free = decide(challenger, threshold, **common)
    assert label_free.decision == KEEP  # disagreement with the champion needs a person

    labels = np.array([1] * 6 + [0] * 14)
    good = np.where(labels == 1, 5.0, 0.0) + rng.normal(0, 0.1, 20)
    poor = rng.normal(size=20)
    judged = decide(challenger, threshold, **common, feedback=FeedbackScores(labels, good, poor))
    assert judged.decision == PROMOTE and judged.labelled
    assert any(
        r.startswith("ok: analyst feedback: average precision 1.0000") for r in judged.reasons
    )
    assert judged.metrics["feedback.anomalies"] == 6
    assert judged.metrics["champion.feedback_average_precision"] < 1.0


def test_feedback_rejects_a_worse_challenger() -> None:
    rng = np.random.default_rng(1)
    scores = rng.normal(size=200)
    threshold = float(np.quantile(scores, 0.95))
    common = {"champion_scores": scores + rng.normal(0, 0.01, 200), "stability": 0.99}
    assert decide(scores, threshold, **common).decision == PROMOTE

    labels = np.array([1] * 5 + [0] * 10)
    good = np.where(labels == 1, 5.0, 0.0)
    judged = decide(scores, threshold, **common, feedback=FeedbackScores(labels, -good, good))
    assert judged.decision == REJECT
    assert judged.reasons[0].startswith("failed: analyst feedback: average precision")


def test_too_little_feedback_does_not_judge() -> None:
    rng = np.random.default_rng(2)
    challenger, champion = _label_free_pair(rng)
    threshold = float(np.quantile(challenger, 0.95))
    labels = np.array([1] * (MIN_FEEDBACK_ANOMALIES - 1) + [0] * 10)
    worse = decide(
        challenger,
        threshold,
        champion_scores=champion,
        stability=0.99,
        feedback=FeedbackScores(labels, -labels.astype(float), labels.astype(float)),
    )
    assert worse.decision == KEEP and not worse.labelled
    assert any("not judged on labels yet" in r for r in worse.reasons)


def test_exporter_gauges_flagged_precision_per_model_version(engine, tmp_path: Path) -> None:
    from prometheus_client import generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    from deployments.monitoring.exporter import PlatformCollector, Sources, metrics_registry

    score(engine, "b1", "m", 1, [True, True, True, False])
    rows = [fb("b1", 0, 1), fb("b1", 1, 0), fb("b1", 2, 1), fb("b1", 3, 1)]
    record_feedback(engine, write(tmp_path, rows), "ana", labelled_at=T0)
    sources = Sources(str(engine.url), f"sqlite:///{tmp_path / 'none.db'}", str(tmp_path))
    collector = PlatformCollector(sources, now=lambda: T0)
    text = generate_latest(metrics_registry(collector)).decode()
    collector.close()
    got = {
        s.name: (s.labels, s.value)
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if "feedback" in s.name or "precision" in s.name
    }
    labels = {"model": "m", "version": "1"}
    assert got == {
        "pynomaly_flagged_precision": (labels, pytest.approx(2 / 3)),
        "pynomaly_feedback_labelled_flagged_rows": (labels, 3),
        "pynomaly_feedback_labelled_rows": (labels, 4),
        "pynomaly_feedback_labelled_anomalies": (labels, 3),
    }


def test_labels_and_row_numbers_written_as_floats_are_read(engine, tmp_path: Path) -> None:
    """A spreadsheet or pandas export may write 1.0 and 2.0; 1.5 is still refused."""
    score(engine, "b1", "m", 1, [True, False, True])
    path = tmp_path / "floats.csv"
    path.write_text("batch_id,row_index,label\nb1,2.0,1.0\nb1,0,0.0\n")
    assert record_feedback(engine, str(path), "ana")["anomalies"] == 1
    assert [r[1:6:4] for r in stored(engine)] == [(0, 0), (2, 1)]
    path.write_text("batch_id,row_index,label\nb1,1,1.5\n")
    with pytest.raises(InputError, match="label '1.5' is not 0 or 1"):
        record_feedback(engine, str(path), "ana")


def test_feedback_rows_that_do_not_fit_the_model_are_left_out_not_rejected() -> None:
    from registry.gate import FeedbackRows, Scorer, score_feedback

    scorer = Scorer(
        score_fn=lambda x: x["a"].to_numpy(float),
        columns=["a"],
        input_types={"a": "double"},
        threshold=0.0,
        convention="a",
    )
    old_batch = pd.DataFrame({"other": np.arange(8.0)})
    scored = score_feedback(FeedbackRows(old_batch, np.array([1] * 6 + [0] * 2)), scorer, scorer)
    assert len(scored.labels) == 0 and scored.left_out == 8
    rng = np.random.default_rng(0)
    scores = rng.normal(size=100)
    decision = decide(scores, 1.6, champion_scores=scores, stability=1.0, feedback=scored)
    assert decision.decision == PROMOTE
    assert any("8 labelled row(s) left out" in r for r in decision.reasons)
