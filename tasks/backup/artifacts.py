"""The artifact store in a backup: a tar.gz copy, or for a versioned S3 bucket a listing of the
object versions; and the file helpers the backup files share."""

from __future__ import annotations

import gzip
import hashlib
import json
import tarfile
import time
from pathlib import Path
from typing import Any

from tasks.backup.databases import GZIP_LEVEL
from tasks.store import ArtifactStore


def sha256_of(path: Path) -> str:
    """Hex sha256 of a file."""
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def write_json_gz(path: Path, data: Any) -> Path:
    """JSON, gzip-compressed; floats keep their exact repr."""
    with gzip.open(path, "wt", compresslevel=GZIP_LEVEL, encoding="utf-8") as fh:
        json.dump(data, fh)
    return path


def read_json_gz(path: Path) -> Any:
    """Read what write_json_gz wrote."""
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        return json.load(fh)


def artifact_root_uri(store: ArtifactStore) -> str:
    """The artifact root as MLflow records it (file:///abs/path or s3://bucket/prefix)."""
    if store.is_s3:
        return store.root.rstrip("/")
    return Path(store.root).resolve().as_uri()


def pack_store(store: ArtifactStore, dest: Path, prefix: str = "") -> dict[str, int]:
    """A tar.gz of every file under a prefix of a store, streamed; key -> size of what went in."""
    packed: dict[str, int] = {}
    with tarfile.open(dest, "w:gz", compresslevel=GZIP_LEVEL) as tar:
        for key in store.list(prefix):
            try:
                with store.open(key) as (fh, size):
                    info = tarfile.TarInfo(key)
                    info.size, info.mtime = size, int(time.time())
                    tar.addfile(info, fh)
            except FileNotFoundError:
                continue  # removed while we walked (e.g. a temp file renamed into place)
            packed[key] = size
    return packed


def unpack_into(store: ArtifactStore, archive: Path) -> dict[str, int]:
    """Write every file of a checked tar.gz (see manifest.archive_members) into a store;
    key -> size written."""
    written: dict[str, int] = {}
    with tarfile.open(archive, "r:gz") as tar:
        for member in tar:
            if member.isfile():
                store.put_fileobj(member.name, tar.extractfile(member))
                written[member.name] = member.size
    return written


def restore_versions(store: ArtifactStore, listing: list[dict[str, Any]]) -> int:
    """Make each listed version the current object again where it is not; copies made."""
    current = {o["key"]: o["version_id"] for o in store.versions()}
    stale = [o for o in listing if current.get(o["key"]) != o["version_id"]]
    for obj in stale:
        store.make_current(obj["key"], obj["version_id"])
    return len(stale)


def download_versions(store: ArtifactStore, listing: list[dict[str, Any]], folder: Path) -> None:
    """Fetch each listed version into a local folder (a drill's scratch copy)."""
    for obj in listing:
        store.download(obj["key"], folder / obj["key"], obj["version_id"])
