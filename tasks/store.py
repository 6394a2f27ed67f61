"""Artifact store: the same calls on a local folder or an S3 bucket/prefix (AWS, MinIO, moto)."""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pynomaly.errors import InputError


def split_s3_uri(uri: str) -> tuple[str, str]:
    """`s3://bucket/some/key` -> ("bucket", "some/key")."""
    if not uri.startswith("s3://"):
        raise InputError(f"not an s3:// URI: {uri!r}")
    bucket, _, key = uri[len("s3://") :].partition("/")
    if not bucket:
        raise InputError(f"S3 URI without a bucket: {uri!r}")
    return bucket, key


def s3_client(endpoint_url: str | None = None) -> Any:
    """A boto3 S3 client that fails fast (5 s connect, 2 attempts) when the endpoint is down."""
    import boto3
    from botocore.config import Config

    config = Config(connect_timeout=5, read_timeout=60, retries={"max_attempts": 2})
    return boto3.client("s3", endpoint_url=endpoint_url or None, config=config)


def s3_error(exc: Exception, uri: str, endpoint_url: str | None) -> InputError:
    """Turn a botocore failure into a one-line error naming the object or endpoint."""
    from botocore.exceptions import ClientError, EndpointConnectionError, NoCredentialsError

    if isinstance(exc, EndpointConnectionError):
        return InputError(f"cannot reach S3 endpoint {endpoint_url or 'AWS'} for {uri}")
    if isinstance(exc, NoCredentialsError):
        return InputError(f"no S3 credentials found for {uri} (set AWS_ACCESS_KEY_ID)")
    if isinstance(exc, ClientError):
        code = exc.response.get("Error", {}).get("Code", "")
        if code in {"NoSuchKey", "404", "NotFound"}:
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

    @property
    def is_s3(self) -> bool:
        return self.root.startswith("s3://")

    def uri(self, key: str) -> str:
        """Full path or s3:// URI of a key."""
        return f"{self.root.rstrip('/')}/{key}"

    def _bucket_key(self, key: str) -> tuple[str, str]:
        return split_s3_uri(self.uri(key))

    def exists(self, key: str) -> bool:
        """Whether the key is stored."""
        if not self.is_s3:
            return Path(self.uri(key)).exists()
        from botocore.exceptions import ClientError

        bucket, k = self._bucket_key(key)
        try:
            s3_client(self.endpoint_url).head_object(Bucket=bucket, Key=k)
            return True
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in {"404", "NoSuchKey", "NotFound"}:
                return False
            raise s3_error(exc, self.uri(key), self.endpoint_url) from exc
        except Exception as exc:
            raise s3_error(exc, self.uri(key), self.endpoint_url) from exc

    def put_file(self, key: str, path: Path) -> str:
        """Store a local file under `key` atomically (readers never see half a file)."""
        target = self.uri(key)
        if self.is_s3:
            bucket, k = self._bucket_key(key)
            try:
                s3_client(self.endpoint_url).upload_file(str(path), bucket, k)
            except Exception as exc:
                raise s3_error(exc, target, self.endpoint_url) from exc
            return target
        dest = Path(target)
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.")
        os.close(fd)
        shutil.copyfile(path, tmp)
        os.replace(tmp, dest)
        return target

    def put_bytes(self, key: str, data: bytes) -> str:
        """Store bytes under `key`."""
        with tempfile.NamedTemporaryFile(delete=False) as tmp:
            tmp.write(data)
        try:
            return self.put_file(key, Path(tmp.name))
        finally:
            os.unlink(tmp.name)

    def get_bytes(self, key: str) -> bytes:
        """The bytes stored under `key`."""
        if not self.is_s3:
            path = Path(self.uri(key))
            if not path.exists():
                raise InputError(f"{path}: not found in the artifact store")
            return path.read_bytes()
        bucket, k = self._bucket_key(key)
        try:
            return s3_client(self.endpoint_url).get_object(Bucket=bucket, Key=k)["Body"].read()
        except Exception as exc:
            raise s3_error(exc, self.uri(key), self.endpoint_url) from exc

    def download(self, key: str, path: Path) -> Path:
        """Copy `key` to a local file."""
        if not self.is_s3:
            shutil.copyfile(self.uri(key), path)
            return path
        bucket, k = self._bucket_key(key)
        try:
            s3_client(self.endpoint_url).download_file(bucket, k, str(path))
        except Exception as exc:
            raise s3_error(exc, self.uri(key), self.endpoint_url) from exc
        return path

    def list(self, prefix: str = "") -> list[str]:
        """Keys under a prefix, relative to the root."""
        if not self.is_s3:
            base = Path(self.root)
            start = base / prefix
            if not start.exists():
                return []
            return sorted(str(p.relative_to(base)) for p in start.rglob("*") if p.is_file())
        bucket, root_key = split_s3_uri(self.root.rstrip("/") + "/")
        keys: list[str] = []
        try:
            pages = s3_client(self.endpoint_url).get_paginator("list_objects_v2")
            for page in pages.paginate(Bucket=bucket, Prefix=root_key + prefix):
                keys += [o["Key"][len(root_key) :] for o in page.get("Contents", [])]
        except Exception as exc:
            raise s3_error(exc, self.uri(prefix), self.endpoint_url) from exc
        return sorted(keys)

    def delete(self, key: str) -> None:
        """Remove a key (no error when it is already gone)."""
        if not self.is_s3:
            Path(self.uri(key)).unlink(missing_ok=True)
            return
        bucket, k = self._bucket_key(key)
        try:
            s3_client(self.endpoint_url).delete_object(Bucket=bucket, Key=k)
        except Exception as exc:
            raise s3_error(exc, self.uri(key), self.endpoint_url) from exc
