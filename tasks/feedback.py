"""Analyst feedback: 0/1 labels on scored rows, kept in `detection_feedback`.

A feedback file names rows by `batch_id` and `row_index` (as in detection_results); each row
is written once for every model version that scored it, keyed by (batch_id, row_index,
model_name, model_version, labelled_by), so the same person labelling a row again replaces the
earlier label. `batch_snapshots` remembers which stored snapshot a batch id was scored from, so
labelled rows can be joined back to their features (for the promotion gate and retraining).

Both tables live on the results DB's metadata: `results_engine` creates them once this module
is imported.
"""

from __future__ import annotations

import csv
import getpass
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache, partial
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from pynomaly.errors import InputError
from registry.gate import MIN_FEEDBACK_ANOMALIES, FeedbackRows
from tasks.results import detection_results, metadata, results_engine

REQUIRED = ("batch_id", "row_index", "label")
OPTIONAL = ("note",)
# Label column given to feedback when the model was trained without one.
FEEDBACK_LABEL = "feedback_label"
# Rows looked up per IN (...) list: well under every database's parameter limit.
LOOKUP_CHUNK = 500

detection_feedback = sa.Table(
    "detection_feedback",
    metadata,
    sa.Column("batch_id", sa.String(128), primary_key=True),
    sa.Column("row_index", sa.BigInteger, primary_key=True),
    sa.Column("model_name", sa.String(200), primary_key=True),
    sa.Column("model_version", sa.Integer, primary_key=True),
    sa.Column("labelled_by", sa.String(200), primary_key=True),
    sa.Column("label", sa.SmallInteger, nullable=False),
    sa.Column("labelled_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("note", sa.Text, nullable=True),
    sa.Index("ix_detection_feedback_model", "model_name", "model_version"),
)

batch_snapshots = sa.Table(
    "batch_snapshots",
    metadata,
    sa.Column("batch_id", sa.String(128), primary_key=True),
    sa.Column("model_name", sa.String(200), primary_key=True),
    sa.Column("model_version", sa.Integer, primary_key=True),
    sa.Column("dataset", sa.String(200), nullable=False),
    sa.Column("sha256", sa.String(64), nullable=False),
    sa.Column("rows", sa.BigInteger, nullable=False),
    sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False),
)


def feedback_engine(url: str) -> sa.Engine:
    """The results DB with every table (feedback ones included) created if missing."""
    return results_engine(url)


def _upsert(conn: sa.Connection, table: sa.Table, rows: list[dict[str, Any]]) -> None:
    """Insert rows, replacing those with the same primary key (SQLite and PostgreSQL)."""
    if not rows:
        return
    insert = {"postgresql": postgresql.insert, "sqlite": sqlite.insert}[conn.dialect.name]
    keys = [c.name for c in table.primary_key.columns]
    statement = insert(table)
    statement = statement.on_conflict_do_update(
        index_elements=keys,
        set_={c.name: statement.excluded[c.name] for c in table.columns if c.name not in keys},
    )
    conn.execute(statement, rows)


# --------------------------------------------------------------------------- snapshots


def record_batch_snapshot(
    engine: sa.Engine,
    batch_id: str,
    *,
    model_name: str,
    model_version: int,
    dataset: str,
    sha256: str,
    rows: int,
    recorded_at: datetime | None = None,
) -> None:
    """Remember which snapshot a batch id was scored from (a re-score replaces the entry)."""
    with engine.begin() as conn:
        _upsert(
            conn,
            batch_snapshots,
            [
                {
                    "batch_id": batch_id,
                    "model_name": model_name,
                    "model_version": int(model_version),
                    "dataset": dataset,
                    "sha256": sha256,
                    "rows": int(rows),
                    "recorded_at": recorded_at or datetime.now(UTC),
                }
            ],
        )


def _fallback_snapshot(store: Any, model_name: str, batch_id: str) -> str | None:
    """A batch scored before batch_snapshots existed: its default id is its hash's first 16."""
    prefix = f"datasets/{model_name}-batches/"
    found = [
        key[len(prefix) : -len(".json")]
        for key in store.list(prefix)
        if key.endswith(".json") and key[len(prefix) :].startswith(batch_id)
    ]
    return f"{model_name}-batches/{found[0]}" if len(found) == 1 else None


# --------------------------------------------------------------------------- reading a file


def _read_table(source: str) -> pd.DataFrame:
    """A CSV or Parquet feedback file, every column as text (batch ids stay as written)."""
    path = Path(source).expanduser()
    if not path.exists():
        raise InputError(f"{source}: file not found")
    if path.is_dir():
        raise InputError(f"{source}: is a folder, not a file")
    if path.stat().st_size == 0:
        raise InputError(f"{source}: file is empty")
    if path.suffix.lower() in {".parquet", ".pq"}:
        try:
            frame = pd.read_parquet(path)
        except Exception as exc:
            raise InputError(f"{source}: not a readable Parquet file ({exc})") from exc
        names = [str(c) for c in frame.columns]
    else:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            names = [n.strip() for n in next(csv.reader(fh), [])]
        try:
            frame = pd.read_csv(
                path, dtype=str, keep_default_na=False, skipinitialspace=True, encoding="utf-8-sig"
            )
        except (pd.errors.ParserError, UnicodeDecodeError) as exc:
            raise InputError(f"{source}: cannot parse CSV: {str(exc).strip()}") from exc
    duplicate = next((n for i, n in enumerate(names) if n in names[:i]), None)
    if duplicate is not None:
        raise InputError(f"{source}: duplicate column name {duplicate!r}")
    frame.columns = [str(c).strip() for c in frame.columns]
    return frame


def _text(value: Any) -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return ""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip()


def _whole(text: str) -> int | None:
    """A non-negative whole number written as text ("3", "3.0"), else None."""
    if text.isdigit():
        return int(text)
    try:
        number = float(text)
    except ValueError:
        return None
    return int(number) if np.isfinite(number) and number.is_integer() and number >= 0 else None


def read_feedback(source: str) -> pd.DataFrame:
    """Checked feedback rows: batch_id (text), row_index (int), label (0/1), note (text/None).

    Missing columns, a label other than 0/1, a row index that is not a whole number, an empty
    batch id and the same row twice are errors naming the file, row and value.
    """
    frame = _read_table(source)
    missing = [c for c in REQUIRED if c not in frame.columns]
    if missing:
        raise InputError(
            f"{source}: missing column(s) {', '.join(missing)} "
            f"(a feedback file has {', '.join(REQUIRED)} and optionally note)"
        )
    if frame.empty:
        raise InputError(f"{source}: has a header but no feedback rows")
    batch = [_text(v) for v in frame["batch_id"]]
    label_texts = [_text(v) for v in frame["label"]]
    indexes = [_text(v) for v in frame["row_index"]]
    labels, rows = [_whole(t) for t in label_texts], [_whole(t) for t in indexes]
    for i, (b, label, row) in enumerate(zip(batch, labels, rows, strict=True)):
        where = f"{source}: row {i + 1}"
        if not b:
            raise InputError(f"{where}: batch_id is empty")
        if label not in (0, 1):
            raise InputError(f"{where}: label {label_texts[i] or '(empty)'!r} is not 0 or 1")
        if row is None:
            raise InputError(f"{where}: row_index {indexes[i] or '(empty)'!r} is not a row number")
    notes = [_text(v) or None for v in frame["note"]] if "note" in frame.columns else None
    checked = pd.DataFrame({"batch_id": batch, "row_index": rows, "label": labels, "note": notes})
    twice = checked.duplicated(["batch_id", "row_index"], keep=False)
    if twice.any():
        first, second = (int(i) + 1 for i in np.flatnonzero(twice.to_numpy())[:2])
        raise InputError(
            f"{source}: rows {first} and {second} both label batch "
            f"{checked['batch_id'].iloc[first - 1]!r} row {checked['row_index'].iloc[first - 1]}"
        )
    return checked


# --------------------------------------------------------------------------- writing


def _versions_of_rows(
    conn: sa.Connection, table: sa.Table, rows: pd.DataFrame, *where: Any
) -> list[tuple[str, int, str, int]]:
    """(batch_id, row_index, model_name, model_version) of the table's rows naming `rows`."""
    t = table.c
    found: list[tuple[str, int, str, int]] = []
    for batch_id, group in rows.groupby("batch_id", sort=False):
        indexes = sorted({int(i) for i in group["row_index"]})
        for start in range(0, len(indexes), LOOKUP_CHUNK):
            found += conn.execute(
                sa.select(t.batch_id, t.row_index, t.model_name, t.model_version)
                .where(t.batch_id == batch_id, *where)
                .where(t.row_index.in_(indexes[start : start + LOOKUP_CHUNK]))
            ).all()
    return found


def scored_versions(engine: sa.Engine, rows: pd.DataFrame) -> pd.DataFrame:
    """Every (model_name, model_version) that scored each (batch_id, row_index) of `rows`."""
    with engine.connect() as conn:
        found = _versions_of_rows(conn, detection_results, rows)
    return pd.DataFrame(found, columns=["batch_id", "row_index", "model_name", "model_version"])


def record_feedback(
    engine: sa.Engine,
    source: str,
    labelled_by: str | None = None,
    *,
    labelled_at: datetime | None = None,
) -> dict[str, Any]:
    """Record a feedback file for every model version that scored its rows; all or nothing.

    A batch or row that was never scored is an error naming it, and nothing is written.
    """
    if labelled_by is None:
        try:
            labelled_by = getpass.getuser()
        except (KeyError, OSError) as exc:  # no user name in this environment (a container)
            raise InputError(f"{source}: say who labelled the rows with --by NAME") from exc
    labelled_by = labelled_by.strip()
    if not labelled_by or len(labelled_by) > 200:
        raise InputError(f"--by {labelled_by!r}: give a name of 1 to 200 characters")
    rows = read_feedback(source)
    scored = scored_versions(engine, rows).astype({"row_index": "int64"})
    joined = rows.assign(line=np.arange(1, len(rows) + 1)).merge(
        scored, on=["batch_id", "row_index"], how="left"
    )
    unscored = joined[joined["model_name"].isna()]
    if not unscored.empty:
        first = unscored.sort_values("line").iloc[0]
        t = detection_results.c
        with engine.connect() as conn:
            known = conn.scalar(sa.select(sa.exists().where(t.batch_id == first["batch_id"])))
        what = (
            f"batch {first['batch_id']!r} has no scored row {int(first['row_index'])}"
            if known
            else f"batch {first['batch_id']!r} was never scored"
        )
        raise InputError(f"{source}: row {int(first['line'])}: {what}")
    at = labelled_at or datetime.now(UTC)
    typed = joined.drop(columns="line").astype({"row_index": int, "model_version": int})
    records = [
        {**r, "labelled_by": labelled_by, "labelled_at": at} for r in typed.to_dict("records")
    ]
    f = detection_feedback
    keys = {(r["batch_id"], r["row_index"], r["model_name"], r["model_version"]) for r in records}
    with engine.begin() as conn:
        existing = {
            (b, int(i), m, int(v))
            for b, i, m, v in _versions_of_rows(conn, f, rows, f.c.labelled_by == labelled_by)
        }
        _upsert(conn, f, records)
    per_model = joined.groupby(["model_name", "model_version"]).size().reset_index(name="rows")
    return {
        "source": source,
        "labelled_by": labelled_by,
        "rows": len(rows),
        "anomalies": int(rows["label"].sum()),
        "written": len(records),
        "replaced": len(keys & existing),
        "batches": sorted(set(rows["batch_id"])),
        "models": [
            {"model": m, "version": int(v), "rows": int(n)}
            for m, v, n in per_model.itertuples(index=False)
        ],
    }


# --------------------------------------------------------------------------- reading labels


def _has_table(engine: sa.Engine, table: sa.Table) -> bool:
    return sa.inspect(engine).has_table(table.name)


def latest_labels(engine: sa.Engine, model_name: str) -> pd.DataFrame:
    """One label per (batch_id, row_index) of the model's batches: the newest, whoever gave it.

    Columns: batch_id, row_index, model_version (of the newest label), label, labelled_at.
    """
    columns = ["batch_id", "row_index", "model_version", "label", "labelled_at"]
    if not _has_table(engine, detection_feedback):
        return pd.DataFrame(columns=columns)
    f = detection_feedback
    with engine.connect() as conn:
        found = pd.DataFrame(
            conn.execute(
                sa.select(
                    f.c.batch_id, f.c.row_index, f.c.model_version, f.c.label, f.c.labelled_at
                ).where(f.c.model_name == model_name)
            ).all(),
            columns=columns,
        )
    if found.empty:
        return found
    # Newest label wins; equal times break on the newer model version, then stay deterministic.
    found = found.sort_values(["labelled_at", "model_version", "label"], kind="stable")
    latest = found.drop_duplicates(["batch_id", "row_index"], keep="last")
    return latest.sort_values(["batch_id", "row_index"]).reset_index(drop=True)


def model_feedback(engine: sa.Engine, store: Any, model_name: str) -> pd.DataFrame:
    """The model's newest label per scored row, with the `snapshot` (dataset/sha256) of its row."""
    labels = latest_labels(engine, model_name)
    snapshots: dict[tuple[str, int], str] = {}
    if _has_table(engine, batch_snapshots):
        s = batch_snapshots
        with engine.connect() as conn:
            snapshots = {
                (batch_id, int(version)): f"{dataset}/{sha}"
                for batch_id, version, dataset, sha in conn.execute(
                    sa.select(s.c.batch_id, s.c.model_version, s.c.dataset, s.c.sha256).where(
                        s.c.model_name == model_name
                    )
                )
            }
    fallback = cache(partial(_fallback_snapshot, store, model_name))
    found = [
        snapshots.get((b, int(v))) or fallback(b)
        for b, v in zip(labels["batch_id"], labels["model_version"], strict=True)
    ]
    return labels.assign(snapshot=found)


def feedback_rows(
    store: Any, labelled: pd.DataFrame, chunk_rows: int = 50_000
) -> tuple[pd.DataFrame, np.ndarray, int]:
    """Features of labelled rows from their batch snapshots, their labels, and rows left out.

    Rows whose snapshot is unknown (or whose index lies beyond it) cannot be judged on and are
    counted as left out. Only the labelled rows are kept from each snapshot, read in chunks.
    """
    from tasks.ingest import load_manifest, take_rows

    frames: list[pd.DataFrame] = []
    labels: list[np.ndarray] = []
    left_out = int(labelled["snapshot"].isna().sum())
    for part, group in labelled.dropna(subset=["snapshot"]).groupby("snapshot", sort=True):
        dataset, sha = str(part).split("/", 1)
        manifest = load_manifest(store, dataset, sha)
        inside = group[group["row_index"] < manifest.rows]
        left_out += len(group) - len(inside)
        at = inside["row_index"].to_numpy(int)
        rows = take_rows(store, manifest, np.unique(at), chunk_rows)
        frames.append(rows.loc[at].reset_index(drop=True))
        labels.append(inside["label"].to_numpy(int))
    if not frames:
        return pd.DataFrame(), np.zeros(0, int), left_out
    return pd.concat(frames, ignore_index=True), np.concatenate(labels), left_out


def drop_trained_rows(
    features: pd.DataFrame,
    labels: np.ndarray,
    trained_on: Iterable[pd.DataFrame],
    ignore: Iterable[str] = (),
) -> tuple[pd.DataFrame, np.ndarray, int]:
    """Leave out labelled rows a model was fitted on: judging a model on them flatters it.

    Rows are matched by the content of the feature columns both frames share.
    """
    keep = np.ones(len(features), bool)
    ignore = set(ignore)
    for frame in trained_on:  # whole snapshots or their chunks: each is matched on its own
        columns = [c for c in features.columns if c in frame.columns and c not in ignore]
        if not columns or features.empty:
            continue
        seen = pd.util.hash_pandas_object(frame[columns], index=False).to_numpy()
        mine = pd.util.hash_pandas_object(features[columns], index=False).to_numpy()
        keep &= ~np.isin(mine, seen)
    return features[keep].reset_index(drop=True), labels[keep], int((~keep).sum())


def enough_feedback(labels: np.ndarray) -> bool:
    """Whether labels can judge or train: enough anomalies and at least 2 normal rows."""
    labels = np.asarray(labels, int)
    return int(labels.sum()) >= MIN_FEEDBACK_ANOMALIES and int((labels == 0).sum()) >= 2


def apply_feedback_labels(
    frames: list[tuple[str, pd.DataFrame]], labelled: pd.DataFrame, label_column: str | None
) -> tuple[list[pd.DataFrame], str, dict[str, int]] | None:
    """Training frames labelled from feedback, or None when the window's feedback is too thin.

    Feedback (by snapshot and row) sets the label of its rows, over any label the snapshot
    holds. Rows nobody labelled stay in as presumed normal (0), the semi-supervised setting of
    ADBench that benchmarks/adbench.py --label-fractions measures: analysts label what was
    flagged, so the labelled rows alone would be a skewed sample, and a model trained on them
    only would never have seen the ordinary rows it must score.
    """
    parts = {part for part, _ in frames}
    mine = labelled[labelled["snapshot"].isin(parts)]
    if mine.empty or not enough_feedback(mine["label"].to_numpy()):
        return None
    column = label_column or FEEDBACK_LABEL
    out: list[pd.DataFrame] = []
    stats = {"feedback_rows": 0, "feedback_anomalies": 0, "unlabelled_rows_presumed_normal": 0}
    for part, frame in frames:
        if label_column is None and FEEDBACK_LABEL in frame.columns:
            raise InputError(
                f"snapshot {part} has a column named {FEEDBACK_LABEL!r}, the name feedback "
                "labels take; rename it or train with --label-column"
            )
        # A frame's index is the snapshot's row number (a sample of it keeps them).
        given = mine[mine["snapshot"] == part]
        given = given[given["row_index"].isin(frame.index)]
        base = (
            pd.to_numeric(frame[column], errors="coerce").astype(float)
            if column in frame.columns
            else pd.Series(np.nan, index=frame.index)
        )
        base.loc[given["row_index"].to_numpy()] = given["label"].to_numpy(float)
        stats["feedback_rows"] += len(given)
        stats["feedback_anomalies"] += int(given["label"].sum())
        stats["unlabelled_rows_presumed_normal"] += int(base.isna().sum())
        labelled = frame.assign(**{column: base.fillna(0).astype(int)})
        out.append(labelled.reset_index(drop=True))
    return out, column, stats


# --------------------------------------------------------------------------- monitoring


@dataclass(frozen=True)
class FeedbackCounts:
    """Labelled rows of one model version, and how many of its flagged rows proved anomalous."""

    model: str
    version: int
    labelled_rows: int
    labelled_anomalies: int
    labelled_flagged: int
    flagged_true: int

    @property
    def flagged_precision(self) -> float | None:
        return self.flagged_true / self.labelled_flagged if self.labelled_flagged else None


def feedback_counts(engine: sa.Engine) -> list[FeedbackCounts]:
    """Per model version: labelled rows, labelled anomalies, labelled flagged rows, true ones.

    The newest label of each row counts (people may disagree); one aggregate query joined to
    the scored rows on their key. No feedback table (an older DB) reads as no feedback.
    """
    if not _has_table(engine, detection_feedback):
        return []
    f, r = detection_feedback, detection_results
    newest = sa.func.row_number().over(
        partition_by=(f.c.batch_id, f.c.row_index, f.c.model_name, f.c.model_version),
        order_by=(f.c.labelled_at.desc(), f.c.labelled_by.desc()),
    )
    ranked = sa.select(
        f.c.batch_id, f.c.row_index, f.c.model_name, f.c.model_version, f.c.label,
        newest.label("n"),
    ).subquery()  # fmt: skip
    latest = sa.select(ranked).where(ranked.c.n == 1).subquery()
    flagged = sa.cast(r.c.is_anomaly, sa.Integer)
    query = (
        sa.select(
            latest.c.model_name,
            latest.c.model_version,
            sa.func.count(),
            sa.func.coalesce(sa.func.sum(latest.c.label), 0),
            sa.func.coalesce(sa.func.sum(flagged), 0),
            sa.func.coalesce(sa.func.sum(flagged * latest.c.label), 0),
        )
        .select_from(
            latest.join(
                r,
                sa.and_(
                    r.c.batch_id == latest.c.batch_id,
                    r.c.row_index == latest.c.row_index,
                    r.c.model_name == latest.c.model_name,
                    r.c.model_version == latest.c.model_version,
                ),
            )
        )
        .group_by(latest.c.model_name, latest.c.model_version)
        .order_by(latest.c.model_name, latest.c.model_version)
    )
    with engine.connect() as conn:
        return [
            FeedbackCounts(str(m), int(v), int(n), int(a), int(fl), int(t))
            for m, v, n, a, fl, t in conn.execute(query)
        ]


def results_db_exists(url: str) -> bool:
    """False for a SQLite results DB not created yet (reading must not create it)."""
    parsed = sa.engine.make_url(url)
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return True
    return Path(parsed.database).exists()


def gate_feedback(
    engine: sa.Engine,
    store: Any,
    model_name: str,
    trained_on: list[str],
    ignore: list[str],
    chunk_rows: int = 50_000,
) -> FeedbackRows | None:
    """The model's labelled rows for the gate, less those either compared version trained on.

    `trained_on` holds `dataset/sha256` of the compared versions' training snapshots, read
    chunk by chunk; None when nobody has labelled a row of the model's batches.
    """
    from tasks.ingest import iter_snapshot, load_manifest

    labelled = model_feedback(engine, store, model_name)
    if labelled.empty:
        return None
    features, labels, missing = feedback_rows(store, labelled, chunk_rows)
    chunks = (
        chunk
        for part in trained_on
        for chunk in iter_snapshot(store, load_manifest(store, *part.split("/", 1)), chunk_rows)
    )
    features, labels, trained = drop_trained_rows(features, labels, chunks, ignore)
    return FeedbackRows(features, labels, missing + trained)


def record_feedback_file(
    results_url: str, source: str, labelled_by: str | None = None
) -> dict[str, Any]:
    """`pynomaly feedback SOURCE`: record a feedback file in the results DB at `results_url`."""
    if not results_db_exists(results_url):
        raise InputError(
            f"{source}: no batch was ever scored (results database "
            f"{sa.engine.make_url(results_url).database} does not exist)"
        )
    engine = feedback_engine(results_url)
    try:
        return record_feedback(engine, source, labelled_by)
    finally:
        engine.dispose()
