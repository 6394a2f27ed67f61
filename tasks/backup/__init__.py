"""Back up and restore the whole platform state, with a signed manifest and verified restores.

A backup is a folder `<id>/` in the backup store (a local folder or s3://bucket/prefix):

    manifest.json          what is inside: files + sha256, counts, versions, sources, warnings
    manifest.sig           HMAC-SHA256 of manifest.json under the backup key, which never lives
                           in the backup store: whoever can write the store cannot re-sign a
                           changed backup (format 1 backups, made before signatures, carried
                           only manifest.sha256 and are treated as unauthenticated)
    mlflow.sqlite.gz | mlflow.pgdump      MLflow backend store (SQLite copy or pg_dump -Fc)
    results.*, optuna.*, prefect.*        the other databases, when the platform has them
    expectations.tar.gz    the expectation suites
    artifacts.tar.gz | artifacts-listing.json.gz   the artifact store: a copy, or for a
                           versioned S3 bucket a listing of key, size, ETag and version id
    champions.json.gz      per champion: sample input rows and the scores it gave

Consistency across stores comes from the order things are taken in: each later part is a
superset of what the earlier parts refer to (results -> MLflow -> artifacts), and counts are
read from the very snapshot that is dumped (the SQLite copy, or pg_dump's exported snapshot).
"""

from tasks.backup.catalog import USABLE_STATUSES, list_backups, prune_backups, resolve_backup_id
from tasks.backup.create import create_backup
from tasks.backup.databases import create_pg_database, drop_pg_database, pg_tool
from tasks.backup.drill import drill_restore
from tasks.backup.keys import KEY_FILE, BackupKey, backup_key, load_backup_key
from tasks.backup.manifest import MANIFEST, new_backup_id
from tasks.backup.restore import restore_backup, verify_backup
from tasks.backup.state import PlatformState, backup_store, platform_state

__all__ = [
    "KEY_FILE",
    "MANIFEST",
    "USABLE_STATUSES",
    "BackupKey",
    "PlatformState",
    "backup_key",
    "backup_store",
    "create_backup",
    "create_pg_database",
    "drill_restore",
    "drop_pg_database",
    "list_backups",
    "load_backup_key",
    "new_backup_id",
    "pg_tool",
    "platform_state",
    "prune_backups",
    "resolve_backup_id",
    "restore_backup",
    "verify_backup",
]
