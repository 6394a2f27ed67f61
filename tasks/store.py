"""Artifact store: the same calls on a local folder or an S3 bucket/prefix (AWS, MinIO, moto).

S3 goes through boto3 with one client per endpoint: fsspec/s3fs would be the well-kept
abstraction, but s3fs does not resolve cleanly beside this boto3 (pip falls back to s3fs 0.4).
"""

from __future__ import annotations

import io
import os
import shutil
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from pynomaly.errors import InputError

MISSING_CODES = {"404", "NoSuchKey", "NotFound"}
_clients: dict[str | None, Any] = {}
_client_lock = threading.Lock()


def split_s3_uri(uri: str) -> tuple[str, str]:
    """`s3://bucket/some/key` -> ("bucket", "some/key")."""
    if not uri.startswith("s3://"):
        raise InputError(f"not an s3:// URI: {uri!r}")
    bucket, _, key = uri[len("s3://") :].partition("/")
    if not bucket:
        raise InputError(f"S3 URI without a bucket: {uri!r}")
    return bucket, key


def s3_client(endpoint_url: str | None = None) -> Any:
    """The boto3 S3 client of an endpoint (one per process), failing fast (5 s connect,
    2 attempts) when the endpoint is down."""
    import boto3
    from botocore.config import Config

    endpoint_url = endpoint_url or None
    with _client_lock:
        if endpoint_url not in _clients:
            session = boto3.session.Session()  # its own session: the default one is not thread-safe
            config = Config(connect_timeout=5, read_timeout=60, retries={"max_attempts": 2})
            client = session.client("s3", endpoint_url=endpoint_url, config=config)
            if session.get_credentials() is None:
                return client  # not kept: credentials provided later are then picked up
            _clients[endpoint_url] = client
        return _clients[endpoint_url]


def s3_error(exc: Exception, uri: str, endpoint_url: str | None) -> InputError:
    """Turn a botocore failure into a one-line error naming the object or endpoint."""
    from botocore.exceptions import ClientError, EndpointConnectionError, NoCredentialsError

    if isinstance(exc, EndpointConnectionError):
        return InputError(f"cannot reach S3 endpoint {endpoint_url or 'AWS'} for {uri}")
    if isinstance(exc, NoCredentialsError):
        return InputError(f"no S3 credentials found for {uri} (set AWS_ACCESS_KEY_ID)")
    if isinstance(exc, ClientError):
        code = exc.response.get("Error", {}).get("Code", "")
        if code in MISSING_CODES:
            return InputError(f"{uri}: no such S3 object")
        if code == "NoSuchBucket":
            return InputError(f"{uri}: no such S3 bucket")
        return InputError(f"{uri}: S3 error {code}: {exc}")
    return InputError(f"{uri}: {exc}")


@dataclass(frozen=True)
class ArtifactStore:
    """Keys under a root that is a local folder or `s3://bucket/prefix`."""

    root: str
    endpoint_url: str | None = None
    # S3 objects written with server-side encryption (SSE-S3), as the backup store is.
    encrypted: bool = False

    @property
    def is_s3(self) -> bool:
        return self.root.startswith("s3://")

    @property
    def _root_key(self) -> str:
        """The key prefix of an S3 root (`s3://bucket/a/b` -> "a/b/")."""
        return split_s3_uri(self.root.rstrip("/") + "/")[1]

    def uri(self, key: str) -> str:
        """Full path or s3:// URI of a key."""
        return f"{self.root.rstrip('/')}/{key}"

    @contextmanager
    def _s3(self, key: str = "") -> Iterator[tuple[Any, str, str]]:
        """(client, bucket, full key) of a key; a botocore failure becomes one InputError."""
        bucket, k = split_s3_uri(self.uri(key))
        try:
            yield s3_client(self.endpoint_url), bucket, k
        except InputError:
            raise
        except Exception as exc:
            raise s3_error(exc, self.uri(key), self.endpoint_url) from exc

    def exists(self, key: str) -> bool:
        """Whether the key is stored."""
        if not self.is_s3:
            return Path(self.uri(key)).exists()
        from botocore.exceptions import ClientError

        with self._s3(key) as (client, bucket, k):
            try:
                client.head_object(Bucket=bucket, Key=k)
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") in MISSING_CODES:
                    return False
                raise
        return True

    def put_fileobj(self, key: str, fh: IO[bytes]) -> str:
        """Store a stream under `key` atomically (readers never see half a file)."""
        target = self.uri(key)
        if self.is_s3:
            extra = {"ServerSideEncryption": "AES256"} if self.encrypted else None
            with self._s3(key) as (client, bucket, k):
                client.upload_fileobj(fh, bucket, k, ExtraArgs=extra)
            return target
        dest = Path(target)
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.")
        try:
            with os.fdopen(fd, "wb") as out:
                shutil.copyfileobj(fh, out, 1 << 20)
            os.replace(tmp, dest)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return target

    def put_file(self, key: str, path: Path) -> str:
        """Store a local file under `key`."""
        with open(path, "rb") as fh:
            return self.put_fileobj(key, fh)

    def put_bytes(self, key: str, data: bytes) -> str:
        """Store bytes under `key`."""
        return self.put_fileobj(key, io.BytesIO(data))

    @contextmanager
    def open(self, key: str, version_id: str | None = None) -> Iterator[tuple[IO[bytes], int]]:
        """(stream, size) of a stored key, or of one S3 object version; streamed, not copied."""
        if not self.is_s3:
            with open(self.uri(key), "rb") as fh:
                yield fh, os.fstat(fh.fileno()).st_size
            return
        with self._s3(key) as (client, bucket, k):
            extra = {"VersionId": version_id} if version_id else {}
            got = client.get_object(Bucket=bucket, Key=k, **extra)
        with got["Body"] as body:
            yield body, int(got["ContentLength"])

    def get_bytes(self, key: str) -> bytes:
        """The bytes stored under `key`."""
        try:
            with self.open(key) as (fh, _):
                return fh.read()
        except FileNotFoundError:
            raise InputError(f"{self.uri(key)}: not found in the artifact store") from None

    def download(self, key: str, path: Path, version_id: str | None = None) -> Path:
        """Copy `key` (or one S3 version of it) to a local file."""
        path.parent.mkdir(parents=True, exist_ok=True)
        with self.open(key, version_id) as (fh, _), open(path, "wb") as out:
            shutil.copyfileobj(fh, out, 1 << 20)
        return path

    def sizes(self, prefix: str = "") -> dict[str, int]:
        """key (relative to the root) -> size of every file under a prefix, sorted by key."""
        if not self.is_s3:
            base = Path(self.root)
            start = base / prefix
            found = {}
            for p in start.rglob("*") if start.exists() else []:
                try:
                    if p.is_file():
                        found[str(p.relative_to(base))] = p.stat().st_size
                except FileNotFoundError:
                    continue  # removed while we walked (e.g. a temp file renamed into place)
            return dict(sorted(found.items()))
        found = {}
        with self._s3(prefix) as (client, bucket, _):
            root_key = self._root_key
            for page in client.get_paginator("list_objects_v2").paginate(
                Bucket=bucket, Prefix=root_key + prefix
            ):
                for obj in page.get("Contents", []):
                    found[obj["Key"][len(root_key) :]] = int(obj["Size"])
        return dict(sorted(found.items()))

    def list(self, prefix: str = "") -> list[str]:
        """Keys under a prefix, relative to the root."""
        return list(self.sizes(prefix))

    def delete(self, key: str) -> None:
        """Remove a key (no error when it is already gone)."""
        if not self.is_s3:
            Path(self.uri(key)).unlink(missing_ok=True)
            return
        with self._s3(key) as (client, bucket, k):
            client.delete_object(Bucket=bucket, Key=k)

    def delete_prefix(self, prefix: str) -> int:
        """Remove every key under a prefix; the number removed."""
        keys = self.list(prefix)
        if not self.is_s3:
            shutil.rmtree(self.uri(prefix), ignore_errors=True)
            return len(keys)
        with self._s3(prefix) as (client, bucket, _):
            root_key = self._root_key
            for start in range(0, len(keys), 1000):
                batch = [{"Key": root_key + k} for k in keys[start : start + 1000]]
                client.delete_objects(Bucket=bucket, Delete={"Objects": batch, "Quiet": True})
        return len(keys)

    # Object versions (a versioned S3 bucket) -------------------------------------------------

    def versioned(self) -> bool:
        """Whether this is an S3 store whose bucket keeps object versions."""
        if not self.is_s3:
            return False
        with self._s3() as (client, bucket, _):
            return client.get_bucket_versioning(Bucket=bucket).get("Status") == "Enabled"

    def versions(self) -> list[dict[str, Any]]:
        """Current key, size, ETag and version id of every object, sorted by key."""
        listing = []
        with self._s3() as (client, bucket, _):
            root_key = self._root_key
            pages = client.get_paginator("list_object_versions").paginate(
                Bucket=bucket, Prefix=root_key
            )
            for page in pages:
                listing += [
                    {
                        "key": v["Key"][len(root_key) :],
                        "size": int(v["Size"]),
                        "etag": v["ETag"].strip('"'),
                        "version_id": v["VersionId"],
                    }
                    for v in page.get("Versions", [])
                    if v.get("IsLatest")
                ]
        return sorted(listing, key=lambda o: o["key"])

    def make_current(self, key: str, version_id: str) -> None:
        """Make an older version of an object the current one again (a server-side copy)."""
        with self._s3(key) as (client, bucket, k):
            source = {"Bucket": bucket, "Key": k, "VersionId": version_id}
            client.copy_object(Bucket=bucket, Key=k, CopySource=source)
