"""Where a secret token occurs in what a run wrote: every file under a folder, read as bytes and
through what it decompresses to (gzip, tar members, Parquet contents and metadata). Shared by
the source-secret tests (tests/flows/test_source_references.py,
tests/integration/test_source_secrets.py)."""

from __future__ import annotations

import gzip
import io
import tarfile
from pathlib import Path

import pyarrow.parquet as pq


def occurrences(data: bytes, token: bytes, name: str) -> list[str]:
    """Where `token` occurs in `data` or in anything decompressed from it (gzip, tar members,
    Parquet contents and metadata), by name."""
    found = [name] if token in data else []
    if data[:2] == b"\x1f\x8b":
        found += occurrences(gzip.decompress(data), token, f"{name}|gunzip")
    elif len(data) > 262 and data[257:262] == b"ustar":
        with tarfile.open(fileobj=io.BytesIO(data)) as tar:
            for member in tar.getmembers():
                if member.isfile():
                    body = tar.extractfile(member).read()
                    found += occurrences(body, token, f"{name}|{member.name}")
    elif data[:4] == b"PAR1":
        table = pq.read_table(io.BytesIO(data))
        text = table.to_pandas().to_csv().encode() + str(table.schema.metadata).encode()
        if token in text:
            found.append(f"{name}|parquet contents")
    return found


def scan(root: Path, token: bytes) -> tuple[int, list[str]]:
    """(files scanned, places holding the token) for every file under `root`."""
    files, found = 0, []
    for path in sorted(p for p in root.rglob("*") if p.is_file() and not p.is_symlink()):
        files += 1
        found += occurrences(path.read_bytes(), token, str(path.relative_to(root)))
    return files, found
