"""Take a backup: databases, suites, artifacts, champion samples, then the signed manifest."""

from __future__ import annotations

import time
from datetime import datetime
from pathlib import Path
from typing import Any

from pynomaly.errors import InputError
from tasks.backup.artifacts import artifact_root_uri, pack_store, sha256_of, write_json_gz
from tasks.backup.champions import record_champion_samples
from tasks.backup.databases import dump_database
from tasks.backup.keys import BackupKey
from tasks.backup.manifest import (
    ARTIFACTS_COPY,
    ARTIFACTS_LISTING,
    CHAMPIONS,
    EXPECTATIONS,
    FORMAT_VERSION,
    backup_time,
    new_backup_id,
    write_manifest,
)
from tasks.backup.state import PlatformState
from tasks.staging import staging_folder
from tasks.store import ArtifactStore


def create_backup(
    state: PlatformState,
    store: ArtifactStore,
    *,
    key: BackupKey,
    kind: str = "manual",
    artifacts_mode: str = "auto",
    record_champions: bool = True,
    now: datetime | None = None,
    work_dir: Path | None = None,
) -> dict[str, Any]:
    """Take a backup of the whole platform state into the backup store, signed with `key`;
    its manifest. A champion that cannot load is a warning in the manifest, not a failure."""
    from importlib import metadata

    import mlflow

    started = time.perf_counter()
    backup_id = new_backup_id(now)
    if artifacts_mode not in {"auto", "copy", "listing"}:
        raise InputError(f"artifacts mode {artifacts_mode!r}: choose auto, copy or listing")
    with staging_folder(f"pynomaly-backup-{backup_id}-", work_dir or state.staging) as staging:
        databases = {
            role: dump_database(db, staging, state.pg_bin) for role, db in state.databases().items()
        }
        suites = pack_store(state.artifacts, staging / EXPECTATIONS, prefix="expectations/")

        # Artifacts last: a superset of what the MLflow dump refers to.
        mode = artifacts_mode
        if mode == "auto":
            mode = "listing" if state.artifacts.versioned() else "copy"
        if mode == "listing":
            if not state.artifacts.versioned():
                raise InputError("artifacts mode 'listing' needs a versioned S3 bucket")
            listing = state.artifacts.versions()
            write_json_gz(staging / ARTIFACTS_LISTING, listing)
            artifact_files = {o["key"]: o["size"] for o in listing}
        else:
            artifact_files = pack_store(state.artifacts, staging / ARTIFACTS_COPY)

        mlflow_db = databases.get("mlflow", {})
        champions = mlflow_db.get("champions", []) if record_champions else []
        warnings: list[str] = []
        if champions:
            samples = record_champion_samples(state.tracking_uri, champions)
            write_json_gz(staging / CHAMPIONS, samples)
            warnings += [
                f"champion {s['model']} v{s['version']} {s['reason']}: backed up, not checkable"
                for s in samples
                if s.get("failed")
            ]

        counts: dict[str, int] = {}
        for info in databases.values():
            counts.update(info.pop("counts", {}))
        counts["artifacts"] = len(artifact_files)
        counts["expectation_suites"] = len(suites)
        files = {
            p.name: {"sha256": sha256_of(p), "bytes": p.stat().st_size}
            for p in sorted(staging.iterdir())
        }
        manifest = {
            "format": FORMAT_VERSION,
            "id": backup_id,
            "kind": kind,
            "created_at": backup_time(backup_id).isoformat(),
            "platform": {
                "pynomaly": metadata.version("pynomaly"),
                "mlflow": mlflow.__version__,
            },
            "schema": {"mlflow_alembic_revision": mlflow_db.get("alembic_revision")},
            "databases": databases,
            "artifacts": {
                "mode": mode,
                "root_uri": artifact_root_uri(state.artifacts),
                "bytes": sum(artifact_files.values()),
            },
            "counts": counts,
            "champions": [{k: c[k] for k in ("model", "version")} for c in champions],
            "files": files,
            "warnings": warnings,
        }
        # Data first, then the signature, the manifest last: a backup without manifest.json
        # is incomplete, and a complete one always has its signature.
        for name in files:
            store.put_file(f"{backup_id}/{name}", staging / name)
        manifest["seconds"] = round(time.perf_counter() - started, 2)
        write_manifest(store, manifest, key)
    manifest["size_bytes"] = sum(f["bytes"] for f in manifest["files"].values())
    return manifest
