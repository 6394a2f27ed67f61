"""A backup's manifest: ids, the names a backup may hold, signing, and the checks that run on
every file a backup names before any path is built from it or anything is unpacked."""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
import tarfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pynomaly.errors import InputError
from tasks.backup.artifacts import read_json_gz
from tasks.backup.databases import DB_FILES, DB_ROLES
from tasks.backup.keys import KEY_ENV, SIGNATURE_ALGORITHM, BackupKey
from tasks.store import ArtifactStore

FORMAT_VERSION = 2  # 2: manifest.sig (HMAC) and champion warnings; 1: manifest.sha256 only
READABLE_FORMATS = (1, 2)
MANIFEST = "manifest.json"
MANIFEST_SUM = "manifest.sha256"  # format 1 only: an integrity check, not an authentication
SIGNATURE = "manifest.sig"
ID_PATTERN = re.compile(r"\d{8}T\d{6}Z-[0-9a-f]{1,16}")
ID_TIME_FORMAT = "%Y%m%dT%H%M%SZ"
CHAMPIONS = "champions.json.gz"
EXPECTATIONS = "expectations.tar.gz"
ARTIFACTS_COPY = "artifacts.tar.gz"
ARTIFACTS_LISTING = "artifacts-listing.json.gz"
# Every file a backup may hold: a manifest naming anything else is refused before any path is
# built from it.
BACKUP_FILES = frozenset(
    {CHAMPIONS, EXPECTATIONS, ARTIFACTS_COPY, ARTIFACTS_LISTING}
    | {pattern.format(role=role) for pattern in DB_FILES.values() for role in DB_ROLES}
)


# Ids -------------------------------------------------------------------------------------------


def new_backup_id(now: datetime | None = None) -> str:
    """`20260101T020000Z-1a2b`: sortable by time, unique when two start in the same second."""
    now = (now or datetime.now(UTC)).astimezone(UTC)
    return f"{now.strftime(ID_TIME_FORMAT)}-{secrets.token_hex(2)}"


def backup_time(backup_id: str) -> datetime:
    """The UTC time a backup id was made at."""
    try:
        return datetime.strptime(backup_id.split("-")[0], ID_TIME_FORMAT).replace(tzinfo=UTC)
    except ValueError:
        raise InputError(
            f"{backup_id!r} is not a backup id (expected e.g. 20260101T020000Z-1a2b)"
        ) from None


def is_backup_id(text: str) -> bool:
    """Whether `text` has the form of a backup id and names a real time."""
    try:
        return bool(ID_PATTERN.fullmatch(text)) and bool(backup_time(text))
    except InputError:
        return False


def check_id(backup_id: str) -> str:
    """A backup id, refused unless it is exactly one (it becomes part of every key read)."""
    if not is_backup_id(backup_id):
        raise InputError(f"{backup_id!r} is not a backup id (expected e.g. 20260101T020000Z-1a2b)")
    return backup_id


# Signature -------------------------------------------------------------------------------------


def signature_status(
    body: bytes, signature: bytes | None, key: BackupKey | None, legacy_sum: bytes | None
) -> tuple[str, str | None]:
    """(status, problem) of a manifest's signature: ok, unchecked, unsigned or bad-signature."""
    if signature is None:
        if legacy_sum is not None and hashlib.sha256(body).hexdigest() != legacy_sum.strip().decode(
            errors="replace"
        ):
            return "malformed", f"{MANIFEST} does not match {MANIFEST_SUM}"
        return "unsigned", "not signed (made before backups were signed, or its signature removed)"
    try:
        sig = json.loads(signature)
        algorithm, key_id, mac = sig["algorithm"], sig["key_id"], sig["mac"]
    except (ValueError, TypeError, KeyError):
        return "bad-signature", f"{SIGNATURE} is not a signature"
    if algorithm != SIGNATURE_ALGORITHM or not isinstance(mac, str):
        return "bad-signature", f"{SIGNATURE} uses {algorithm!r}, not {SIGNATURE_ALGORITHM}"
    if key is None:
        return "unchecked", "signed, but no backup key here to check it"
    if hmac.compare_digest(mac, key.mac(body)):
        return "ok", None
    if key_id != key.key_id:
        return "bad-signature", f"signed with another key (id {key_id}; this key is {key.key_id})"
    return "bad-signature", "its signature does not match: the manifest was changed after signing"


def write_manifest(store: ArtifactStore, manifest: dict[str, Any], key: BackupKey) -> bytes:
    """Store a backup's signature, then its manifest (which marks it complete); the bytes."""
    body = json.dumps(manifest, indent=2, sort_keys=True).encode()
    store.put_bytes(f"{manifest['id']}/{SIGNATURE}", key.signature(body))
    store.put_bytes(f"{manifest['id']}/{MANIFEST}", body)
    return body


# Checks ----------------------------------------------------------------------------------------


def check_member(name: Any, backup_id: str, what: str, prefix: str = "") -> str:
    """A relative path inside an archive or listing, checked before any path is built from it:
    no absolute path, no `..`, no backslash, nothing outside `prefix`."""
    parts = name.split("/") if isinstance(name, str) else []
    if (
        not parts
        or "\\" in name
        or name.startswith("/")
        or ":" in parts[0]
        or any(p in {"", ".", ".."} for p in parts)
        or any(ord(c) < 32 for c in name)
        or not name.startswith(prefix)
    ):
        where = f" under {prefix}" if prefix else ""
        raise InputError(f"backup {backup_id}: {what} holds {name!r}, not a relative path{where}")
    return name


def parse_manifest(body: bytes, backup_id: str) -> dict[str, Any]:
    """The manifest as data, with format, schema, names and sections checked (InputError)."""
    bad = f"backup {backup_id}: {MANIFEST}"
    try:
        manifest = json.loads(body)
    except ValueError:
        raise InputError(f"{bad} is not JSON") from None
    if not isinstance(manifest, dict):
        raise InputError(f"{bad} is not a JSON object")
    fmt = manifest.get("format")
    if fmt is None:
        raise InputError(f"{bad} has no format")
    if type(fmt) is not int or fmt not in READABLE_FORMATS:
        raise InputError(
            f"{bad} has format {fmt!r}; this Pynomaly reads formats "
            f"{', '.join(map(str, READABLE_FORMATS))} (use the version that made it)"
        )
    schema = manifest.get("schema")
    if not isinstance(schema, dict) or "mlflow_alembic_revision" not in schema:
        raise InputError(f"{bad} has no schema (mlflow_alembic_revision)")
    if not isinstance(schema["mlflow_alembic_revision"], str | None):
        raise InputError(f"{bad}: schema.mlflow_alembic_revision is not a revision")
    if manifest.get("id") != backup_id:
        raise InputError(f"{bad} belongs to backup {manifest.get('id')!r}")
    for section, kind in (
        ("created_at", str),
        ("counts", dict),
        ("files", dict),
        ("databases", dict),
        ("artifacts", dict),
        ("champions", list),
        ("platform", dict),
    ):
        if not isinstance(manifest.get(section), kind):
            raise InputError(f"{bad} has no valid {section}")
    files = manifest["files"]
    for name, info in files.items():
        if name not in BACKUP_FILES:
            raise InputError(f"{bad} names {name!r}, which is not a backup file")
        if not (
            isinstance(info, dict)
            and isinstance(info.get("sha256"), str)
            and type(info.get("bytes")) is int
        ):
            raise InputError(f"{bad}: {name} has no sha256 and size")
    for role, info in manifest["databases"].items():
        if role not in DB_ROLES or not isinstance(info, dict):
            raise InputError(f"{bad} holds an unknown database {role!r}")
        if info.get("absent"):
            continue
        kind = info.get("kind")
        if kind not in DB_FILES or info.get("file") != DB_FILES[kind].format(role=role):
            raise InputError(f"{bad}: the {role} database names {info.get('file')!r}")
        if info["file"] not in files:
            raise InputError(f"{bad}: the {role} database's {info['file']} is not listed")
    mode = manifest["artifacts"].get("mode")
    archive = {"copy": ARTIFACTS_COPY, "listing": ARTIFACTS_LISTING}.get(mode)
    if archive is None or archive not in files or EXPECTATIONS not in files:
        raise InputError(f"{bad}: artifacts mode {mode!r} without its files")
    if not isinstance(manifest["artifacts"].get("root_uri"), str):
        raise InputError(f"{bad}: artifacts have no root_uri")
    return manifest


def signed_manifest(
    store: ArtifactStore, backup_id: str, key: BackupKey | None
) -> tuple[bytes, str, str | None]:
    """A backup's manifest bytes and its signature's (status, problem), see signature_status."""
    names = {k.rpartition("/")[2] for k in store.list(f"{backup_id}/")}
    if MANIFEST not in names:
        raise InputError(f"backup {backup_id} not found in {store.root} (or it is incomplete)")

    def read(name: str) -> bytes | None:
        return store.get_bytes(f"{backup_id}/{name}") if name in names else None

    body, signature = store.get_bytes(f"{backup_id}/{MANIFEST}"), read(SIGNATURE)
    legacy = read(MANIFEST_SUM) if signature is None else None
    return body, *signature_status(body, signature, key, legacy)


def read_manifest(
    store: ArtifactStore,
    backup_id: str,
    key: BackupKey | None,
    *,
    trust_unsigned: bool = False,
) -> dict[str, Any]:
    """A backup's manifest, authenticated by its signature, then checked (InputError).

    Refuses, before anything else of the backup is read: a missing or wrong signature, a
    signature no key here can check, and (unless `trust_unsigned`) an unsigned backup.
    """
    body, status, problem = signed_manifest(store, check_id(backup_id), key)
    if status == "unchecked":
        raise InputError(
            f"backup {backup_id} is signed but there is no backup key here: set {KEY_ENV} "
            "to the key that signed it"
        )
    if status == "unsigned" and not trust_unsigned:
        raise InputError(
            f"backup {backup_id} is {problem}: refused (restore --trust-unsigned takes it "
            "if you know where it came from)"
        )
    if status not in {"ok", "unsigned"}:
        raise InputError(f"backup {backup_id} is refused: {problem}")
    manifest = parse_manifest(body, backup_id)
    manifest["signed"] = status == "ok"
    return manifest


def archive_members(path: Path, backup_id: str, prefix: str = "") -> dict[str, int]:
    """name -> size of the files in a backup's tar.gz, every member checked (InputError):
    regular files and folders only, each a relative path under `prefix`."""
    found: dict[str, int] = {}
    try:
        with tarfile.open(path, "r:gz") as tar:
            for member in tar.getmembers():
                check_member(member.name, backup_id, path.name, prefix)
                if member.isdir():
                    continue
                if not member.isfile():
                    raise InputError(
                        f"backup {backup_id}: {path.name} holds {member.name!r}, "
                        "which is not a regular file"
                    )
                found[member.name] = member.size
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise InputError(
            f"backup {backup_id}: {path.name} is not a readable archive: {exc}"
        ) from None
    return found


def check_staged(manifest: dict[str, Any], folder: Path) -> dict[str, Any]:
    """Read every verified file's content list and check it (names, types) before any of it is
    written anywhere; what they hold: {artifacts, suites, listing, champions}."""
    backup_id = manifest["id"]
    staged: dict[str, Any] = {
        "suites": archive_members(folder / EXPECTATIONS, backup_id, "expectations/")
    }
    if manifest["artifacts"]["mode"] == "listing":
        listing = read_json_gz(folder / ARTIFACTS_LISTING)
        if not isinstance(listing, list):
            raise InputError(f"backup {backup_id}: {ARTIFACTS_LISTING} is not a listing")
        for obj in listing:
            if not (
                isinstance(obj, dict)
                and type(obj.get("size")) is int
                and isinstance(obj.get("version_id"), str)
            ):
                raise InputError(f"backup {backup_id}: {ARTIFACTS_LISTING} has a bad entry")
            check_member(obj.get("key"), backup_id, ARTIFACTS_LISTING)
        staged["listing"] = listing
        staged["artifacts"] = {o["key"]: o["size"] for o in listing}
    else:
        staged["artifacts"] = archive_members(folder / ARTIFACTS_COPY, backup_id)
    champions = read_json_gz(folder / CHAMPIONS) if CHAMPIONS in manifest["files"] else []
    if not isinstance(champions, list) or not all(
        isinstance(c, dict)
        and isinstance(c.get("model"), str)
        and type(c.get("version")) is int
        and isinstance(c.get("sample"), dict | None)
        for c in champions
    ):
        raise InputError(f"backup {backup_id}: {CHAMPIONS} is not a list of champion samples")
    staged["champions"] = champions
    return staged
