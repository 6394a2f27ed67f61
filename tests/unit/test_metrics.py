"""The Prometheus exporter, `pynomaly health` and the monitoring files that depend on them."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest
import typer
import yaml
from backup_state import log_versions
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from typer.testing import CliRunner

from deployments.cli.metrics import health, metrics_app
from deployments.monitoring.exporter import (
    METRICS,
    PlatformCollector,
    Sources,
    exposed_names,
    metrics_registry,
)
from tasks import backup
from tasks.backup import manifest as manifest_format
from tasks.results import replace_batch, results_engine

MONITORING = Path(__file__).resolve().parents[2] / "deployments" / "monitoring"
NOW = datetime(2026, 1, 10, 12, 0, tzinfo=UTC)
UNREACHABLE_PG = "postgresql+psycopg2://u:p@127.0.0.1:9/x"


def _batch(engine, batch_id: str, model: str, version: int, flags: list[bool], at: datetime):
    frame = pd.DataFrame(
        {"row_index": range(len(flags)), "score": [float(f) for f in flags], "is_anomaly": flags}
    )
    replace_batch(engine, batch_id, [frame], model_name=model, model_version=version, scored_at=at)


def _fake_backup(settings, created: datetime, complete: bool = True) -> None:
    """A backup as list_backups sees it: an id folder with (or without) its manifest."""
    store = backup.backup_store(settings.backup_store_root)
    backup_id = backup.new_backup_id(created)
    store.put_bytes(f"{backup_id}/results.db.gz", b"stand-in")
    if complete:
        manifest = {
            "format": manifest_format.FORMAT_VERSION,
            "id": backup_id,
            "created_at": manifest_format.backup_time(backup_id).isoformat(),
            "kind": "manual",
            "platform": {},
            "schema": {"mlflow_alembic_revision": None},
            "databases": {},
            "artifacts": {"mode": "copy", "root_uri": "file:///nowhere"},
            "champions": [],
            "files": {
                name: {"sha256": "0" * 64, "bytes": 8}
                for name in (manifest_format.ARTIFACTS_COPY, manifest_format.EXPECTATIONS)
            },
            "counts": {},
        }
        # Signed by some key: health checks the form, not the key (the drill does).
        manifest_format.write_manifest(store, manifest, backup.BackupKey(b"k" * 32, "test"))


@pytest.fixture(scope="module")
def registry_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """alpha (v1 champion, v2 challenger) and beta (v1 champion), logged once per module."""
    from pynomaly.settings import Settings

    home = tmp_path_factory.mktemp("template") / "home"
    home.mkdir()
    settings = Settings(home=home)
    log_versions(settings, "alpha", 2)
    log_versions(settings, "beta", 1)
    return home


@pytest.fixture
def state(platform_home: Path, registry_template: Path):
    """A platform home with the registered models and results written at known times."""
    import shutil

    from pynomaly.settings import get_settings

    # The template's artifact URIs point into its own home: keep that path valid by copying
    # the MLflow DB only and pointing the artifact root at the template's artifacts.
    platform_home.mkdir(parents=True)
    shutil.copy(registry_template / "mlflow.db", platform_home / "mlflow.db")
    settings = get_settings()
    engine = results_engine(settings.results_url)
    _batch(engine, "old", "alpha", 1, [True] * 5 + [False] * 5, NOW - timedelta(days=3))
    _batch(engine, "new", "alpha", 2, [True] * 2 + [False] * 18, NOW - timedelta(hours=1))
    _batch(engine, "ancient", "beta", 1, [True] + [False] * 3, NOW - timedelta(days=30))
    engine.dispose()
    (platform_home / "artifacts").mkdir(exist_ok=True)
    return settings


def _scrape(settings, now: datetime = NOW) -> dict[tuple[str, tuple], float]:
    """{(sample name, sorted labels): value} from one exposition of the exporter."""
    collector = PlatformCollector(Sources.from_settings(settings), now=lambda: now)
    text = generate_latest(metrics_registry(collector)).decode()
    collector.close()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_metric_values(state) -> None:
    from registry.versions import client

    client(state.mlflow_tracking_uri).create_registered_model("gamma")  # no version, no champion
    _fake_backup(state, NOW - timedelta(hours=2))
    _fake_backup(state, NOW - timedelta(hours=30))
    _fake_backup(state, NOW - timedelta(hours=1), complete=False)  # still being written

    got = _scrape(state)
    values = {k: v for k, v in got.items() if not k[0].startswith("pynomaly_scrape_duration")}

    def m(model: str) -> tuple:
        return (("model", model),)

    assert values == {
        ("pynomaly_detection_rows_total", (("model", "alpha"), ("version", "1"))): 10,
        ("pynomaly_detection_rows_total", (("model", "alpha"), ("version", "2"))): 20,
        ("pynomaly_detection_rows_total", (("model", "beta"), ("version", "1"))): 4,
        ("pynomaly_anomalies_total", m("alpha")): 7,
        ("pynomaly_anomalies_total", m("beta")): 1,
        ("pynomaly_last_scored_timestamp_seconds", m("alpha")): (
            NOW - timedelta(hours=1)
        ).timestamp(),
        ("pynomaly_last_scored_timestamp_seconds", m("beta")): (
            NOW - timedelta(days=30)
        ).timestamp(),
        ("pynomaly_detection_rows_24h", m("alpha")): 20,
        ("pynomaly_detection_rows_24h", m("beta")): 0,
        ("pynomaly_anomaly_share_24h", m("alpha")): 0.1,
        ("pynomaly_anomaly_share_7d", m("alpha")): pytest.approx(7 / 30),
        ("pynomaly_champion_version", m("alpha")): 1,
        ("pynomaly_champion_version", m("beta")): 1,
        ("pynomaly_model_has_champion", m("alpha")): 1,
        ("pynomaly_model_has_champion", m("beta")): 1,
        ("pynomaly_model_has_champion", m("gamma")): 0,
        ("pynomaly_registered_model_versions", m("alpha")): 2,
        ("pynomaly_registered_model_versions", m("beta")): 1,
        ("pynomaly_registered_model_versions", m("gamma")): 0,
        ("pynomaly_backup_newest_age_seconds", ()): 7200,
        ("pynomaly_backup_count", ()): 2,
        **{
            ("pynomaly_scrape_error", (("source", s),)): 0
            for s in ("results", "registry", "backups")
        },
        **{
            ("pynomaly_scrape_errors_total", (("source", s),)): 0
            for s in ("results", "registry", "backups")
        },
    }
    durations = [v for k, v in got.items() if k[0] == "pynomaly_scrape_duration_seconds"]
    assert len(durations) == 3 and all(d >= 0 for d in durations)


def test_results_db_from_before_the_batch_summaries(state) -> None:
    """An older results DB has no detection_batches: read on the fly, then backfilled once."""
    import sqlalchemy as sa

    from tasks.results import backfill_batches

    def values() -> dict:
        return {k: v for k, v in _scrape(state).items() if "scrape_duration" not in k[0]}

    expected = values()
    engine = sa.create_engine(state.results_url)
    with engine.begin() as conn:
        conn.execute(sa.text("DROP TABLE detection_batches"))
    assert values() == expected
    results_engine(state.results_url).dispose()  # creates the table and backfills it
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM detection_batches")).scalar() == 3
    assert values() == expected
    assert backfill_batches(engine) == 0  # once only
    engine.dispose()


def test_failed_source_keeps_the_others(state, monkeypatch: pytest.MonkeyPatch) -> None:
    """An unreachable results DB drops only its own metrics and counts the error per scrape."""
    sources = Sources.from_settings(state)
    broken = Sources(UNREACHABLE_PG, sources.tracking_uri, sources.backup_root)
    collector = PlatformCollector(broken, now=lambda: NOW)
    registry = metrics_registry(collector)
    generate_latest(registry)
    text = generate_latest(registry).decode()
    got = {
        (s.name, tuple(s.labels.values())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    assert got[("pynomaly_scrape_error", ("results",))] == 1
    assert got[("pynomaly_scrape_errors_total", ("results",))] == 2
    assert got[("pynomaly_scrape_error", ("registry",))] == 0
    assert got[("pynomaly_champion_version", ("alpha",))] == 1
    assert got[("pynomaly_backup_count", ())] == 0
    assert not any(name.startswith("pynomaly_detection_rows") for name, _ in got)


def _cli() -> typer.Typer:
    app = typer.Typer()
    app.command("health")(health)
    app.add_typer(metrics_app, name="metrics")
    return app


def test_health_json(state, monkeypatch: pytest.MonkeyPatch) -> None:
    from pynomaly.settings import get_settings

    runner = CliRunner()
    _fake_backup(state, datetime.now(UTC) - timedelta(hours=1))
    result = runner.invoke(_cli(), ["health", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["healthy"] is True
    assert set(report["checks"]) == {
        "results_db",
        "tracking_store",
        "champion:alpha",
        "champion:beta",
        "artifact_store",
        "backups",
    }

    # A stale backup is unhealthy.
    result = runner.invoke(_cli(), ["health", "--json", "--max-backup-age-hours", "0.5"])
    assert result.exit_code == 1
    assert json.loads(result.stdout)["checks"]["backups"]["ok"] is False

    # An unreachable results database is unhealthy; the other checks still run and pass.
    monkeypatch.setenv("PYNOMALY_RESULTS_DB_URL", UNREACHABLE_PG)
    get_settings.cache_clear()
    result = runner.invoke(_cli(), ["health", "--json"])
    assert result.exit_code == 1
    report = json.loads(result.stdout)
    assert report["healthy"] is False
    assert report["checks"]["results_db"]["ok"] is False
    assert "OperationalError" in report["checks"]["results_db"]["detail"]
    assert all(c["ok"] for name, c in report["checks"].items() if name != "results_db")


def test_health_model_without_champion(state) -> None:
    from registry.versions import client

    client(state.mlflow_tracking_uri).delete_registered_model_alias("beta", "champion")
    _fake_backup(state, datetime.now(UTC))
    result = CliRunner().invoke(_cli(), ["health", "--json"])
    assert result.exit_code == 1
    check = json.loads(result.stdout)["checks"]["champion:beta"]
    assert check == {"ok": False, "detail": "no champion alias"}


def test_metrics_show_json(state) -> None:
    result = CliRunner().invoke(_cli(), ["metrics", "show", "--json"])
    assert result.exit_code == 0, result.output
    samples = json.loads(result.stdout)["samples"]
    rows = {
        (s["labels"]["model"], s["labels"]["version"]): s["value"]
        for s in samples
        if s["name"] == "pynomaly_detection_rows_total"
    }
    assert rows == {("alpha", "1"): 10, ("alpha", "2"): 20, ("beta", "1"): 4}


def test_exposed_names_match_the_table() -> None:
    assert exposed_names() == {
        f"{n}_total" if kind == "counter" else n for n, (kind, _, _) in METRICS.items()
    }
    assert all(n.startswith("pynomaly_") for n in METRICS)


# Monitoring files ----------------------------------------------------------------------------

# Series Prometheus makes itself (the exporter cannot expose them).
PROMETHEUS_SERIES = {"up"}
FUNCTIONS = {
    "abs", "absent", "avg", "avg_over_time", "by", "clamp_min", "count", "max", "min", "on",
    "or", "and", "unless", "sum", "time", "without", "ignoring", "group_left", "bool",
    "increase", "rate", "delta", "changes", "max_over_time", "min_over_time", "vector",
    "label_replace", "offset", "topk", "bottomk", "sort", "sort_desc", "scalar", "deriv",
}  # fmt: skip


def _series_names(expr: str) -> set[str]:
    """Metric names in a PromQL expression (labels, strings, durations and functions dropped)."""
    expr = re.sub(r'"[^"]*"', "", expr)
    expr = re.sub(r"\{[^}]*\}", "", expr)
    expr = re.sub(r"\[[^\]]*\]", "", expr)
    expr = re.sub(r"\b(?:by|without|on|ignoring)\s*\([^)]*\)", "", expr)
    names = set(re.findall(r"\b[a-zA-Z_:][a-zA-Z0-9_:]*\b", expr))
    return {n for n in names if n not in FUNCTIONS and not re.fullmatch(r"\d+[smhdwy]?", n)}


def _alert_rules() -> list[dict]:
    doc = yaml.safe_load((MONITORING / "alerts.yml").read_text())
    assert isinstance(doc["groups"], list) and doc["groups"]
    rules = []
    for group in doc["groups"]:
        assert group["name"] and group["rules"]
        rules += group["rules"]
    return rules


def test_alert_rules_structure() -> None:
    rules = _alert_rules()
    for rule in rules:
        assert set(rule) >= {"alert", "expr", "for", "labels", "annotations"}, rule
        assert re.fullmatch(r"[A-Z][A-Za-z0-9]+", rule["alert"])
        assert re.fullmatch(r"\d+[smhd]", rule["for"])
        assert rule["labels"]["severity"] in {"warning", "critical"}
        assert rule["annotations"]["summary"]
    names = {r["alert"] for r in rules}
    assert len(names) == len(rules)
    used = set().union(*(_series_names(r["expr"]) for r in rules))
    # The brief's five conditions each have a rule on the metric that carries them.
    for metric in (
        "pynomaly_last_scored_timestamp_seconds",
        "pynomaly_anomaly_share_24h",
        "pynomaly_anomaly_share_7d",
        "pynomaly_backup_newest_age_seconds",
        "pynomaly_model_has_champion",
        "up",
    ):
        assert metric in used


def test_monitoring_files_use_only_exposed_metrics() -> None:
    known = exposed_names() | PROMETHEUS_SERIES
    for rule in _alert_rules():
        unknown = _series_names(rule["expr"]) - known
        assert not unknown, (rule["alert"], unknown)

    dashboard = json.loads((MONITORING / "grafana-dashboard.json").read_text())
    exprs = [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]
    assert len(exprs) >= 6
    for expr in exprs:
        assert not _series_names(expr) - known, expr
    used = set().union(*(_series_names(e) for e in exprs))
    assert used >= {"pynomaly_detection_rows_total", "pynomaly_anomaly_share_24h"}

    scrape = yaml.safe_load((MONITORING / "prometheus.yml").read_text())
    assert "alerts.yml" in scrape["rule_files"]
    jobs = {j["job_name"]: j for j in scrape["scrape_configs"]}
    assert any(":9108" in t for c in jobs["pynomaly"]["static_configs"] for t in c["targets"])


def test_health_names_a_champion_whose_artifacts_are_gone(platform_home: Path) -> None:
    import shutil

    from pynomaly.settings import get_settings
    from registry.versions import client

    settings = get_settings()
    log_versions(settings, "delta", 1)
    _fake_backup(settings, datetime.now(UTC))
    results_engine(settings.results_url).dispose()
    result = CliRunner().invoke(_cli(), ["health", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["checks"]["champion:delta"]["ok"] is True

    # The champion's model folder goes missing: health fails and names the model.
    mlflow_client = client(settings.mlflow_tracking_uri)
    source = mlflow_client.get_model_version_by_alias("delta", "champion").source
    model_id = source.rsplit("/", 1)[-1]
    location = mlflow_client.get_logged_model(model_id).artifact_location
    shutil.rmtree(Path(location.removeprefix("file://")))
    result = CliRunner().invoke(_cli(), ["health", "--json"])
    assert result.exit_code == 1, result.output
    check = json.loads(result.stdout)["checks"]["champion:delta"]
    assert check["ok"] is False
    assert check["detail"].startswith("InputError: delta v1: artifacts do not load"), check
