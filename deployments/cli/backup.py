"""`pynomaly backup create|list|verify|restore|prune`: backups of the whole platform state."""

from __future__ import annotations

import sys
from typing import Annotated, Any

import typer
from rich.filesize import decimal
from rich.table import Column, Table

from deployments.cli.options import DebugOpt, JsonOpt, group
from deployments.cli.output import err, out, run, say, show

backup_app = group("Back up, verify, restore and prune.")

IdArg = Annotated[str, typer.Argument(help="Backup id, or 'latest'.")]


def _store() -> Any:
    """The backup store the settings name."""
    from pynomaly.settings import get_settings
    from tasks import backup

    settings = get_settings()
    return backup.backup_store(settings.backup_store_root, settings.s3_endpoint_url)


def _key(store: Any, create: bool = False) -> Any:
    """The backup key (environment or the home's key file); made only when `create`."""
    from pynomaly.settings import get_settings
    from tasks import backup

    settings = get_settings()
    return backup.backup_key(settings.backup_secret, settings.home_dir, store, create=create)


@backup_app.command()
def create(
    artifacts: Annotated[
        str, typer.Option("--artifacts", help="auto, copy, or listing (versioned S3 bucket).")
    ] = "auto",
    prune: Annotated[bool, typer.Option("--prune/--no-prune", help="Apply retention.")] = False,
    as_json: JsonOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Take a backup now (the backup-platform flow)."""

    def work() -> dict[str, Any]:
        from flows.backup_platform import backup_platform
        from pynomaly.errors import InputError

        if artifacts not in {"auto", "copy", "listing"}:
            raise InputError(f"--artifacts {artifacts!r}: choose auto, copy or listing")
        return backup_platform(prune=prune, artifacts_mode=artifacts, kind="manual")

    result = run(work, as_json=as_json, debug=debug, status="Backing up…")
    if not as_json:
        rows = {"store": result["store"], "size": decimal(result["size_bytes"])}
        rows |= {"seconds": result["seconds"], **result["counts"]}
        if prune:
            rows["pruned"] = ", ".join(result["pruned"]) or "none"
        for i, warning in enumerate(result["warnings"], 1):
            rows[f"warning {i}"] = warning
        show(f"Backup {result['id']}", rows)


@backup_app.command("list")
def list_(as_json: JsonOpt = False, debug: DebugOpt = False) -> None:
    """List the complete backups, newest first, with their status (ok, unsigned, malformed…)."""

    def work() -> dict[str, Any]:
        from tasks import backup

        store = _store()
        return {"store": store.root, "backups": backup.list_backups(store, _key(store))}

    result = run(work, as_json=as_json, debug=debug, status="Listing backups…")
    if as_json:
        return
    columns = ("status", "kind", "size", "model versions", "detection rows", "artifacts")
    title = f"Backups in {result['store']}"
    table = Table(Column("id", no_wrap=True), *columns, title=title, title_justify="left")
    for b in result["backups"]:
        c = b["counts"]
        table.add_row(
            b["id"],
            b["status"],
            str(b["kind"] or "-"),
            decimal(b["size_bytes"]) if b["size_bytes"] is not None else "-",
            str(c.get("model_versions", "-")),
            str(c.get("detection_rows", "-")),
            str(c.get("artifacts", "-")),
        )
    out.print(table)
    for b in result["backups"]:
        if b["problem"]:
            say(f"{b['id']}: {b['status']}: {b['problem']}")
        say(*(f"{b['id']}: warning: {warning}" for warning in b["warnings"]))


@backup_app.command()
def verify(
    backup_id: IdArg = "latest",
    drill: Annotated[
        bool, typer.Option("--drill", help="Also restore into scratch and check (restore-drill).")
    ] = False,
    as_json: JsonOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Check a backup's signature and every file's sha256 (with --drill, a scratch restore)."""

    def work() -> dict[str, Any]:
        from pynomaly.settings import get_settings
        from tasks import backup
        from tasks.staging import staging_folder

        store = _store()
        resolved = backup.resolve_backup_id(store, backup_id)
        with staging_folder("pynomaly-verify-", get_settings().staging_dir) as folder:
            manifest = backup.verify_backup(store, resolved, folder, _key(store))
        result: dict[str, Any] = {
            "id": resolved,
            "files_verified": len(manifest["files"]),
            "counts": manifest["counts"],
        }
        if drill:
            from flows.restore_drill import restore_drill

            result["drill"] = restore_drill(resolved)
        return result

    result = run(work, as_json=as_json, debug=debug, status="Verifying…")
    if not as_json:
        rows = {"signature": "valid", "files": f"{result['files_verified']} verified (sha256)"}
        if drill:
            rows["drill"] = f"passed in {result['drill']['seconds']} s"
            rows["champions re-scored"] = result["drill"]["verification"]["champions_checked"]
        show(f"Backup {result['id']} is intact", rows)


@backup_app.command()
def restore(
    backup_id: IdArg = "latest",
    yes: Annotated[bool, typer.Option("--yes", help="Do not ask before overwriting.")] = False,
    trust_unsigned: Annotated[
        bool,
        typer.Option(
            "--trust-unsigned",
            help="Restore a backup without a signature (made before backups were signed); "
            "only when you know where it came from.",
        ),
    ] = False,
    as_json: JsonOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Verify a backup, back up the current state, restore over it and check the result."""

    if not yes:
        if not sys.stdin.isatty():
            err.print("error: restore overwrites the platform state: pass --yes", markup=False)
            raise typer.Exit(2)
        typer.confirm(f"Overwrite the platform state with backup {backup_id}?", abort=True)

    def work() -> dict[str, Any]:
        from flows.backup_platform import platform_state
        from pynomaly.settings import get_settings
        from tasks import backup

        store = _store()
        # The key signs the pre-restore backup too, so it is made here if there is none yet.
        key = _key(store, create=True)
        state = platform_state(get_settings())
        return backup.restore_backup(
            state, store, backup_id, key=key, trust_unsigned=trust_unsigned
        )

    result = run(work, as_json=as_json, debug=debug, status="Restoring…")
    if not as_json:
        rows = {
            "signature": "valid" if result["signed"] else "none (--trust-unsigned)",
            "databases": ", ".join(result["databases"]),
            "state before restore": f"backed up as {result.get('pre_restore_backup')}",
            "champions re-scored": result["verification"]["champions_checked"],
            "seconds": result["seconds"],
        }
        if "mlflow_schema_upgraded" in result:
            rows["MLflow schema"] = result["mlflow_schema_upgraded"]
        rows |= result["verification"]["counts"]
        show(f"Restored {result['id']}", rows)


@backup_app.command()
def prune(
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Only show what would go.")] = False,
    as_json: JsonOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Delete backups the retention settings do not keep."""

    def work() -> dict[str, Any]:
        from pynomaly.settings import get_settings
        from tasks import backup

        settings = get_settings()
        store = _store()
        result = backup.prune_backups(
            store,
            keep_last=settings.backup_keep_last,
            keep_daily_days=settings.backup_keep_daily_days,
            keep_weekly_weeks=settings.backup_keep_weekly_weeks,
            dry_run=dry_run,
        )
        return {**result, "dry_run": dry_run}

    result = run(work, as_json=as_json, debug=debug, status="Pruning…")
    if not as_json:
        verb = "would delete" if dry_run else "deleted"
        show(
            "Backup retention",
            {verb: ", ".join(result["deleted"]) or "none", "kept": len(result["kept"])},
        )
