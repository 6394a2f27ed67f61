"""The backup key: an HMAC secret kept outside the backup store, from the environment (passed
down by the caller) or, in embedded mode, a key file under the platform home."""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import os
import secrets
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from pynomaly.errors import InputError
from tasks.store import ArtifactStore

KEY_ENV = "PYNOMALY_BACKUP_KEY"  # named in messages; the edge reads it (Settings.backup_key)
KEY_FILE = "backup.key"  # embedded mode: under the platform home, never in the backup store
MIN_KEY_CHARS = 32
SIGNATURE_ALGORITHM = "HMAC-SHA256"


@dataclass(frozen=True)
class BackupKey:
    """The secret that signs manifests; kept outside the backup store, never logged."""

    secret: bytes = field(repr=False)
    source: str  # where it came from: the environment variable's name or the key file's path

    @property
    def key_id(self) -> str:
        """A short fingerprint naming the key (tells "another key" from "altered")."""
        return hashlib.sha256(b"pynomaly backup key id:" + self.secret).hexdigest()[:12]

    def mac(self, body: bytes) -> str:
        """HMAC-SHA256 of the manifest bytes, hex."""
        return hmac.new(self.secret, body, hashlib.sha256).hexdigest()

    def signature(self, body: bytes) -> bytes:
        """The manifest.sig content for a manifest."""
        sig = {"algorithm": SIGNATURE_ALGORITHM, "key_id": self.key_id, "mac": self.mac(body)}
        return json.dumps(sig, sort_keys=True).encode()


def load_backup_key(
    env_value: str | None, key_file: Path | None, *, create: bool = False
) -> BackupKey | None:
    """The backup key: `env_value` when set, else the key file (made once when `create`).

    None when there is none and `create` is false (read-only commands never make a key).
    """
    if env_value:
        if len(env_value.strip()) < MIN_KEY_CHARS:
            raise InputError(
                f"{KEY_ENV} is shorter than {MIN_KEY_CHARS} characters: use a random secret, "
                "e.g. `openssl rand -hex 32`"
            )
        return BackupKey(env_value.strip().encode(), KEY_ENV)
    if key_file is None:
        if create:
            raise InputError(
                f"backups to an S3 store are signed with a key kept outside it: set {KEY_ENV} "
                "(from your secret store) on every process that backs up, verifies or restores"
            )
        return None
    if not key_file.exists():
        if not create:
            return None
        _create_key_file(key_file)
    mode = key_file.stat().st_mode
    if mode & 0o077:
        raise InputError(
            f"backup key file {key_file} is readable by others (mode {mode & 0o777:o}): "
            f"chmod 600 it, or set {KEY_ENV}"
        )
    secret = key_file.read_text().strip()
    if len(secret) < MIN_KEY_CHARS:
        raise InputError(f"backup key file {key_file} is empty or too short")
    return BackupKey(secret.encode(), str(key_file))


def _create_key_file(path: Path) -> None:
    """Write a new random key at `path`, atomically and 0600 from the first byte."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # mkstemp creates the file 0600; the link publishes it complete, and fails if another
    # process made the key first (then that key is the one everyone uses).
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_hex(32) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        with contextlib.suppress(FileExistsError):
            os.link(tmp, path)
    finally:
        os.unlink(tmp)


def backup_key(
    secret: str | None, home: Path, store: ArtifactStore, *, create: bool = False
) -> BackupKey | None:
    """The key for a backup store: `secret` (PYNOMALY_BACKUP_KEY) wins; a local backup store
    (embedded mode) otherwise uses `home/backup.key`; an S3 store needs the secret."""
    key_file = None
    if not store.is_s3:
        key_file = home / KEY_FILE
        root = Path(store.root).expanduser().resolve()
        if key_file.resolve() == root or root in key_file.resolve().parents:
            raise InputError(
                f"the backup key file {key_file} would be inside the backup store {store.root}: "
                f"set {KEY_ENV}, or move PYNOMALY_BACKUP_ROOT out of PYNOMALY_HOME's top folder"
            )
    return load_backup_key(secret, key_file, create=create)
