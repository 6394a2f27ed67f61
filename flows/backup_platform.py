"""Flow: back up the whole platform state into the backup store, then apply retention."""

from __future__ import annotations

from typing import Any, Literal

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from pynomaly.settings import get_settings
from tasks import backup

take_backup = task(name="take_backup", cache_policy=NO_CACHE)(backup.create_backup)
prune_backups = task(name="prune_backups", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=5)(
    backup.prune_backups
)


@flow(name="backup-platform", log_prints=True)
def backup_platform(
    prune: bool = True,
    artifacts_mode: Literal["auto", "copy", "listing"] = "auto",
    record_champions: bool = True,
    kind: str = "scheduled",
) -> dict[str, Any]:
    """Back up MLflow, results, Optuna and Prefect DBs, suites and artifacts, signed; prune."""
    settings = get_settings()
    settings.export_client_environment()
    state = backup.platform_state(settings)
    store = backup.backup_store(settings.backup_store_root, settings.s3_endpoint_url)
    # The signing key lives outside the store: the environment, or the home's key file.
    key = backup.backup_key(settings, store, create=True)

    # Back up: databases, suites, artifacts, champion samples, signed manifest last
    manifest = take_backup(
        state,
        store,
        key=key,
        kind=kind,
        artifacts_mode=artifacts_mode,
        record_champions=record_champions,
    )
    for warning in manifest["warnings"]:
        print(f"warning: {warning}")

    # Retain: newest N, one per day and per week for the configured periods
    pruned: dict[str, list[str]] = {"kept": [], "deleted": []}
    if prune:
        pruned = prune_backups(
            store,
            keep_last=settings.backup_keep_last,
            keep_daily_days=settings.backup_keep_daily_days,
            keep_weekly_weeks=settings.backup_keep_weekly_weeks,
        )
    counts = manifest["counts"]
    create_markdown_artifact(
        key="backup-summary",
        markdown=(
            f"## Backup `{manifest['id']}`\n\n{manifest['size_bytes']:,} bytes in "
            f"{manifest['seconds']} s; pruned {len(pruned['deleted'])}, kept "
            f"{len(pruned['kept'])}\n\n"
            + "\n".join(f"- {k}: {v}" for k, v in counts.items())
            + "".join(f"\n\n**Warning:** {w}" for w in manifest["warnings"])
        ),
    )
    return {
        "id": manifest["id"],
        "store": store.root,
        "size_bytes": manifest["size_bytes"],
        "seconds": manifest["seconds"],
        "counts": counts,
        "files": manifest["files"],
        "pruned": pruned["deleted"],
        "warnings": manifest["warnings"],
    }


if __name__ == "__main__":
    print(backup_platform(prune=False))
