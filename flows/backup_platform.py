"""Flow: back up the whole platform state into the backup store, then apply retention."""

from __future__ import annotations

from typing import Any, Literal

from prefect import flow
from prefect.artifacts import create_markdown_artifact

from pynomaly.settings import Settings, get_settings
from tasks import backup
from tasks.steps import create_backup, prune_backups


def platform_state(settings: Settings) -> backup.PlatformState:
    """Where the platform keeps state, as the settings say (shared by the CLI and the drill)."""
    return backup.platform_state(
        tracking_uri=settings.mlflow_tracking_uri,
        backend_uri=settings.mlflow_backend_uri,
        results_url=settings.results_url,
        artifact_root=settings.artifact_store,
        s3_endpoint_url=settings.s3_endpoint_url,
        optuna_url=settings.optuna_storage,
        prefect_url=settings.prefect_database_url,
        staging=settings.staging_dir,
        pg_bin=settings.pg_bin,
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
    state = platform_state(settings)
    store = backup.backup_store(settings.backup_store_root, settings.s3_endpoint_url)
    # The signing key lives outside the store: the environment, or the home's key file.
    key = backup.backup_key(settings.backup_secret, settings.home_dir, store, create=True)

    # Back up: databases, suites, artifacts, champion samples, signed manifest last
    manifest = create_backup(
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

    # Report
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
