"""`pynomaly health`: every dependency of the platform checked once, {healthy, checks}."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from deployments.monitoring.exporter import (
    ModelRegistration,
    Sources,
    check_store,
    read_backups,
    read_registry,
    results_reader_engine,
)
from pynomaly.errors import InputError, first_line


def _check(work: Callable[[], str]) -> dict[str, Any]:
    """Run one check: {ok, detail}; any exception is a failed check with its first line."""
    try:
        return {"ok": True, "detail": work()}
    except Exception as exc:  # noqa: BLE001 - a failed check is a result, not a crash
        return {"ok": False, "detail": f"{type(exc).__name__}: {first_line(exc)}".rstrip(": ")}


def champion_loads(tracking_uri: str, name: str, version: int) -> str:
    """Raise InputError naming the model when its champion's artifacts do not load."""
    from registry.promotion import check_loadable
    from registry.versions import client

    try:
        check_loadable(client(tracking_uri), tracking_uri, name, version)
    except Exception as exc:
        first = first_line(exc) or type(exc).__name__
        raise InputError(f"{name} v{version}: artifacts do not load ({first})") from exc
    return f"v{version}, artifacts load"


def health_report(
    sources: Sources,
    artifact_root: str,
    max_backup_age_hours: float = 26.0,
    now: datetime | None = None,
) -> dict[str, Any]:
    """Check every dependency of the platform: {healthy, checks: {name: {ok, detail}}}; every
    champion is loaded from its artifacts (downloaded, not scored)."""
    import sqlalchemy as sa

    now = now or datetime.now(UTC)

    def results_db() -> str:
        engine = results_reader_engine(sources.results_url)
        try:
            with engine.connect() as conn:
                conn.execute(sa.text("SELECT 1"))
        finally:
            engine.dispose()
        return f"reachable ({engine.url.render_as_string(hide_password=True)})"

    registrations: dict[str, ModelRegistration] = {}

    def tracking_store() -> str:
        registrations.update(read_registry(sources.tracking_uri))
        return f"reachable, {len(registrations)} registered model(s)"

    def artifact_store() -> str:
        check_store(artifact_root, sources.s3_endpoint_url)
        return f"reachable ({artifact_root})"

    def newest_backup() -> str:
        found = read_backups(sources.backup_root, sources.s3_endpoint_url)
        age = found.newest_age_seconds(now)
        bad = f"; unusable: {', '.join(found.unusable)}" if found.unusable else ""
        if age is None:
            raise InputError(f"no complete backup in {sources.backup_root}{bad}")
        hours = age / 3600
        if hours > max_backup_age_hours:
            raise InputError(
                f"newest backup is {hours:.1f} h old (limit {max_backup_age_hours} h){bad}"
            )
        return f"newest backup {hours:.1f} h old, {found.count} backup(s){bad}"

    checks = {
        "results_db": _check(results_db),
        "tracking_store": _check(tracking_store),
    }
    if checks["tracking_store"]["ok"]:
        for model, r in sorted(registrations.items()):
            if r.champion is None:
                checks[f"champion:{model}"] = {"ok": False, "detail": "no champion alias"}
            elif not r.champion_exists:
                checks[f"champion:{model}"] = {
                    "ok": False,
                    "detail": f"champion points at v{r.champion}, which is missing or not ready",
                }
            else:
                checks[f"champion:{model}"] = _check(
                    lambda m=model, v=r.champion: champion_loads(sources.tracking_uri, m, v)
                )
    checks["artifact_store"] = _check(artifact_store)
    checks["backups"] = _check(newest_backup)
    return {
        "healthy": all(c["ok"] for c in checks.values()),
        "checked_at": now.isoformat(),
        "checks": checks,
    }
