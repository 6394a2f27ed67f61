"""Platform metrics for Prometheus, read fresh on every scrape (health.py reuses the readers).

Plain functions read the results DB, the MLflow registry, the artifact store and the backup
store; `PlatformCollector` turns them into `pynomaly_*` metric families. A source that fails
(database down, tracking server unreachable) only drops its own metrics and sets
`pynomaly_scrape_error{source=...}` to 1: the others are still exported.
Nothing here runs at import time; heavy imports happen inside the functions.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

SOURCES = ("results", "registry", "backups")

# name -> (type, help, label names). The exporter's contract: alerts.yml, the Grafana dashboard
# and the tests check their metric names against this table. Counters get `_total` on the wire.
METRICS: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "pynomaly_detection_rows": (
        "counter",
        "Rows in detection_results per model version (a re-scored batch replaces its rows).",
        ("model", "version"),
    ),
    "pynomaly_anomalies": (
        "counter",
        "Rows flagged anomalous in detection_results per model.",
        ("model",),
    ),
    "pynomaly_last_scored_timestamp_seconds": (
        "gauge",
        "Unix time of the newest detection row per model.",
        ("model",),
    ),
    "pynomaly_detection_rows_24h": (
        "gauge",
        "Detection rows scored in the last 24 hours per model.",
        ("model",),
    ),
    "pynomaly_anomaly_share_24h": (
        "gauge",
        "Share of anomalous rows among those scored in the last 24 hours per model.",
        ("model",),
    ),
    "pynomaly_anomaly_share_7d": (
        "gauge",
        "Share of anomalous rows among those scored in the last 7 days per model.",
        ("model",),
    ),
    "pynomaly_flagged_precision": (
        "gauge",
        "Share of the flagged rows analysts labelled that they labelled anomalous (1), per "
        "model version (absent until a flagged row is labelled).",
        ("model", "version"),
    ),
    "pynomaly_feedback_labelled_flagged_rows": (
        "gauge",
        "Flagged rows with an analyst label per model version (the precision's denominator).",
        ("model", "version"),
    ),
    "pynomaly_feedback_labelled_rows": (
        "gauge",
        "Scored rows with an analyst label per model version (newest label per row).",
        ("model", "version"),
    ),
    "pynomaly_feedback_labelled_anomalies": (
        "gauge",
        "Scored rows analysts labelled anomalous (1) per model version.",
        ("model", "version"),
    ),
    "pynomaly_champion_version": (
        "gauge",
        "Version number the champion alias points at (absent when there is no champion).",
        ("model",),
    ),
    "pynomaly_model_has_champion": (
        "gauge",
        "1 when the model's champion alias points at an existing, ready version, else 0.",
        ("model",),
    ),
    "pynomaly_registered_model_versions": (
        "gauge",
        "Registered versions per model.",
        ("model",),
    ),
    "pynomaly_backup_newest_age_seconds": (
        "gauge",
        "Seconds since the newest complete backup was taken (absent when there is none).",
        (),
    ),
    "pynomaly_backup_count": ("gauge", "Complete backups in the backup store.", ()),
    "pynomaly_scrape_duration_seconds": (
        "gauge",
        "Seconds this scrape spent reading each source.",
        ("source",),
    ),
    "pynomaly_scrape_error": (
        "gauge",
        "1 when reading the source failed in this scrape, else 0.",
        ("source",),
    ),
    "pynomaly_scrape_errors": (
        "counter",
        "Failed reads of each source since the exporter started.",
        ("source",),
    ),
}


def exposed_names() -> set[str]:
    """Every sample name the exporter can emit (counters with their `_total` suffix)."""
    return {f"{n}_total" if kind == "counter" else n for n, (kind, _, _) in METRICS.items()}


def _utc(value: Any) -> datetime | None:
    """A datetime from the DB as aware UTC (SQLite hands back naive values, stored as UTC)."""
    if value is None:
        return None
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


# Results DB ----------------------------------------------------------------------------------


def results_reader_engine(url: str) -> Any:
    """An engine for reading the results DB that never creates anything.

    A missing SQLite file is an error (SQLite would create an empty one); PostgreSQL gets a
    short connect timeout so an unreachable server fails a scrape quickly.
    """
    import sqlalchemy as sa

    from pynomaly.errors import InputError

    parsed = sa.engine.make_url(url)
    connect_args: dict[str, Any] = {}
    if parsed.get_backend_name() == "sqlite":
        path = parsed.database
        if path and path != ":memory:" and not Path(path).exists():
            raise InputError(f"results database {path} does not exist (nothing scored yet?)")
    elif parsed.get_backend_name() == "postgresql":
        connect_args["connect_timeout"] = 5
    return sa.create_engine(url, pool_pre_ping=True, connect_args=connect_args)


@dataclass
class ModelResults:
    """What detection_results holds for one model."""

    rows_by_version: dict[int, int] = field(default_factory=dict)
    anomalies: int = 0
    last_scored: datetime | None = None
    rows_24h: int = 0
    anomalies_24h: int = 0
    rows_7d: int = 0
    anomalies_7d: int = 0
    feedback: dict[int, Any] = field(default_factory=dict)  # version -> feedback.FeedbackCounts

    @property
    def share_24h(self) -> float | None:
        return self.anomalies_24h / self.rows_24h if self.rows_24h else None

    @property
    def share_7d(self) -> float | None:
        return self.anomalies_7d / self.rows_7d if self.rows_7d else None


def read_results(engine: Any, now: datetime) -> dict[str, ModelResults]:
    """Per-model totals and 24 h / 7 d windows in one aggregate query over batch summaries.

    They read detection_batches, one row per scored batch, so a scrape never scans the scored
    rows. A results DB from before that table is summarised on the fly from detection_results
    (the same columns); a missing results table reads as no rows.
    """
    import sqlalchemy as sa

    from tasks.feedback import feedback_counts
    from tasks.results import detection_batches, detection_results, summarised_rows

    inspector = sa.inspect(engine)
    if inspector.has_table(detection_batches.name):
        b = detection_batches
    elif inspector.has_table(detection_results.name):
        b = summarised_rows().subquery()
    else:
        return {}

    def total(column: Any, since: datetime | None = None) -> Any:
        if since is not None:
            column = sa.case((b.c.scored_at >= since, column), else_=0)
        return sa.func.coalesce(sa.func.sum(column), 0)

    # Per version: all time, the last 24 hours, the last 7 days (rows, then anomalies).
    since = (None, now - timedelta(days=1), now - timedelta(days=7))
    sums = [total(c, s) for s in since for c in (b.c.row_count, b.c.anomaly_count)]
    query = sa.select(b.c.model_name, b.c.model_version, sa.func.max(b.c.scored_at), *sums)
    found: dict[str, ModelResults] = {}
    with engine.connect() as conn:
        for name, version, last, *values in conn.execute(
            query.group_by(b.c.model_name, b.c.model_version)
        ):
            rows, anomalies, rows_24h, anomalies_24h, rows_7d, anomalies_7d = map(int, values)
            m = found.setdefault(name, ModelResults())
            m.rows_by_version[int(version)] = rows
            m.anomalies += anomalies
            m.last_scored = max(filter(None, (m.last_scored, _utc(last))), default=None)
            m.rows_24h += rows_24h
            m.anomalies_24h += anomalies_24h
            m.rows_7d += rows_7d
            m.anomalies_7d += anomalies_7d
    # Analyst labels: one aggregate over the (human-sized) feedback table.
    for counts in feedback_counts(engine):
        found.setdefault(counts.model, ModelResults()).feedback[counts.version] = counts
    return found


# MLflow registry -----------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelRegistration:
    """A registered model: its versions and where its champion alias points."""

    versions: int
    champion: int | None
    champion_exists: bool


def check_tracking_store(tracking_uri: str) -> None:
    """Fail when the tracking store cannot be read; never create an embedded SQLite store."""
    from pynomaly.errors import InputError

    if tracking_uri.startswith("sqlite:///"):
        path = tracking_uri.removeprefix("sqlite:///")
        if not Path(path).exists():
            raise InputError(f"MLflow database {path} does not exist (nothing trained yet?)")


def read_registry(tracking_uri: str) -> dict[str, ModelRegistration]:
    """Every registered model with its version count and champion (one search per model)."""
    from mlflow.utils import get_results_from_paginated_fn

    from registry.versions import CHAMPION, client

    check_tracking_store(tracking_uri)
    mlflow_client = client(tracking_uri)
    models = get_results_from_paginated_fn(
        lambda n, token: mlflow_client.search_registered_models(max_results=n, page_token=token),
        max_results_per_page=200,
    )
    found: dict[str, ModelRegistration] = {}
    for rm in models:
        versions = mlflow_client.search_model_versions(f"name='{rm.name}'")
        statuses = {int(v.version): v.status for v in versions}
        champion = int(rm.aliases[CHAMPION]) if CHAMPION in (rm.aliases or {}) else None
        found[rm.name] = ModelRegistration(
            len(statuses), champion, champion_exists=statuses.get(champion) == "READY"
        )
    return found


# Stores --------------------------------------------------------------------------------------


def check_store(root: str, endpoint_url: str | None) -> None:
    """Fail when a folder or s3://bucket/prefix store cannot be read (one small listing)."""
    from pynomaly.errors import InputError
    from tasks.store import s3_client, s3_error, split_s3_uri

    if not root.startswith("s3://"):
        if not Path(root).is_dir():
            raise InputError(f"store folder {root} does not exist")
        return
    bucket, prefix = split_s3_uri(root.rstrip("/") + "/")
    try:
        s3_client(endpoint_url).list_objects_v2(Bucket=bucket, Prefix=prefix, MaxKeys=1)
    except Exception as exc:
        raise s3_error(exc, root, endpoint_url) from exc


@dataclass(frozen=True)
class Backups:
    """The complete backups in the backup store."""

    count: int
    newest: datetime | None
    unusable: tuple[str, ...] = ()  # "id (status)" of malformed, unsigned or altered backups

    def newest_age_seconds(self, now: datetime) -> float | None:
        return (now - self.newest).total_seconds() if self.newest else None


def read_backups(root: str, endpoint_url: str | None) -> Backups:
    """Count and newest creation time of the usable backups (a well-formed, signed manifest;
    signatures are checked by verify and the drill, which hold the key); the others named."""
    from tasks import backup

    if not root.startswith("s3://") and not Path(root).is_dir():
        return Backups(0, None)  # no backup taken yet: the folder appears with the first
    listed = backup.list_backups(backup.backup_store(root, endpoint_url))
    usable = [b for b in listed if b["status"] in backup.USABLE_STATUSES]
    newest = max((_utc(b["created_at"]) for b in usable), default=None)
    bad = tuple(f"{b['id']} ({b['status']})" for b in listed if b not in usable)
    return Backups(len(usable), newest, bad)


# Collector -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sources:
    """Where the collector reads from (taken from Settings at the edge)."""

    results_url: str
    tracking_uri: str
    backup_root: str
    s3_endpoint_url: str | None = None

    @classmethod
    def from_settings(cls, settings: Any) -> Sources:
        return cls(
            results_url=settings.results_url,
            tracking_uri=settings.mlflow_tracking_uri,
            backup_root=settings.backup_store_root,
            s3_endpoint_url=settings.s3_endpoint_url,
        )


class PlatformCollector:
    """A prometheus_client collector that queries every source on each scrape."""

    def __init__(
        self, sources: Sources, now: Callable[[], datetime] = lambda: datetime.now(UTC)
    ) -> None:
        self.sources = sources
        self.now = now
        self._engine: Any = None
        self._errors = dict.fromkeys(SOURCES, 0)

    def describe(self) -> Iterator[Any]:
        """Families without samples: registering the collector queries nothing."""
        yield from _families().values()

    def _results_engine(self) -> Any:
        if self._engine is None:
            self._engine = results_reader_engine(self.sources.results_url)
        return self._engine

    def read(self) -> dict[str, Any]:
        """One reading of every source: {source: value or exception} plus seconds per source."""
        now = self.now()
        readers = {
            "results": lambda: read_results(self._results_engine(), now),
            "registry": lambda: read_registry(self.sources.tracking_uri),
            "backups": lambda: read_backups(self.sources.backup_root, self.sources.s3_endpoint_url),
        }
        values: dict[str, Any] = {"now": now, "seconds": {}}
        for source, reader in readers.items():
            started = time.perf_counter()
            try:
                values[source] = reader()
            except Exception as exc:  # noqa: BLE001 - reported as pynomaly_scrape_error
                values[source] = exc
                self._errors[source] += 1
                if source == "results":
                    self.close()  # a fresh engine on the next scrape
            values["seconds"][source] = time.perf_counter() - started
        return values

    def collect(self) -> Iterator[Any]:
        values = self.read()
        fam = _families()

        def add(name: str, labels: list[str], value: float | None) -> None:
            if value is not None:  # an unknown value (no champion, no backup...) is absent
                fam[name].add_metric(labels, value)

        results = values["results"]
        for model, m in sorted({} if isinstance(results, Exception) else results.items()):
            for version, rows in sorted(m.rows_by_version.items()):
                add("pynomaly_detection_rows", [model, str(version)], rows)
            add("pynomaly_anomalies", [model], m.anomalies)
            last = m.last_scored.timestamp() if m.last_scored else None
            add("pynomaly_last_scored_timestamp_seconds", [model], last)
            add("pynomaly_detection_rows_24h", [model], m.rows_24h)
            add("pynomaly_anomaly_share_24h", [model], m.share_24h)
            add("pynomaly_anomaly_share_7d", [model], m.share_7d)
            for version, c in sorted(m.feedback.items()):
                key = [model, str(version)]
                add("pynomaly_flagged_precision", key, c.flagged_precision)
                add("pynomaly_feedback_labelled_flagged_rows", key, c.labelled_flagged)
                add("pynomaly_feedback_labelled_rows", key, c.labelled_rows)
                add("pynomaly_feedback_labelled_anomalies", key, c.labelled_anomalies)
        registry = values["registry"]
        for model, r in sorted({} if isinstance(registry, Exception) else registry.items()):
            add("pynomaly_champion_version", [model], r.champion)
            add("pynomaly_model_has_champion", [model], int(r.champion_exists))
            add("pynomaly_registered_model_versions", [model], r.versions)
        backups = values["backups"]
        if not isinstance(backups, Exception):
            add("pynomaly_backup_newest_age_seconds", [], backups.newest_age_seconds(values["now"]))
            add("pynomaly_backup_count", [], backups.count)
        for source in SOURCES:
            add("pynomaly_scrape_duration_seconds", [source], values["seconds"][source])
            add("pynomaly_scrape_error", [source], int(isinstance(values[source], Exception)))
            add("pynomaly_scrape_errors", [source], self._errors[source])
        yield from fam.values()

    def close(self) -> None:
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None


def _families() -> dict[str, Any]:
    """Empty metric families, one per row of METRICS."""
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

    kinds = {"counter": CounterMetricFamily, "gauge": GaugeMetricFamily}
    return {
        name: kinds[kind](name, help_text, labels=list(labels))
        for name, (kind, help_text, labels) in METRICS.items()
    }


def metrics_registry(collector: PlatformCollector) -> Any:
    """A registry holding only the platform collector (no process metrics of the CLI)."""
    from prometheus_client import CollectorRegistry

    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    return registry


def samples(registry: Any) -> list[dict[str, Any]]:
    """Every sample of one scrape as {name, labels, value}."""
    return [
        {"name": s.name, "labels": dict(s.labels), "value": s.value}
        for family in registry.collect()
        for s in family.samples
    ]
