"""Flow: restore a backup into scratch databases and folders and check it, live state untouched."""

from __future__ import annotations

from typing import Any

from prefect import flow
from prefect.artifacts import create_markdown_artifact

from flows.backup_platform import platform_state
from pynomaly.settings import get_settings
from tasks import backup
from tasks.steps import drill_restore


@flow(name="restore-drill", log_prints=True)
def restore_drill(backup_id: str = "latest") -> dict[str, Any]:
    """Check signature and checksums, restore into scratch, compare counts and scores."""
    settings = get_settings()
    settings.export_client_environment()
    state = platform_state(settings)
    store = backup.backup_store(settings.backup_store_root, settings.s3_endpoint_url)
    # Never made here: no key, no signed backup to drill
    key = backup.backup_key(settings.backup_secret, settings.home_dir, store)

    # Authenticate, verify, restore into scratch, check (raises, failing the run, on an
    # unsigned or wrongly signed backup before anything of it is loaded, and on any mismatch)
    report = drill_restore(state, store, backup_id, key=key)

    # Report
    checked = report["verification"]
    create_markdown_artifact(
        key="restore-drill",
        markdown=(
            f"## Restore drill of `{report['id']}`: passed in {report['seconds']} s\n\n"
            f"{checked['champions_checked']} champion(s) scored exactly as recorded\n\n"
            + "\n".join(f"- {k}: {v}" for k, v in checked["counts"].items())
        ),
    )
    return report


if __name__ == "__main__":
    import sys

    print(restore_drill(sys.argv[1] if len(sys.argv) > 1 else "latest"))
