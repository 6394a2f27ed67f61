"""Read a source (CSV, Parquet, SQL table or query, s3:// object) in chunks, check it, snapshot it.

A snapshot is the normalised table as Parquet under `datasets/<name>/<sha256>.parquet` with a
manifest beside it. The hash is taken over the normalised content (column names, dtypes and
every row), so the same content is the same version whatever the file it came from.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import re
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pynomaly.errors import InputError
from tasks.store import ArtifactStore, split_s3_uri

PARQUET_SUFFIXES = {".parquet", ".pq"}
CSV_SUFFIXES = {".csv", ".txt", ".tsv"}
OTHER_DELIMITERS = [";", "\t", "|"]
# An object column whose values parse as numbers this often is a numeric column with bad text.
NUMERIC_SHARE = 0.9
# Leading bytes of files that are not CSV text, whatever their name says.
BINARY_MAGIC = {
    b"\x1f\x8b": "gzip-compressed",
    b"BZh": "bzip2-compressed",
    b"\xfd7zXZ\x00": "xz-compressed",
    b"(\xb5/\xfd": "zstd-compressed",
    b"PK\x03\x04": "zip-compressed",
    b"PAR1": "Parquet",
}
# Largest magnitude a number may have. Detectors square differences (variances, distances,
# covariances): a value beyond ~1.3e154 squares to infinity ("Input contains NaN", or scores
# that are inf or silently finite), and at 1e150 a square is at most 1e300, leaving a factor of
# 1e8 for the sums over rows and features. No measurement comes near it; such a value is a
# sentinel or a broken feed.
MAX_MAGNITUDE = 1e150
# First words of a statement that reads (anything else given as --query cannot be a source).
READ_STATEMENTS = {"select", "with", "values", "table"}


@dataclass
class Manifest:
    """What a snapshot holds: written beside the Parquet file as JSON."""

    dataset: str
    sha256: str
    rows: int
    columns: dict[str, str]
    source: str
    snapshot_uri: str = ""
    created_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat())

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)


def is_sql_url(source: str) -> bool:
    """Whether a source is a SQLAlchemy URL (and not a file or s3:// object)."""
    return bool(re.match(r"^[a-z][a-z0-9+]*://", source)) and not source.startswith(
        ("s3://", "file://")
    )


def redact(url: str) -> str:
    """A URL with its password hidden, fit for logs and error messages."""
    # Up to the last "@" before the path: a password may hold an unquoted "@".
    return re.sub(r"(://[^:/@]*):[^/]*@", r"\1:***@", url, count=1)


# A SQL source given by reference: the URL (and its password) is read from the environment or a
# Prefect Secret block inside the task that opens the connection, so flow parameters, run
# params and tags, logs, manifests and backups only ever hold the reference.
ENV_REFERENCE = "env:"
SECRET_REFERENCE = "secret:"
REFERENCE_FORMS = (
    "env:VARNAME (an environment variable) or secret:BLOCKNAME (a Prefect Secret block)"
)


def is_reference(source: str) -> bool:
    """Whether a source names its SQL URL by reference (`env:VARNAME` or `secret:BLOCKNAME`)."""
    return source.startswith((ENV_REFERENCE, SECRET_REFERENCE))


def has_password(url: str) -> bool:
    """Whether a SQL URL carries a password (which must not become a flow parameter)."""
    return redact(url) != url


def check_source(source: str) -> None:
    """Refuse a literal SQL URL with a password and a reference that cannot resolve; never echoes
    a password. A Secret block is only named here: it is read where Prefect runs (the read)."""
    if source.startswith(SECRET_REFERENCE):
        secret_block_name(source)
    elif is_reference(source):
        resolve_reference(source)
    elif is_sql_url(source) and has_password(source):
        raise InputError(
            f"{redact(source)}: a SQL URL with a password is not accepted as a source (Prefect "
            f"records run parameters); store the URL and pass {REFERENCE_FORMS} instead"
        )


def secret_block_name(source: str) -> str:
    """The block a `secret:BLOCKNAME` source names, if it is a valid Prefect block name."""
    name = source.removeprefix(SECRET_REFERENCE)
    if not re.fullmatch(r"[a-z0-9-]+", name):
        raise InputError(
            f"{source}: {name!r} is not a Prefect block name (lowercase letters, digits, '-')"
        )
    return name


def _secret_value(source: str) -> Any:
    """The value of the Secret block a source names. The one Prefect call below the task layer:
    the URL is read where the connection opens, so it never crosses a task boundary."""
    from prefect.blocks.system import Secret

    name = secret_block_name(source)
    try:
        return Secret.load(name).get()
    except ValueError as exc:
        # Only our words: a validation error of the block could quote the stored value.
        if "Unable to find block document" in str(exc):
            raise InputError(
                f"{source}: Prefect Secret block {name!r} not found (save the SQL URL in it)"
            ) from None
        raise InputError(f"{source}: block {name!r} cannot be read as a Secret block") from None


def resolve_reference(source: str) -> str:
    """The SQL URL an `env:VARNAME` or `secret:BLOCKNAME` source names, read now."""
    if source.startswith(SECRET_REFERENCE):
        value = _secret_value(source)
        url = value.strip() if isinstance(value, str) else ""
        if not is_sql_url(url):
            name = source.removeprefix(SECRET_REFERENCE)
            raise InputError(f"{source}: Secret block {name!r} does not hold a SQL URL")
        return url
    name = source.removeprefix(ENV_REFERENCE)
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
        raise InputError(f"{source}: {name!r} is not an environment variable name")
    url = os.environ.get(name, "").strip()
    if not url:
        raise InputError(f"{source}: environment variable {name} is not set (it holds the SQL URL)")
    if not is_sql_url(url):
        raise InputError(f"{source}: environment variable {name} does not hold a SQL URL")
    return url


# --------------------------------------------------------------------------- reading


def check_delimiter(delimiter: str) -> str:
    """A CSV delimiter: exactly one character, and not one that ends lines or quotes fields."""
    if len(delimiter) != 1:
        raise InputError(f"--delimiter {delimiter!r}: must be exactly one character")
    if delimiter in '\r\n"':
        raise InputError(f"--delimiter {delimiter!r}: a line break or quote cannot separate fields")
    return delimiter


def check_s3_source(source: str) -> tuple[str, str]:
    """Bucket and key of an s3:// source, which must name one object (not a bucket or folder)."""
    bucket, key = split_s3_uri(source)
    if not key or key.endswith("/"):
        raise InputError(f"{source}: no object key (expected s3://bucket/path/file.csv)")
    return bucket, key


def _check_text(path: Path, where: str) -> None:
    """Compressed or Parquet bytes in a file read as CSV are named, not decoded as text."""
    with open(path, "rb") as fh:
        head = fh.read(8)
    for magic, kind in BINARY_MAGIC.items():
        if head.startswith(magic):
            hint = "name it .parquet" if kind == "Parquet" else "decompress it first"
            raise InputError(f"{where}: holds {kind} bytes, not CSV text ({hint})")


def _utf8_error(path: Path, where: str) -> InputError:
    """The first byte of a file that is not UTF-8, by its offset and line in the file."""
    offset = 0
    with open(path, "rb") as fh:
        # Line by line: no UTF-8 sequence holds a newline byte, so none is split.
        for number, line in enumerate(fh, 1):
            try:
                line.decode("utf-8")
            except UnicodeDecodeError as exc:
                return InputError(
                    f"{where}: not UTF-8 text: byte 0x{line[exc.start]:02x} at byte offset "
                    f"{offset + exc.start} (line {number}); save the file as UTF-8"
                )
            offset += len(line)
    return InputError(f"{where}: not UTF-8 text")


def _check_header(columns: list[str], where: str, delimiter: str | None) -> None:
    names = [str(c).strip() for c in columns]
    if delimiter is not None and len(names) == 1:
        for other in OTHER_DELIMITERS:
            if other != delimiter and other in names[0]:
                shown = "\\t" if other == "\t" else other
                raise InputError(
                    f"{where}: one column {names[0][:40]!r} found; the file looks "
                    f"'{shown}'-delimited (pass --delimiter '{shown}')"
                )
    if any(not n for n in names):
        raise InputError(f"{where}: a column has an empty name")
    index = pd.Index(names)
    if index.has_duplicates:
        raise InputError(f"{where}: duplicate column name {index[index.duplicated()][0]!r}")


def _read_csv(path: Path, chunk_rows: int, delimiter: str, where: str) -> Iterator[pd.DataFrame]:
    _check_text(path, where)
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            header = next(csv.reader(fh, delimiter=delimiter), [])
        if not header:
            raise InputError(f"{where}: file is empty")
        _check_header(header, where, delimiter)
        yield from pd.read_csv(
            path, sep=delimiter, chunksize=chunk_rows, skipinitialspace=True, encoding="utf-8-sig"
        )
    except pd.errors.ParserError as exc:
        raise InputError(f"{where}: cannot parse CSV: {str(exc).strip()}") from exc
    except UnicodeDecodeError as exc:
        raise _utf8_error(path, where) from exc


def _read_parquet(path: Path, chunk_rows: int, where: str) -> Iterator[pd.DataFrame]:
    import pyarrow.parquet as pq

    if path.stat().st_size == 0:
        raise InputError(f"{where}: file is empty")
    try:
        pf = pq.ParquetFile(path)
    except Exception as exc:
        raise InputError(f"{where}: not a readable Parquet file ({exc})") from exc
    _check_header(pf.schema_arrow.names, where, None)
    yield from parquet_frames(pf, chunk_rows)


def parquet_frames(pf: Any, chunk_rows: int) -> Iterator[pd.DataFrame]:
    """A ParquetFile as frames of about `chunk_rows` rows (under twice that), read row group by
    row group: pyarrow's reader over the whole file reads row groups ahead (measured: ~200 MB of
    buffers for 4 row groups of 250k x 20), so memory would follow the file. Small row groups
    are read together up to `chunk_rows`, large ones sliced."""
    pending: list[int] = []
    size = 0
    for group in range(pf.num_row_groups):
        rows = pf.metadata.row_group(group).num_rows
        if rows >= chunk_rows:
            if pending:
                yield pf.read_row_groups(pending).to_pandas()
                pending, size = [], 0
            for batch in pf.iter_batches(batch_size=chunk_rows, row_groups=[group]):
                yield batch.to_pandas()
            continue
        pending.append(group)
        size += rows
        if size >= chunk_rows:
            yield pf.read_row_groups(pending).to_pandas()
            pending, size = [], 0
    if pending:
        yield pf.read_row_groups(pending).to_pandas()


def _source_engine(url: str, where: str) -> Any:
    """An engine on a SQL source that cannot write to it: SQLite opened read-only (`mode=ro`), so
    a missing file is an error instead of a new empty database; PostgreSQL read-only per
    transaction (see _read_sql). Other databases are refused: nothing would keep them read-only.
    """
    import sqlite3
    from urllib.parse import quote

    import sqlalchemy as sa
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError

    try:
        parsed = sa.make_url(url)
        backend = parsed.get_backend_name()
        if backend == "sqlite":
            if not parsed.database or parsed.database == ":memory:":
                raise InputError(f"{where}: a SQLite source needs a database file")
            path = Path(parsed.database).expanduser().resolve()
            if not path.is_file():
                raise InputError(f"{where}: SQLite database {parsed.database} not found")
            uri = f"file:{quote(str(path))}?mode=ro"
            return sa.create_engine(
                "sqlite://",
                creator=lambda: sqlite3.connect(uri, uri=True, check_same_thread=False),
                poolclass=sa.NullPool,
            )
        if backend == "postgresql":
            return sa.create_engine(url)
    except (ArgumentError, NoSuchModuleError) as exc:
        raise InputError(f"{where}: not a usable database URL ({exc})") from exc
    raise InputError(
        f"{where}: SQL sources are read from SQLite or PostgreSQL only ({backend} cannot be "
        "opened read-only here)"
    )


def _source_statement(conn: Any, query: str) -> Any:
    """The statement for --query: an existing table (or a name without spaces) is selected with
    its name quoted by the dialect; anything else is the user's SELECT as written."""
    import sqlalchemy as sa

    name = query.strip()
    if not re.search(r"\s", name) or sa.inspect(conn).has_table(name):
        return sa.select(sa.literal_column("*")).select_from(sa.table(name))
    return sa.text(query)


def _refused_write(exc: Any, query: str) -> bool:
    """Whether a database error is the source refusing a write: the read-only connection said so,
    or the statement is not a query at all (PostgreSQL's streaming cursor only takes queries)."""
    orig = getattr(exc, "orig", None)
    first_word = query.strip().split(None, 1)[0].lower() if query.strip() else ""
    return (
        getattr(orig, "sqlite_errorname", "").startswith("SQLITE_READONLY")
        or (getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)) == "25006"
        or (bool(re.search(r"\s", query.strip())) and first_word not in READ_STATEMENTS)
    )


def _read_sql(
    url: str, query: str | None, chunk_rows: int, where: str | None = None
) -> Iterator[pd.DataFrame]:
    """Rows of a table or SELECT, read in a read-only connection: the source is never written."""
    from sqlalchemy.exc import DBAPIError

    where = where or redact(url)
    if not query or not query.strip():
        raise InputError(f"{where}: a SQL source needs --query (a table name or a SELECT)")
    engine = _source_engine(url, where)
    try:
        with engine.connect() as conn:
            if conn.dialect.name == "postgresql":
                # First statement of the transaction the reads below run in.
                conn.exec_driver_sql("SET TRANSACTION READ ONLY")
            statement = _source_statement(conn, query)
            result = conn.execution_options(stream_results=True).execute(statement)
            if not result.returns_rows:
                raise InputError(f"{where}: {query!r} returns no rows (use a table or a SELECT)")
            columns = list(result.keys())
            _check_header(columns, where, None)
            while rows := result.fetchmany(chunk_rows):
                yield pd.DataFrame.from_records(rows, columns=columns)
    except DBAPIError as exc:
        first = str(exc.orig).strip().splitlines()[0] if exc.orig else str(exc)
        if _refused_write(exc, query):
            first += " (SQL sources are read-only: give a table name or one SELECT)"
        raise InputError(f"{where}: SQL error in {query!r}: {first}") from exc
    finally:
        engine.dispose()


def read_chunks(
    source: str,
    *,
    query: str | None = None,
    chunk_rows: int = 50_000,
    delimiter: str = ",",
    s3_endpoint_url: str | None = None,
) -> Iterator[pd.DataFrame]:
    """Raw chunks of a source, in order (none when it has no rows); raises InputError naming the
    source on bad input."""
    check_delimiter(delimiter)
    if is_reference(source):
        url = resolve_reference(source)
        yield from _read_sql(url, query, chunk_rows, where=f"{source} ({redact(url)})")
        return
    if is_sql_url(source):
        yield from _read_sql(source, query, chunk_rows)
        return
    if source.startswith("s3://"):
        bucket, key = check_s3_source(source)
        suffix = Path(key).suffix.lower()
        with tempfile.TemporaryDirectory() as tmp:
            local = Path(tmp) / f"object{suffix}"
            ArtifactStore(f"s3://{bucket}", s3_endpoint_url).download(key, local)
            yield from _read_file(local, source, chunk_rows, delimiter)
        return
    path = Path(source.removeprefix("file://")).expanduser()
    if not path.exists():
        raise InputError(f"{source}: file not found")
    if path.is_dir():
        raise InputError(f"{source}: is a folder, not a file")
    yield from _read_file(path, source, chunk_rows, delimiter)


def _read_file(path: Path, where: str, chunk_rows: int, delimiter: str) -> Iterator[pd.DataFrame]:
    suffix = path.suffix.lower()
    if suffix in PARQUET_SUFFIXES:
        yield from _read_parquet(path, chunk_rows, where)
    elif suffix in CSV_SUFFIXES or suffix == "":
        yield from _read_csv(path, chunk_rows, "\t" if suffix == ".tsv" else delimiter, where)
    else:
        raise InputError(f"{where}: unsupported file type {suffix!r} (use .csv or .parquet)")


# --------------------------------------------------------------------------- normalising


def infer_schema(chunk: pd.DataFrame) -> dict[str, str]:
    """Column -> "float64" (numeric) or "string" (categorical), decided on the first chunk."""
    schema: dict[str, str] = {}
    for col in chunk.columns:
        values = chunk[col]
        present = values.dropna()
        if pd.api.types.is_numeric_dtype(values) or present.empty:
            schema[col] = "float64"  # (only empty cells so far: must be numbers if anything)
        elif pd.to_numeric(present, errors="coerce").notna().mean() >= NUMERIC_SHARE:
            schema[col] = "float64"  # normalise_chunk names the first cell that is not a number
        else:
            schema[col] = "string"
    return schema


def normalise_chunk(
    chunk: pd.DataFrame, schema: dict[str, str], where: str, row_offset: int
) -> pd.DataFrame:
    """Cast a chunk (its names stripped) to the schema; text in a numeric column, an infinity or
    a number beyond ±MAX_MAGNITUDE is an InputError."""
    if list(chunk.columns) != list(schema):
        raise InputError(f"{where}: columns changed within the source at row {row_offset + 1}")
    out: dict[str, Any] = {}
    for col, kind in schema.items():
        values = chunk[col]
        if kind == "string":
            out[col] = values.astype("string").astype(object).where(values.notna(), None)
            continue
        if pd.api.types.is_bool_dtype(values):
            values = values.astype(float)
        numbers = pd.to_numeric(values, errors="coerce").astype("float64")
        bad = numbers.isna() & values.notna()
        if bad.any():
            pos = int(np.flatnonzero(bad.to_numpy())[0])
            raise InputError(
                f"{where}: column {col!r} is numeric but row {row_offset + pos + 1} holds "
                f"{values.iloc[pos]!r}"
            )
        infinite = np.isinf(numbers.to_numpy())
        if infinite.any():
            pos = int(np.flatnonzero(infinite)[0])
            raise InputError(
                f"{where}: column {col!r} holds an infinite value at row {row_offset + pos + 1}"
            )
        huge = np.abs(numbers.to_numpy()) > MAX_MAGNITUDE
        if huge.any():
            pos = int(np.flatnonzero(huge)[0])
            raise InputError(
                f"{where}: column {col!r} holds {numbers.iloc[pos]:g} at row "
                f"{row_offset + pos + 1}, too large (beyond ±{MAX_MAGNITUDE:g} the detectors' "
                "float64 arithmetic overflows); rescale the column"
            )
        out[col] = numbers
    frame = pd.DataFrame(out)
    frame.index = pd.RangeIndex(row_offset, row_offset + len(chunk))  # global row numbers
    return frame


def iter_normalised(
    chunks: Iterator[pd.DataFrame], where: str
) -> Iterator[tuple[pd.DataFrame, dict[str, str]]]:
    """Normalised chunks, with the schema inferred from the first; every per-chunk check."""
    schema: dict[str, str] | None = None
    offset = 0
    for raw in chunks:
        raw = raw.rename(columns=lambda c: str(c).strip())
        if schema is None:
            schema = infer_schema(raw)
        chunk = normalise_chunk(raw, schema, where, offset)
        offset += len(chunk)
        yield chunk, schema


# --------------------------------------------------------------------------- snapshot


def snapshot_key(dataset: str, sha256: str, suffix: str = "parquet") -> str:
    """Where a snapshot (or its manifest, suffix "json") lives in the artifact store."""
    return f"datasets/{dataset}/{sha256}.{suffix}"


def check_dataset_name(dataset: str) -> str:
    """A dataset or model name that is safe as a folder name."""
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}", dataset or ""):
        raise InputError(
            f"invalid name {dataset!r}: use letters, digits, '_', '-', '.' (at most 100)"
        )
    return dataset


def snapshot_source(
    source: str,
    dataset: str,
    store: ArtifactStore,
    *,
    query: str | None = None,
    chunk_rows: int = 50_000,
    delimiter: str = ",",
) -> Manifest:
    """Read, check and snapshot a source; the same content twice yields the same manifest hash."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    check_dataset_name(dataset)
    hasher = hashlib.sha256()
    rows = 0
    schema: dict[str, str] = {}
    non_null: dict[str, int] = {}
    with tempfile.TemporaryDirectory() as tmp:
        local = Path(tmp) / "snapshot.parquet"
        writer = None
        chunks = read_chunks(
            source,
            query=query,
            chunk_rows=chunk_rows,
            delimiter=delimiter,
            s3_endpoint_url=store.endpoint_url,
        )
        try:
            for chunk, schema in iter_normalised(chunks, source):
                if writer is None:
                    hasher.update(json.dumps(schema, sort_keys=False).encode())
                    arrow_schema = pa.schema({c: pa.type_for_alias(k) for c, k in schema.items()})
                    writer = pq.ParquetWriter(local, arrow_schema)
                # Row by row: the hash does not depend on how the rows were chunked.
                hasher.update(pd.util.hash_pandas_object(chunk, index=False).to_numpy().tobytes())
                writer.write_table(
                    pa.Table.from_pandas(chunk, schema=arrow_schema, preserve_index=False)
                )
                rows += len(chunk)
                for col in chunk.columns:
                    non_null[col] = non_null.get(col, 0) + int(chunk[col].notna().sum())
        finally:
            chunks.close()  # the source's connection or download goes now, not at collection
            if writer is not None:
                writer.close()
        if rows == 0:
            raise InputError(f"{source}: has a header but no data rows")
        empty = [c for c, n in non_null.items() if n == 0]
        if empty:
            raise InputError(f"{source}: column {empty[0]!r} has no values (all empty/NaN)")
        sha = hasher.hexdigest()
        manifest = Manifest(
            dataset=dataset,
            sha256=sha,
            rows=rows,
            columns=schema,
            source=redact(source),
            snapshot_uri=store.uri(snapshot_key(dataset, sha)),
        )
        if not store.exists(snapshot_key(dataset, sha, "json")):
            store.put_file(snapshot_key(dataset, sha), local)
            # The manifest goes last: its presence means the snapshot is complete.
            store.put_bytes(snapshot_key(dataset, sha, "json"), manifest.to_json().encode())
        else:
            manifest = load_manifest(store, dataset, sha)
    return manifest


def load_manifest(store: ArtifactStore, dataset: str, sha256: str) -> Manifest:
    """The manifest of a stored snapshot."""
    data = json.loads(store.get_bytes(snapshot_key(dataset, sha256, "json")))
    return Manifest(**data)


@contextmanager
def snapshot_file(store: ArtifactStore, manifest: Manifest) -> Iterator[Path]:
    """A local path of a stored snapshot: the file itself in a local store (snapshots are
    written once, by rename, and never changed), a temporary download from S3."""
    key = snapshot_key(manifest.dataset, manifest.sha256)
    if not store.is_s3:
        yield Path(store.uri(key))
        return
    with tempfile.TemporaryDirectory() as tmp:
        yield store.download(key, Path(tmp) / "s.parquet")


def load_snapshot(store: ArtifactStore, manifest: Manifest) -> pd.DataFrame:
    """A stored snapshot as a DataFrame."""
    with snapshot_file(store, manifest) as local:
        return pd.read_parquet(local)


def pick_rows(
    total: int,
    rows: int,
    seed: int,
    classes: np.ndarray | None = None,
    keep: np.ndarray | None = None,
) -> np.ndarray:
    """Sorted indices of `rows` of `total` rows, drawn uniformly without replacement.

    `keep`: indices always picked (counted in `rows`). `classes`: one value per row; each class
    then gets its share of the rows left to draw (largest remainders first), so the sample holds
    the classes in the data's proportions exactly, not only on average.
    """
    rng = np.random.default_rng(seed)
    kept = np.unique(keep[(keep >= 0) & (keep < total)]) if keep is not None else np.empty(0, int)
    budget = max(rows - len(kept), 0)
    if classes is None and not len(kept):
        return np.sort(rng.choice(total, size=min(budget, total), replace=False))
    free = np.ones(total, bool)
    free[kept] = False
    codes = pd.factorize(classes)[0] if classes is not None else np.zeros(total, int)
    codes = np.where(free, codes, -2)  # kept rows are in already
    groups = [np.flatnonzero(codes == c) for c in np.unique(codes[codes != -2])]
    sizes = np.array([len(g) for g in groups])
    if not len(groups) or budget >= sizes.sum():
        return np.sort(np.concatenate([kept, *groups]).astype(int))
    exact = budget * sizes / sizes.sum()
    quota = np.floor(exact).astype(int)
    for i in np.argsort(-(exact - quota), kind="stable")[: budget - quota.sum()]:
        quota[i] += 1
    drawn = [rng.choice(g, size=q, replace=False) for g, q in zip(groups, quota, strict=True)]
    return np.sort(np.concatenate([kept, *drawn]).astype(int))


def sample_snapshot(
    store: ArtifactStore,
    manifest: Manifest,
    rows: int,
    chunk_rows: int,
    *,
    stratify: str | None = None,
    keep: np.ndarray | None = None,
) -> pd.DataFrame:
    """At most `rows` rows of a stored snapshot (see `pick_rows`: uniform, by the classes of
    column `stratify` when it has one, `keep` always in), in file order with their global row
    index; the whole snapshot when it is no larger. Read chunk by chunk: memory holds the sample
    and one chunk (and the `stratify` column), whatever the snapshot's size. The draw is seeded
    by the snapshot's hash, so the same data always gives the same sample."""
    import pyarrow.parquet as pq

    if manifest.rows <= rows:
        return load_snapshot(store, manifest)
    with snapshot_file(store, manifest) as local:
        classes = None
        if stratify and stratify in manifest.columns:
            classes = pq.read_table(local, columns=[stratify]).column(0).to_pandas().to_numpy()
        picked = pick_rows(manifest.rows, rows, int(manifest.sha256[:16], 16), classes, keep)
        return _take(local, picked, chunk_rows)


def take_rows(
    store: ArtifactStore, manifest: Manifest, picked: np.ndarray, chunk_rows: int
) -> pd.DataFrame:
    """Rows `picked` (row numbers, sorted, unique, each below the snapshot's rows) of a stored
    snapshot, indexed by their row numbers; read chunk by chunk, so memory holds those rows and
    one chunk."""
    with snapshot_file(store, manifest) as local:
        return _take(local, picked, chunk_rows)


def _take(local: Path, picked: np.ndarray, chunk_rows: int) -> pd.DataFrame:
    import pyarrow.parquet as pq

    parquet = pq.ParquetFile(local)
    parts, offset = [], 0
    for frame in parquet_frames(parquet, chunk_rows):
        start, offset = offset, offset + len(frame)
        wanted = picked[np.searchsorted(picked, start) : np.searchsorted(picked, offset)]
        if len(wanted):
            parts.append(frame.iloc[wanted - start].set_axis(pd.Index(wanted)))
    if not parts:  # nothing picked: no rows, the snapshot's columns
        return parquet.schema_arrow.empty_table().to_pandas()
    return pd.concat(parts)


def iter_snapshot(
    store: ArtifactStore, manifest: Manifest, chunk_rows: int
) -> Iterator[pd.DataFrame]:
    """A stored snapshot in chunks of about `chunk_rows` rows, with a global row index."""
    import pyarrow.parquet as pq

    with snapshot_file(store, manifest) as local:
        offset = 0
        for frame in parquet_frames(pq.ParquetFile(local), chunk_rows):
            frame.index = pd.RangeIndex(offset, offset + len(frame))
            offset += len(frame)
            yield frame
