"""Validate a snapshot against its dataset's suite; quarantine a failing batch with its report."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pandas as pd

from data_checks.suite import ValidationReport, dumps_suite, generate_suite, run_suite, suite_key
from pynomaly.errors import ValidationFailed
from tasks.ingest import Manifest, iter_snapshot, snapshot_key
from tasks.store import ArtifactStore

# Rows per GX validation: GX's fixed cost per call is paid once per chunk, so validation reads
# larger chunks than scoring; 200k rows x 20 float columns is about 32 MB.
VALIDATION_CHUNK_ROWS = 200_000


def load_suite(store: ArtifactStore, dataset: str) -> dict | None:
    """The dataset's suite, or None before its first accepted snapshot."""
    if not store.exists(suite_key(dataset)):
        return None
    return json.loads(store.get_bytes(suite_key(dataset)))


def quarantine(store: ArtifactStore, manifest: Manifest, report: ValidationReport) -> str:
    """Move a failing snapshot out of `datasets/` into `quarantine/<dataset>/<time>/`."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
    folder = f"quarantine/{manifest.dataset}/{stamp}"
    # Streamed from store to store: the batch is never held in memory.
    with store.open(snapshot_key(manifest.dataset, manifest.sha256)) as (fh, _):
        store.put_fileobj(f"{folder}/batch.parquet", fh)
    store.put_bytes(f"{folder}/manifest.json", manifest.to_json().encode())
    store.put_bytes(f"{folder}/report.json", json.dumps(report.to_dict(), indent=2).encode())
    # Only now remove it from the datasets: the batch is never lost between the two.
    store.delete(snapshot_key(manifest.dataset, manifest.sha256, "json"))
    store.delete(snapshot_key(manifest.dataset, manifest.sha256))
    return store.uri(folder)


def validate_snapshot(
    store: ArtifactStore,
    manifest: Manifest,
    frame: pd.DataFrame | None = None,
    *,
    suite_name: str | None = None,
    optional_columns: list[str] | None = None,
    chunk_rows: int = VALIDATION_CHUNK_ROWS,
) -> ValidationReport:
    """Run the suite (creating it from this snapshot if there is none); raise on failure.

    Without `frame` the snapshot is read chunk by chunk (`chunk_rows` rows at a time): the
    suite is loaded and GX set up once, and the outcome is that of the whole batch.
    """
    name = suite_name or manifest.dataset
    data = frame if frame is not None else lambda: iter_snapshot(store, manifest, chunk_rows)
    suite = load_suite(store, name)
    create = suite is None
    if create:
        suite = generate_suite(data, name, optional_columns or [])
    report = run_suite(data, suite)
    if create and report.success:
        store.put_bytes(suite_key(name), dumps_suite(suite))
        report.suite_created = True
    if not report.success:
        where = quarantine(store, manifest, report)
        raise ValidationFailed(f"{report.summary()}; batch quarantined at {where}", where)
    return report
