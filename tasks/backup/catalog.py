"""The backups in a store: list them with their status, resolve `latest`, apply retention."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Any

from pynomaly.errors import InputError
from tasks.backup.keys import BackupKey
from tasks.backup.manifest import (
    MANIFEST,
    backup_time,
    check_id,
    is_backup_id,
    parse_manifest,
    signed_manifest,
)
from tasks.store import ArtifactStore

# A backup folder without a manifest this old is a failed run, not one still being written.
INCOMPLETE_GRACE = timedelta(days=1)
# What `backup list` reports per backup; only "ok" (and, without the key, "unchecked") count as
# backups one can restore.
USABLE_STATUSES = ("ok", "unchecked")


def _ids(store: ArtifactStore) -> dict[str, set[str]]:
    """backup id -> names of the files stored under it."""
    found: dict[str, set[str]] = {}
    for key in store.list():
        backup_id, _, name = key.partition("/")
        if name and "/" not in name:
            found.setdefault(backup_id, set()).add(name)
    return {i: names for i, names in found.items() if is_backup_id(i)}


def inspect_backup(store: ArtifactStore, backup_id: str, key: BackupKey | None) -> dict[str, Any]:
    """One backup's summary with its status; a bad backup is described, never raised."""
    row: dict[str, Any] = {"id": backup_id, "status": "unreadable", "problem": None}
    row |= {"created_at": backup_time(backup_id).isoformat(), "kind": None, "size_bytes": None}
    row |= {"counts": {}, "warnings": []}
    try:
        body, status, problem = signed_manifest(store, backup_id, key)
        if status in {"ok", "unchecked", "unsigned"}:
            try:
                manifest = parse_manifest(body, backup_id)
            except InputError as exc:
                status, problem = "malformed", str(exc).removeprefix(f"backup {backup_id}: ")
            else:
                row |= {
                    "created_at": manifest["created_at"],
                    "kind": manifest.get("kind"),
                    "size_bytes": sum(f["bytes"] for f in manifest["files"].values()),
                    "counts": manifest["counts"],
                    "warnings": manifest.get("warnings", []),
                }
        row |= {"status": status, "problem": problem}
    except Exception as exc:  # noqa: BLE001 - one unreadable backup is reported, not fatal
        row["problem"] = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0]}"
    return row


def list_backups(store: ArtifactStore, key: BackupKey | None = None) -> list[dict[str, Any]]:
    """Complete backups (those with a manifest), newest first, each with its status.

    Without a key, signed backups show as "unchecked": their signature is not verified.
    """
    return [
        inspect_backup(store, backup_id, key)
        for backup_id, names in sorted(_ids(store).items(), reverse=True)
        if MANIFEST in names
    ]


def resolve_backup_id(store: ArtifactStore, backup_id: str) -> str:
    """`latest` -> the newest complete backup's id; other ids as given (checked)."""
    if backup_id != "latest":
        return check_id(backup_id)
    complete = sorted(i for i, names in _ids(store).items() if MANIFEST in names)
    if not complete:
        raise InputError(f"no backups in {store.root}")
    return complete[-1]


def select_retained(
    times: dict[str, datetime],
    now: datetime,
    keep_last: int,
    keep_daily_days: int,
    keep_weekly_weeks: int,
) -> set[str]:
    """Ids to keep: the newest `keep_last`, plus the newest of each of the last
    `keep_daily_days` UTC calendar days and of each of the last `keep_weekly_weeks` ISO weeks
    (today and this week count as the first). Everything else may be pruned.
    """
    newest_first = sorted(times, key=lambda i: (times[i], i), reverse=True)
    today = now.astimezone(UTC).date()
    days = {today - timedelta(days=k) for k in range(keep_daily_days)}
    weeks = {(today - timedelta(weeks=k)).isocalendar()[:2] for k in range(keep_weekly_weeks)}
    newest_of_day: dict[date, str] = {}
    newest_of_week: dict[tuple[int, int], str] = {}
    for backup_id in newest_first:
        day = times[backup_id].astimezone(UTC).date()
        newest_of_day.setdefault(day, backup_id)
        newest_of_week.setdefault(day.isocalendar()[:2], backup_id)
    return (
        set(newest_first[: max(keep_last, 0)])
        | {i for day, i in newest_of_day.items() if day in days}
        | {i for week, i in newest_of_week.items() if week in weeks}
    )


def prune_backups(
    store: ArtifactStore,
    *,
    keep_last: int,
    keep_daily_days: int,
    keep_weekly_weeks: int,
    now: datetime | None = None,
    dry_run: bool = False,
) -> dict[str, list[str]]:
    """Delete the backups retention does not keep (and failed, incomplete ones)."""
    now = now or datetime.now(UTC)
    found = _ids(store)
    complete = {i: backup_time(i) for i, names in found.items() if MANIFEST in names}
    keep = select_retained(complete, now, keep_last, keep_daily_days, keep_weekly_weeks)
    stale = [
        i
        for i, names in found.items()
        if MANIFEST not in names and now - backup_time(i) > INCOMPLETE_GRACE
    ]
    delete = sorted(set(complete) - keep) + sorted(stale)
    if not dry_run:
        for backup_id in delete:
            store.delete_prefix(f"{backup_id}/")
    return {"kept": sorted(keep, reverse=True), "deleted": delete}
