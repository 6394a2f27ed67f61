"""Scale-out on Dask: the `--dask` value, batch partitions and what a Dask worker runs.

A batch is split into row ranges of its stored Parquet snapshot. A worker reads only the row
groups of its range (a local file, or ranged reads from S3 through pyarrow), scores them in
chunks with tasks/score.py's chunk scoring, and returns `row_index, score, is_anomaly`; the
model is loaded once per worker process, not per partition. Nothing here imports Prefect: the
task wrappers and the DaskTaskRunner are built in tasks/steps.py.
"""

from __future__ import annotations

import re
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import pandas as pd

from pynomaly.errors import InputError
from tasks.ingest import Manifest
from tasks.score import score_chunks

LOCAL = "local"
PARTITION_ROWS = 500_000  # rows per partition: a few per worker on a batch of millions
CONNECT_TIMEOUT_S = 5
# tcp://host:port, tls://host:port, host:port (IPv6 in brackets)
ADDRESS = re.compile(r"^((tcp|tls|ucx|inproc)://)?(\[[0-9a-fA-F:]+\]|[\w.-]+):\d{1,5}$")

_scorers: dict[tuple[str, str, int], Any] = {}
_scorer_lock = threading.Lock()


def check_dask(dask: str | None) -> str | None:
    """A Dask scheduler address (tcp://HOST:PORT) or 'local' (a LocalCluster); None: no Dask."""
    if dask is None:
        return None
    if dask == LOCAL or ADDRESS.match(dask):
        return dask
    raise InputError(f"--dask {dask!r}: not a scheduler address (tcp://HOST:PORT) or 'local'")


def check_reachable(address: str, timeout: float = CONNECT_TIMEOUT_S) -> int:
    """The number of worker threads of the scheduler at `address`; one line if none answers."""
    from distributed import Client

    try:
        with Client(address, timeout=timeout, set_as_default=False) as client:
            threads = sum(client.nthreads().values())
    except (OSError, TimeoutError) as exc:
        raise InputError(f"--dask {address}: no Dask scheduler answers there ({exc})") from None
    if threads == 0:
        raise InputError(f"--dask {address}: the scheduler has no workers")
    return threads


def local_cluster_kwargs(n_workers: int | None = None) -> dict[str, Any]:
    """A LocalCluster of worker processes with one thread each (one per core by default)."""
    import os

    return {
        "n_workers": n_workers or os.cpu_count() or 1,
        "threads_per_worker": 1,
        "processes": True,
        "dashboard_address": None,
    }


def partitions(rows: int, partition_rows: int = PARTITION_ROWS) -> list[tuple[int, int]]:
    """[start, stop) row ranges covering `rows` rows, each at most `partition_rows` long."""
    if partition_rows < 1:
        raise InputError(f"partition_rows must be at least 1, got {partition_rows}")
    return [(start, min(start + partition_rows, rows)) for start in range(0, rows, partition_rows)]


def _open_snapshot(snapshot_uri: str, endpoint_url: str | None) -> Any:
    """The snapshot as a pyarrow ParquetFile: the local file, or S3 with ranged reads."""
    import pyarrow.parquet as pq

    if not snapshot_uri.startswith("s3://"):
        return pq.ParquetFile(snapshot_uri)
    from pyarrow import fs

    # Credentials and region from the worker's environment, as boto3 reads them.
    s3 = fs.S3FileSystem(endpoint_override=endpoint_url or None)
    return pq.ParquetFile(s3.open_input_file(snapshot_uri.removeprefix("s3://")))


def read_rows(
    snapshot_uri: str, endpoint_url: str | None, start: int, stop: int, chunk_rows: int
) -> Iterator[pd.DataFrame]:
    """Rows [start, stop) of a Parquet snapshot in chunks, indexed by their global row number;
    only the row groups that overlap the range are read."""
    parquet = _open_snapshot(snapshot_uri, endpoint_url)
    meta = parquet.metadata
    groups, first, offset = [], None, 0
    for i in range(meta.num_row_groups):
        n = meta.row_group(i).num_rows
        if offset < stop and offset + n > start:
            groups.append(i)
            first = offset if first is None else first
        offset += n
    if not groups:
        return
    offset = first
    for batch in parquet.iter_batches(batch_size=chunk_rows, row_groups=groups):
        lo, hi = max(start - offset, 0), min(stop - offset, batch.num_rows)
        if lo < hi:
            frame = batch.slice(lo, hi - lo).to_pandas()
            frame.index = pd.RangeIndex(offset + lo, offset + hi)
            yield frame
        offset += batch.num_rows


def worker_scorer(model_uri: str, tracking_uri: str, version: int, tags: dict[str, str]) -> Any:
    """The model of this worker process, loaded on its first partition and kept."""
    from registry.gate import load_scorer

    key = (model_uri, tracking_uri, version)
    with _scorer_lock:
        if key not in _scorers:
            _scorers[key] = load_scorer(model_uri, tracking_uri, tags)
        return _scorers[key]


def worker_name() -> str:
    """The Dask worker this runs on ('' outside a worker)."""
    try:
        from distributed import get_worker

        return get_worker().address
    except (ImportError, ValueError):
        return ""


def score_partition(
    manifest: Manifest,
    endpoint_url: str | None,
    model_uri: str,
    tracking_uri: str,
    version: int,
    tags: dict[str, str],
    columns: list[str],
    start: int,
    stop: int,
    chunk_rows: int,
) -> tuple[pd.DataFrame, str]:
    """Scores of rows [start, stop) of a snapshot (`row_index, score, is_anomaly`) and the
    worker that computed them."""
    scorer = worker_scorer(model_uri, tracking_uri, version, tags)
    frames = read_rows(manifest.snapshot_uri, endpoint_url, start, stop, chunk_rows)
    scored = list(score_chunks(scorer, frames, columns))
    empty = pd.DataFrame({"row_index": [], "score": [], "is_anomaly": []})
    return (pd.concat(scored, ignore_index=True) if scored else empty), worker_name()


def partition_arguments(
    manifest: Manifest,
    resolved: Any,
    columns: list[str],
    endpoint_url: str | None,
    tracking_uri: str,
    chunk_rows: int,
) -> Callable[[tuple[int, int]], tuple[Any, ...]]:
    """`score_partition`'s arguments for a (start, stop) row range of this batch and model."""

    def arguments(part: tuple[int, int]) -> tuple[Any, ...]:
        start, stop = part
        return (
            manifest,
            endpoint_url,
            resolved.uri,
            tracking_uri,
            resolved.version,
            dict(resolved.tags),
            columns,
            start,
            stop,
            chunk_rows,
        )

    return arguments


def in_order(submit: Callable[[Any], Any], items: Iterable[Any], window: int) -> Iterator[Any]:
    """Results of `submit(item)` futures in the order of `items`, at most `window` in flight:
    later partitions run while earlier ones are written, and memory stays bounded."""
    pending: deque[Any] = deque()
    todo = iter(items)
    for item in todo:
        pending.append(submit(item))
        if len(pending) >= window:
            break
    while pending:
        result = pending.popleft().result()
        for item in todo:
            pending.append(submit(item))
            break
        yield result
