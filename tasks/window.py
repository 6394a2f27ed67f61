"""The training window of a retrain: earlier snapshots, new batches, one combined file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pynomaly.errors import InputError
from tasks.store import ArtifactStore

WINDOW_TAG = "window_snapshots"


def earlier_snapshots(versions: list[Any]) -> list[str]:
    """`dataset/sha256` of every snapshot the model's versions were trained on, oldest first."""
    parts: list[str] = []
    for mv in sorted(versions, key=lambda v: int(v.version)):
        tags = dict(mv.tags or {})
        if tags.get(WINDOW_TAG):
            parts += json.loads(tags[WINDOW_TAG])
        elif tags.get("dataset_sha256"):
            parts.append(f"{tags['dataset']}/{tags['dataset_sha256']}")
    return list(dict.fromkeys(parts))  # each once, where first seen


def choose_window(earlier: list[str], new: list[str], policy: str, size: int) -> list[str]:
    """Snapshots to train on: all (append) or the newest `size` (sliding), new data always in."""
    chosen = [s for s in earlier if s not in new] + new
    if policy == "append":
        return chosen
    if policy != "sliding":
        raise InputError(f"unknown window policy {policy!r}: use sliding or append")
    return chosen[-max(size, len(new)) :]


def find_new_batches(store: ArtifactStore, model: str, used: list[str], limit: int) -> list[str]:
    """The newest scored/checked batch snapshots of the model not trained on yet."""
    from tasks.ingest import Manifest

    prefix = f"datasets/{model}-batches/"
    manifests = [
        Manifest(**json.loads(store.get_bytes(key)))
        for key in store.list(prefix)
        if key.endswith(".json")
    ]
    fresh = [m for m in manifests if f"{m.dataset}/{m.sha256}" not in used]
    fresh.sort(key=lambda m: m.created_at)
    return [f"{m.dataset}/{m.sha256}" for m in fresh[-limit:]]


def combine_window(
    store: ArtifactStore,
    window: list[str],
    label_column: str | None,
    folder: str,
    feedback: Any = None,
    max_rows: int | None = None,
    chunk_rows: int = 50_000,
) -> tuple[str, str | None, int, dict[str, int], int]:
    """One Parquet file of the window's rows; labels kept only if every snapshot has them.
    Returns its path, label column, rows and feedback counts, and the window's rows.

    With enough analyst feedback on the window's batches (`feedback`: the model's newest label
    per row and its snapshot), the feedback sets labels; unlabelled rows count as normal.
    A window of more than `max_rows` rows is sampled, each snapshot in proportion to its rows
    (stratified by the label column, every row analysts labelled kept), read chunk by chunk.
    """
    import pandas as pd

    from tasks.feedback import apply_feedback_labels
    from tasks.ingest import load_manifest, sample_snapshot

    manifests = [load_manifest(store, *part.split("/", 1)) for part in window]
    total = sum(m.rows for m in manifests)
    frames = []
    for part, manifest in zip(window, manifests, strict=True):
        rows = manifest.rows
        if max_rows is not None and total > max_rows:
            rows = max(1, max_rows * manifest.rows // total)
        keep = None
        if feedback is not None and not feedback.empty:
            keep = feedback.loc[feedback["snapshot"] == part, "row_index"].to_numpy(int)
        frames.append(
            sample_snapshot(store, manifest, rows, chunk_rows, stratify=label_column, keep=keep)
        )
    used: dict[str, int] = {}
    labelled = (
        None
        if feedback is None or feedback.empty
        else apply_feedback_labels(list(zip(window, frames, strict=True)), feedback, label_column)
    )
    if labelled is not None:
        frames, label_column, used = labelled
    elif label_column and not all(label_column in f.columns for f in frames):
        # New batches come without labels: the whole window trains label-free.
        frames = [f.drop(columns=[label_column], errors="ignore") for f in frames]
        label_column = None
    columns = list(frames[0].columns)
    for part, frame in zip(window, frames, strict=True):
        if set(frame.columns) != set(columns):
            other = set(frame.columns) ^ set(columns)
            raise InputError(
                f"snapshot {part} has other columns than the rest of the window: "
                f"{', '.join(sorted(map(str, other)))}"
            )
    combined = pd.concat([f[columns] for f in frames], ignore_index=True)
    path = Path(folder) / "window.parquet"
    combined.to_parquet(path, index=False)
    return str(path), label_column, len(combined), used, total
