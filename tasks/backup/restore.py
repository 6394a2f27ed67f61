"""Verify a backup (signature, checksums, archive contents) and restore it over a state, checking
the result against the manifest."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from pynomaly.errors import InputError
from tasks.backup.artifacts import restore_versions, sha256_of, unpack_into
from tasks.backup.catalog import resolve_backup_id
from tasks.backup.champions import check_champion_samples
from tasks.backup.create import create_backup
from tasks.backup.databases import (
    known_mlflow_revisions,
    mlflow_head_revision,
    read_counts,
    restore_database,
    upgrade_mlflow_schema,
)
from tasks.backup.keys import KEY_ENV, BackupKey
from tasks.backup.manifest import ARTIFACTS_COPY, EXPECTATIONS, check_staged, read_manifest
from tasks.backup.state import PlatformState
from tasks.staging import staging_folder
from tasks.store import ArtifactStore


def verify_backup(
    store: ArtifactStore,
    backup_id: str,
    folder: Path,
    key: BackupKey | None,
    *,
    trust_unsigned: bool = False,
) -> dict[str, Any]:
    """Authenticate a backup's manifest, fetch every file into `folder`, check its sha256 and
    what the archives hold; the manifest.

    A missing or wrong signature, an unknown format, a bad name, or any missing, truncated or
    altered file is an InputError naming it; nothing is unpacked or loaded here.
    """
    manifest = read_manifest(store, backup_id, key, trust_unsigned=trust_unsigned)
    folder.mkdir(parents=True, exist_ok=True)
    for name, expected in sorted(manifest["files"].items()):
        key_ = f"{backup_id}/{name}"
        if not store.exists(key_):
            raise InputError(f"backup {backup_id}: {name} is missing")
        path = store.download(key_, folder / name)  # a name from BACKUP_FILES: no traversal
        size, digest = path.stat().st_size, sha256_of(path)
        if digest != expected["sha256"]:
            raise InputError(
                f"backup {backup_id}: {name} is corrupted (sha256 {digest[:12]}…, expected "
                f"{expected['sha256'][:12]}…; {size} bytes, expected {expected['bytes']})"
            )
    try:
        check_staged(manifest, folder)
    except (ValueError, OSError, EOFError) as exc:
        if isinstance(exc, InputError):
            raise
        raise InputError(f"backup {backup_id}: a file does not read back: {exc}") from None
    return manifest


def check_restored(state: PlatformState, manifest: dict[str, Any], folder: Path) -> dict[str, Any]:
    """Compare the restored state with the manifest: counts, artifacts, champion scores."""
    expected = manifest["counts"]
    found: dict[str, int] = {}
    for role, info in manifest["databases"].items():
        db = state.databases().get(role)
        if db is not None and not info.get("absent"):
            found.update(read_counts(db)["counts"])
    # Files count when they are back with the size they had.
    restored = state.artifacts.sizes()
    staged = check_staged(manifest, folder)
    for name, part in (("artifacts", "artifacts"), ("expectation_suites", "suites")):
        found[name] = sum(1 for k, size in staged[part].items() if restored.get(k) == size)
    problems = [
        f"{name}: backup has {value}, restored state has {found.get(name)}"
        for name, value in sorted(expected.items())
        if found.get(name) != value
    ]
    samples = staged["champions"]
    problems += check_champion_samples(state.tracking_uri, samples)
    return {
        "counts": found,
        "champions_checked": sum(1 for s in samples if s.get("sample") is not None),
        "problems": problems,
    }


def _check_schema(manifest: dict[str, Any]) -> bool:
    """Whether the backup's MLflow schema needs migrating; refuses one newer than this MLflow."""
    revision = manifest["schema"].get("mlflow_alembic_revision")
    if revision is None:
        return False
    if revision not in known_mlflow_revisions():
        raise InputError(
            f"backup {manifest['id']} has MLflow schema {revision}, unknown to MLflow here "
            f"(made by MLflow {manifest['platform']['mlflow']}); restore with that version"
        )
    return revision != mlflow_head_revision()


def check_applicable(state: PlatformState, manifest: dict[str, Any]) -> bool:
    """Refuse, before anything is written, a backup this state cannot take: a database the
    platform lacks or of another kind, S3 versions into a local store, a newer MLflow schema.
    Whether the MLflow schema needs migrating."""
    dbs = state.databases()
    for role, info in manifest["databases"].items():
        if info.get("absent"):
            continue
        if role not in dbs:
            raise InputError(f"the backup holds a {role} database the platform is not set up for")
        if info["kind"] != dbs[role].kind:
            raise InputError(
                f"the backup holds a {info['kind']} {role} database but the platform uses "
                f"{dbs[role].kind}"
            )
    if manifest["artifacts"]["mode"] == "listing" and not state.artifacts.is_s3:
        raise InputError("the backup lists S3 object versions but the artifact store is local")
    return _check_schema(manifest)


def apply_backup(state: PlatformState, manifest: dict[str, Any], folder: Path) -> dict[str, Any]:
    """Write verified, staged backup files over a state: databases, artifacts, suites,
    migrations (everything checkable is checked first)."""
    migrate = check_applicable(state, manifest)
    staged = check_staged(manifest, folder)
    dbs = state.databases()
    restored = []
    for role, info in manifest["databases"].items():
        if info.get("absent"):
            continue
        restore_database(dbs[role], folder / info["file"], state.pg_bin)
        restored.append(role)
    report: dict[str, Any] = {"databases": restored}
    if manifest["artifacts"]["mode"] == "listing":
        report["artifact_versions_restored"] = restore_versions(state.artifacts, staged["listing"])
    else:
        report["artifacts_written"] = len(unpack_into(state.artifacts, folder / ARTIFACTS_COPY))
    report["expectation_suites_written"] = len(unpack_into(state.artifacts, folder / EXPECTATIONS))
    if migrate and "mlflow" in restored:
        upgrade_mlflow_schema(state.mlflow.url)
        report["mlflow_schema_upgraded"] = (
            f"{manifest['schema']['mlflow_alembic_revision']} -> {mlflow_head_revision()}"
        )
    return report


def restore_backup(
    state: PlatformState,
    store: ArtifactStore,
    backup_id: str = "latest",
    *,
    key: BackupKey | None,
    trust_unsigned: bool = False,
    safety_backup: bool = True,
    work_dir: Path | None = None,
) -> dict[str, Any]:
    """Verify a backup, back up the current state, restore over it and check the result.

    Everything is authenticated, fetched, checksummed and checked in a staging folder (removed
    on every exit) before any live database or artifact is written. An unsigned backup is
    refused unless `trust_unsigned`.
    """
    started = time.perf_counter()
    backup_id = resolve_backup_id(store, backup_id)
    if safety_backup and key is None:
        raise InputError(
            f"restoring backup {backup_id} backs up the current state first, signed: set {KEY_ENV}"
        )
    with staging_folder("pynomaly-restore-", work_dir or state.staging) as folder:
        # Refuses before touching anything: signature, format, names, checksums, archives.
        manifest = verify_backup(store, backup_id, folder, key, trust_unsigned=trust_unsigned)
        check_applicable(state, manifest)
        report: dict[str, Any] = {"id": backup_id, "signed": manifest["signed"]}
        if safety_backup:
            before = create_backup(
                state,
                store,
                key=key,
                kind="pre-restore",
                record_champions=False,
                work_dir=work_dir,
            )
            report["pre_restore_backup"] = before["id"]
        report.update(apply_backup(state, manifest, folder))
        report["verification"] = check_restored(state, manifest, folder)
    report["seconds"] = round(time.perf_counter() - started, 2)
    problems = report["verification"]["problems"]
    if problems:
        raise InputError(
            f"restored backup {backup_id} but it does not check out: " + "; ".join(problems)
        )
    return report
