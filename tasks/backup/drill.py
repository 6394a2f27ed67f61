"""A restore drill: a backup restored into scratch databases and folders and checked, with
live state only read."""

from __future__ import annotations

import secrets
import time
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from pynomaly.errors import InputError
from tasks.backup.artifacts import artifact_root_uri, download_versions, pack_store, read_json_gz
from tasks.backup.catalog import resolve_backup_id
from tasks.backup.databases import Database, drop_pg_database, rewrite_artifact_root
from tasks.backup.keys import BackupKey
from tasks.backup.manifest import ARTIFACTS_COPY, ARTIFACTS_LISTING
from tasks.backup.restore import apply_backup, check_restored, verify_backup
from tasks.backup.state import PlatformState
from tasks.staging import staging_folder
from tasks.store import ArtifactStore


def scratch_state(state: PlatformState, folder: Path, token: str) -> PlatformState:
    """A state of the same kinds as `state`, in scratch files and databases."""

    def scratch(db: Database | None) -> Database | None:
        if db is None:
            return None
        if db.kind == "sqlite":
            return Database(db.role, f"sqlite:///{folder / (db.role + '.db')}")
        url = sa.make_url(db.url)
        name = f"{url.database}_drill_{token}"[-63:]
        return Database(db.role, url.set(database=name).render_as_string(hide_password=False))

    return PlatformState(
        mlflow=scratch(state.mlflow),
        results=scratch(state.results),
        artifacts=ArtifactStore(str(folder / "artifacts")),
        optuna=scratch(state.optuna),
        prefect=scratch(state.prefect),
        pg_bin=state.pg_bin,
    )


def drill_restore(
    state: PlatformState,
    store: ArtifactStore,
    backup_id: str = "latest",
    *,
    key: BackupKey | None,
    work_dir: Path | None = None,
) -> dict[str, Any]:
    """Restore a backup into scratch databases and folders, check it, and clean up.

    Only a backup whose signature checks out under `key` is restored (its champions are
    loaded, so unpickled); live state is only read (a listing-mode backup fetches its S3
    object versions).
    """
    started = time.perf_counter()
    backup_id = resolve_backup_id(store, backup_id)
    token = secrets.token_hex(3)
    with staging_folder("pynomaly-drill-", work_dir or state.staging) as folder:
        scratch = scratch_state(state, folder / "state", token)
        (folder / "state").mkdir()
        pg_scratch = [d for d in scratch.databases().values() if d.kind == "postgresql"]
        try:
            manifest = verify_backup(store, backup_id, folder / "backup", key)
            drill_manifest = manifest
            if manifest["artifacts"]["mode"] == "listing":
                # The scratch store is a folder: fetch the recorded versions into it instead.
                download_versions(
                    state.artifacts,
                    read_json_gz(folder / "backup" / ARTIFACTS_LISTING),
                    Path(scratch.artifacts.root),
                )
                drill_manifest = {
                    **manifest,
                    "artifacts": {**manifest["artifacts"], "mode": "copy"},
                }
                pack_store(scratch.artifacts, folder / "backup" / ARTIFACTS_COPY)
            report = apply_backup(scratch, drill_manifest, folder / "backup")
            if state.server_uri:
                # The server stores mlflow-artifacts:/<path> for <artifact root>/mlflow/<path>
                # (`services up` and the compose file serve artifacts from there).
                rewrite_artifact_root(
                    scratch.mlflow,
                    "mlflow-artifacts:",
                    artifact_root_uri(scratch.artifacts).rstrip("/") + "/mlflow",
                )
            report["artifact_locations_rewritten"] = rewrite_artifact_root(
                scratch.mlflow,
                manifest["artifacts"]["root_uri"],
                artifact_root_uri(scratch.artifacts),
            )
            report["verification"] = check_restored(scratch, drill_manifest, folder / "backup")
        finally:
            for db in pg_scratch:
                drop_pg_database(db.url)
    report.update({"id": backup_id, "seconds": round(time.perf_counter() - started, 2)})
    problems = report["verification"]["problems"]
    if problems:
        raise InputError(f"restore drill of backup {backup_id} failed: " + "; ".join(problems))
    return report
