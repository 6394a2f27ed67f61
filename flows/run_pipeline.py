"""Flow: the whole path for one model: train and register on a source, then score a batch."""

from __future__ import annotations

from typing import Any

from prefect import flow

from flows.score_batch import load_batch, score_batch
from flows.train_detector import train_detector


@flow(name="pipeline", log_prints=True)
def pipeline(
    source: str,
    model: str,
    score_source: str | None = None,
    label_column: str | None = None,
    detector: str = "iforest",
    contamination: float | None = None,
    time_budget_s: float = 60.0,
    batch_id: str | None = None,
    random_state: int = 0,
    dask: str | None = None,
) -> dict[str, Any]:
    """Ingest, validate, train, register, then score `score_source` (or the source itself);
    `dask` (a scheduler address or 'local') runs AutoML's trials and the scoring on Dask."""
    from tasks.results import check_batch_id
    from tasks.train import check_contamination

    # Check the arguments and read the batch first: nothing is registered for a run that
    # cannot score its batch
    check_contamination(contamination)
    check_batch_id(batch_id)
    if score_source and score_source != source:
        load_batch(score_source, model)

    # Ingest, validate, tune/train, register
    trained = train_detector(
        source,
        model,
        label_column=label_column,
        detector=detector,
        contamination=contamination,
        time_budget_s=time_budget_s,
        random_state=random_state,
        dask=dask,
    )

    # Score with the version just registered, whatever its alias
    scored = score_batch(
        score_source or source, model, version=trained["version"], batch_id=batch_id, dask=dask
    )
    return {**trained, **{k: scored[k] for k in ("batch_id", "rows_scored", "anomalies")}}
