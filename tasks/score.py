"""Score a stored batch with a registered model, chunk by chunk."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from queue import Empty, Full, Queue
from typing import Any, TypeVar

import numpy as np
import pandas as pd

from pynomaly.errors import InputError
from tasks.ingest import Manifest, iter_snapshot

NUMERIC_TYPES = {"double", "float", "long", "integer"}
T = TypeVar("T")


def check_batch_columns(
    manifest: Manifest, expected: dict[str, str], ignore: list[str] | None = None
) -> list[str]:
    """The model's input columns, after checking the batch has exactly them with fitting types."""
    have = {c: k for c, k in manifest.columns.items() if c not in (ignore or [])}
    missing = [c for c in expected if c not in have]
    extra = [c for c in have if c not in expected]
    where = f"batch {manifest.source}"
    if missing:
        raise InputError(f"{where}: missing column(s) the model needs: {', '.join(missing)}")
    if extra:
        raise InputError(f"{where}: column(s) the model does not know: {', '.join(extra)}")
    for col, mlflow_type in expected.items():
        if mlflow_type in NUMERIC_TYPES and have[col] != "float64":
            raise InputError(f"{where}: column {col!r} holds text, the model expects numbers")
    return list(expected)


def score_chunks(
    scorer: Any, frames: Iterator[pd.DataFrame], columns: list[str]
) -> Iterator[pd.DataFrame]:
    """Rows `row_index, score, is_anomaly` for each chunk; non-finite scores are an error.

    `scorer` is a registry.gate.Scorer: raw scores (higher = more anomalous) from any
    registered flavour, compared with the threshold stored with the model version.
    """
    if scorer.threshold is None:
        raise InputError(
            "the model has no stored threshold; run `pynomaly registry evaluate` on it first"
        )
    for frame in frames:
        scores = np.asarray(scorer.score_fn(frame[columns]), dtype=float).reshape(-1)
        if len(scores) != len(frame):
            raise InputError(f"the model returned {len(scores)} scores for {len(frame)} rows")
        if not np.isfinite(scores).all():
            row = int(frame.index[np.flatnonzero(~np.isfinite(scores))[0]]) + 1
            raise InputError(f"the model returned a non-finite score for row {row}")
        yield pd.DataFrame(
            {
                "row_index": frame.index.to_numpy(dtype=np.int64),
                "score": scores,
                "is_anomaly": scores > scorer.threshold,
            }
        )


def prefetch(items: Iterator[T], depth: int = 2) -> Iterator[T]:
    """`items`, computed ahead in a thread with at most `depth` waiting: the next chunk is read
    and scored while this one is written (Parquet reads, NumPy, scikit-learn's tree walks and
    the database drivers release the GIL, so two cores both work). An error in `items` is
    raised here; when the consumer stops early, the thread stops and closes `items`."""
    queue: Queue[tuple[str, Any]] = Queue(maxsize=depth)
    stop = threading.Event()

    def put(entry: tuple[str, Any]) -> bool:
        while not stop.is_set():
            try:
                queue.put(entry, timeout=0.1)
                return True
            except Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not put(("item", item)):
                    return
            put(("done", None))
        except BaseException as exc:  # handed to the consumer, raised there
            put(("error", exc))
        finally:
            close = getattr(items, "close", None)
            if close is not None:
                close()

    thread = threading.Thread(target=produce, name="pynomaly-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            try:
                kind, value = queue.get(timeout=0.5)
            except Empty:
                if not thread.is_alive() and queue.empty():
                    raise RuntimeError("the prefetch thread ended without a result") from None
                continue
            if kind == "error":
                raise value
            if kind == "done":
                return
            yield value
    finally:
        stop.set()
        thread.join()


def score_snapshot(
    scorer: Any, store: Any, manifest: Manifest, columns: list[str], chunk_rows: int
) -> Iterator[pd.DataFrame]:
    """Scored chunks of a stored snapshot, the next scored while the last is written."""
    return prefetch(score_chunks(scorer, iter_snapshot(store, manifest, chunk_rows), columns))
