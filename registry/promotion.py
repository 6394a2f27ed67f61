"""Move the `champion` alias under a lock, roll it back, and keep the history as tags.

The lock depends on where the registry lives: a PostgreSQL advisory lock when MLflow's backend
is PostgreSQL, a file lock (filelock) beside an embedded SQLite registry, a Prefect global
concurrency limit when MLflow is a tracking server and a Prefect server is configured (else a
file lock in the platform home, which only protects promotions started on this host).
Inside the lock everything the decision relied on is checked again, so `champion` never points
at a missing, unready or unloadable version and two promotions can never both move it.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from mlflow.exceptions import MlflowException

from pynomaly.errors import InputError
from registry.gate import load_scorer
from registry.repair import settle_versions
from registry.tracking import end_dead_runs, end_run, is_tracking_server, owner, owner_alive
from registry.versions import (
    CHALLENGER,
    CHAMPION,
    aliases_of,
    client,
    is_registered,
    now_iso,
    read_list_tag,
    write_list_tag,
)

HISTORY_TAG = "champion_history"
RETRAIN_TAG = "retrain_history"
LOCK_TIMEOUT_S = 120.0


class PromotionConflict(InputError):
    """The registry changed between the gate's decision and the promotion."""


# --------------------------------------------------------------------------- locks


def _lock_key(name: str) -> int:
    """A signed 64-bit advisory-lock key for one registered model."""
    digest = hashlib.sha256(f"pynomaly-promote:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def lock_kind(tracking_uri: str, prefect_server: bool = False) -> str:
    """Which lock guards promotions on this registry: postgres, file or prefect (a tracking
    server, when the caller talks to a Prefect server)."""
    if tracking_uri.startswith(("postgresql", "postgres")):
        return "postgres"
    if is_tracking_server(tracking_uri) and prefect_server:
        return "prefect"
    return "file"


@contextmanager
def _postgres_lock(url: str, name: str, timeout_s: float) -> Iterator[None]:
    import sqlalchemy as sa

    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    key = _lock_key(name)
    try:
        with engine.connect() as conn:
            deadline = time.monotonic() + timeout_s
            # try-lock in a loop rather than pg_advisory_lock: a stuck holder gives a clear
            # timeout error instead of a hung promotion.
            while not conn.execute(sa.text("SELECT pg_try_advisory_lock(:k)"), {"k": key}).scalar():
                if time.monotonic() > deadline:
                    raise PromotionConflict(f"timed out waiting for the promotion lock of {name!r}")
                time.sleep(0.1)
            try:
                yield
            finally:
                conn.execute(sa.text("SELECT pg_advisory_unlock(:k)"), {"k": key})
    finally:
        engine.dispose()


@contextmanager
def _prefect_lock(name: str, timeout_s: float) -> Iterator[None]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
    from prefect.concurrency.sync import concurrency
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

    limit = f"pynomaly-promote-{name}"
    with get_client(sync_client=True) as prefect_client:
        try:
            prefect_client.read_global_concurrency_limit_by_name(limit)
        except ObjectNotFound:
            try:
                prefect_client.create_global_concurrency_limit(
                    GlobalConcurrencyLimitCreate(name=limit, limit=1)
                )
            except ObjectAlreadyExists:
                pass  # another promotion created it between our read and our create
    # strict: a missing limit must fail, never silently run unguarded
    with concurrency(limit, occupy=1, timeout_seconds=timeout_s, strict=True):
        yield


@contextmanager
def promotion_lock(
    tracking_uri: str,
    name: str,
    lock_dir: Path,
    prefect_server: bool = False,
    timeout_s: float = LOCK_TIMEOUT_S,
) -> Iterator[str]:
    """Hold the promotion lock of one registered model; yields the kind of lock held."""
    kind = lock_kind(tracking_uri, prefect_server)
    if kind == "postgres":
        with _postgres_lock(tracking_uri, name, timeout_s):
            yield kind
    elif kind == "prefect":
        with _prefect_lock(name, timeout_s):
            yield kind
    else:
        from filelock import FileLock, Timeout

        if tracking_uri.startswith("sqlite:///"):
            lock_dir = Path(tracking_uri.removeprefix("sqlite:///")).parent
        path = lock_dir / f".promote-{hashlib.sha256(name.encode()).hexdigest()[:16]}.lock"
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            with FileLock(path, timeout=timeout_s):
                yield kind
        except Timeout:
            raise PromotionConflict(
                f"timed out waiting for the promotion lock of {name!r} ({path})"
            ) from None


# --------------------------------------------------------------------------- history


def read_history(mlflow_client: Any, name: str) -> list[dict[str, Any]]:
    """The champion stack: promotions push, rollbacks pop; the last entry is the champion."""
    return read_list_tag(mlflow_client, name, HISTORY_TAG)


def _current_stack(mlflow_client: Any, name: str, champion: int | None) -> list[dict[str, Any]]:
    history = read_history(mlflow_client, name)
    # The first version became champion at registration, before any history existed.
    if champion is not None and (not history or history[-1]["version"] != champion):
        history.append({"version": champion, "action": "registered", "at": now_iso()})
    return history


def check_loadable(mlflow_client: Any, tracking_uri: str, name: str, version: int) -> Any:
    """The model version, after checking it exists, is READY and its model loads."""
    try:
        mv = mlflow_client.get_model_version(name, str(version))
    except MlflowException as exc:
        raise InputError(f"model {name!r} has no version {version}") from exc
    if str(mv.status) != "READY":
        raise InputError(f"{name} v{version} is {mv.status}, not READY")
    if (mv.tags or {}).get("pynomaly.failed") == "true":
        raise InputError(f"{name} v{version} is marked failed")
    load_scorer(f"models:/{name}/{version}", tracking_uri, dict(mv.tags or {}))
    return mv


def promote(
    mlflow_client: Any,
    tracking_uri: str,
    name: str,
    version: int,
    *,
    expected_champion: int | None,
    lock_dir: Path,
    reason: str,
    force: bool = False,
    prefect_server: bool = False,
) -> dict[str, Any]:
    """Point `champion` at a version under the lock, if the champion is still the one judged."""
    with promotion_lock(tracking_uri, name, lock_dir, prefect_server) as kind:
        settle_versions(mlflow_client, name)  # what a killed train left is never promoted
        aliases = aliases_of(mlflow_client, name)
        champion = aliases.get(CHAMPION)
        if champion != expected_champion:
            raise PromotionConflict(
                f"champion of {name!r} changed from v{expected_champion} to v{champion} since the "
                f"decision; evaluate v{version} again"
            )
        mv = check_loadable(mlflow_client, tracking_uri, name, version)
        decision = (mv.tags or {}).get("gate.decision")
        if decision == "reject" and not force:
            raise InputError(
                f"{name} v{version} was rejected by the gate; pass --force to promote it anyway"
            )
        result = {"model": name, "version": version, "previous": champion, "lock": kind}
        if champion == version:
            return {**result, "changed": False}
        history = _current_stack(mlflow_client, name, champion)
        at = now_iso()
        mlflow_client.set_registered_model_alias(name, CHAMPION, str(version))
        if aliases.get(CHALLENGER) == version:
            mlflow_client.delete_registered_model_alias(name, CHALLENGER)
        history.append({"version": version, "action": "promote", "at": at, "reason": reason})
        write_list_tag(mlflow_client, name, HISTORY_TAG, history)
        mlflow_client.set_model_version_tag(name, str(version), "promoted_at", at)
        mlflow_client.set_model_version_tag(name, str(version), "promoted_reason", reason)
        if champion is not None:
            mlflow_client.set_model_version_tag(name, str(champion), "retired_at", at)
    return {**result, "changed": True}


def rollback(
    mlflow_client: Any,
    tracking_uri: str,
    name: str,
    *,
    to: int | None,
    lock_dir: Path,
    prefect_server: bool = False,
) -> dict[str, Any]:
    """Restore the previous champion (or an earlier champion `to`) under the lock."""
    with promotion_lock(tracking_uri, name, lock_dir, prefect_server) as kind:
        settle_versions(mlflow_client, name)
        champion = aliases_of(mlflow_client, name).get(CHAMPION)
        if champion is None:
            raise InputError(f"model {name!r} has no champion to roll back")
        stack = _current_stack(mlflow_client, name, champion)
        earlier = [e["version"] for e in stack[:-1]]
        if not earlier:
            raise InputError(f"{name} v{champion} is the first champion: nothing to roll back to")
        target = earlier[-1] if to is None else to
        if target not in earlier:
            raise InputError(
                f"v{target} was not an earlier champion of {name!r} (earlier: "
                f"{', '.join(f'v{v}' for v in earlier)}); use `registry promote` instead"
            )
        check_loadable(mlflow_client, tracking_uri, name, target)
        at = now_iso()
        cut = max(i for i, e in enumerate(stack[:-1]) if e["version"] == target)
        history = stack[: cut + 1]
        history[-1] = {**history[-1], "restored_at": at}
        mlflow_client.set_registered_model_alias(name, CHAMPION, str(target))
        write_list_tag(mlflow_client, name, HISTORY_TAG, history)
        mlflow_client.set_model_version_tag(name, str(champion), "rolled_back_at", at)
        mlflow_client.set_model_version_tag(name, str(target), "restored_at", at)
    return {"model": name, "version": target, "previous": champion, "lock": kind}


def record_decision(mlflow_client: Any, name: str, version: int, tags: dict[str, str]) -> None:
    """Write the gate's decision as tags on the version."""
    for key, value in {**tags, "gate.at": now_iso()}.items():
        mlflow_client.set_model_version_tag(name, str(version), key, value)


# --------------------------------------------------------------------------- repair


def repair_model(
    mlflow_client: Any,
    tracking_uri: str,
    name: str,
    lock_dir: Path,
    experiment_id: str | None = None,
    prefect_server: bool = False,
) -> dict[str, Any]:
    """Before a command on a model: end runs a dead process left RUNNING (in the experiment)
    and settle the model's unfinished versions; what was done."""
    killed = end_dead_runs(tracking_uri, experiment_id) if experiment_id else []
    versions = []
    if is_registered(mlflow_client, name):
        with promotion_lock(tracking_uri, name, lock_dir, prefect_server):
            versions = settle_versions(mlflow_client, name)
    if killed:
        logging.getLogger(__name__).warning(
            "marked %d run(s) KILLED: left RUNNING by a process that is gone", len(killed)
        )
    return {"runs_killed": killed, "versions": versions}


def abandon_train(
    tracking_uri: str,
    name: str,
    run_id: str,
    lock_dir: Path,
    why: str,
    prefect_server: bool = False,
) -> None:
    """When the train flow fails: end its run FAILED and settle the version it registered.

    A failure to clean up is only printed: the next command repairs it, the first error counts.
    """
    try:
        end_run(tracking_uri, run_id, "FAILED")
        mlflow_client = client(tracking_uri)
        if is_registered(mlflow_client, name):
            with promotion_lock(tracking_uri, name, lock_dir, prefect_server):
                settle_versions(mlflow_client, name, run_id=run_id, reason=why)
    except Exception as cleanup:
        print(f"could not clean up after the failed train of {name}: {cleanup!r}")


# --------------------------------------------------------------------------- retraining


def read_retrains(mlflow_client: Any, name: str) -> list[dict[str, Any]]:
    """Earlier retrains of a model: [{"at": iso, "trigger": ...}], oldest first."""
    return read_list_tag(mlflow_client, name, RETRAIN_TAG)


def record_retrain(mlflow_client: Any, name: str, trigger: str, run: str | None = None) -> str:
    """Append a started retrain to the model's history; returns its time, the entry's key."""
    history = read_retrains(mlflow_client, name)
    at = now_iso()
    history.append(
        {"at": at, "trigger": trigger, "run": run or "", "status": "started", "owner": owner()}
    )
    write_list_tag(mlflow_client, name, RETRAIN_TAG, history)
    return at


@contextmanager
def retrain_attempt(
    mlflow_client: Any,
    tracking_uri: str,
    name: str,
    at: str,
    lock_dir: Path,
    prefect_server: bool = False,
) -> Iterator[dict[str, str]]:
    """Around a claimed retrain: mark it failed if the body raises, else with the status set
    (a failed one holds no cooldown)."""
    attempt = {"status": "done"}
    try:
        yield attempt
    except BaseException:
        attempt["status"] = "failed"
        raise
    finally:
        with promotion_lock(tracking_uri, name, lock_dir, prefect_server):
            history = read_retrains(mlflow_client, name)
            for entry in history:
                if entry["at"] == at:
                    entry["status"] = attempt["status"]
            write_list_tag(mlflow_client, name, RETRAIN_TAG, history)


def retrain_allowed(
    history: list[dict[str, Any]],
    now: datetime,
    cooldown_hours: float,
    max_per_day: int,
) -> tuple[bool, str]:
    """Whether another retrain may start now, given the earlier ones; with the reason.

    Every attempt counts against the daily cap (a retrain that keeps failing must not run in a
    loop); only attempts that did not fail (or get killed) hold the cooldown, so a failed one
    can be retried. An attempt skipped for want of new data counts for neither.
    """
    tried = [e for e in history if e.get("status") != "skipped"]
    last_day = sum(now - datetime.fromisoformat(e["at"]) < timedelta(days=1) for e in tried)
    if last_day >= max_per_day:
        return False, f"{last_day} retrain(s) in the last 24 h (cap {max_per_day})"
    held = [
        datetime.fromisoformat(e["at"])
        for e in tried
        if e.get("status") not in {"failed", "killed"}
    ]
    if held and now - max(held) < timedelta(hours=cooldown_hours):
        ago = (now - max(held)) / timedelta(hours=1)
        return False, f"last retrain {ago:.1f} h ago (cooldown {cooldown_hours:g} h)"
    return True, "allowed"


def end_dead_retrains(mlflow_client: Any, name: str) -> list[dict[str, Any]]:
    """The retrain history, with attempts still "started" by a process that is gone marked
    "killed" (so a killed retrain holds no cooldown); the caller holds the lock."""
    history = read_retrains(mlflow_client, name)
    dead = [
        e
        for e in history
        if e.get("status") == "started" and e.get("owner") and owner_alive(e["owner"]) is False
    ]
    for entry in dead:
        entry["status"] = "killed"
    if dead:
        write_list_tag(mlflow_client, name, RETRAIN_TAG, history)
    return history


def claim_retrain(
    mlflow_client: Any,
    tracking_uri: str,
    name: str,
    *,
    trigger: str,
    lock_dir: Path,
    cooldown_hours: float,
    max_per_day: int,
    enforce: bool = True,
    run: str | None = None,
    prefect_server: bool = False,
) -> tuple[bool, str]:
    """Check the cooldown and daily cap and record the retrain, atomically under the lock.

    Returns (True, the entry's time) when claimed, else (False, why not).
    """
    with promotion_lock(tracking_uri, name, lock_dir, prefect_server):
        history = end_dead_retrains(mlflow_client, name)
        if enforce:
            ok, why = retrain_allowed(history, datetime.now(UTC), cooldown_hours, max_per_day)
            if not ok:
                return False, why
        return True, record_retrain(mlflow_client, name, trigger, run)
