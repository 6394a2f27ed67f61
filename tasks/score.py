"""Score a stored batch with a registered model, chunk by chunk."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pandas as pd

from data_checks.errors import InputError
from tasks.ingest import Manifest, iter_snapshot

NUMERIC_TYPES = {"double", "float", "long", "integer"}


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
    model: Any, frames: Iterator[pd.DataFrame], columns: list[str]
) -> Iterator[pd.DataFrame]:
    """Rows `row_index, score, is_anomaly` for each chunk; non-finite scores are an error."""
    for frame in frames:
        out = model.predict(frame[columns])
        scores = np.asarray(out["score"], dtype=float)
        if not np.isfinite(scores).all():
            row = int(frame.index[np.flatnonzero(~np.isfinite(scores))[0]]) + 1
            raise InputError(f"the model returned a non-finite score for row {row}")
        yield pd.DataFrame(
            {
                "row_index": frame.index.to_numpy(dtype=np.int64),
                "score": scores,
                "is_anomaly": np.asarray(out["is_anomaly"], dtype=bool),
            }
        )


def score_snapshot(
    model: Any, store: Any, manifest: Manifest, columns: list[str], chunk_rows: int
) -> Iterator[pd.DataFrame]:
    """Scored chunks of a stored snapshot."""
    return score_chunks(model, iter_snapshot(store, manifest, chunk_rows), columns)
