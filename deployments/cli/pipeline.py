"""The top-level commands: `pynomaly ingest|train|score|pipeline|demo|feedback`."""

from __future__ import annotations

import os
import time
from typing import Annotated, Any

import typer

from deployments.cli.options import (
    BatchOpt,
    BudgetOpt,
    ContaminationOpt,
    DaskOpt,
    DebugOpt,
    DelimOpt,
    DetectorOpt,
    JsonOpt,
    LabelOpt,
    QueryOpt,
    TrialsOpt,
    WorkersOpt,
)
from deployments.cli.output import run, say, show


def check_train_options(
    detector: str, contamination: float | None, delimiter: str = ",", dask: str | None = None
) -> None:
    """Option values of train and pipeline, checked before Prefect starts."""
    from tasks.ingest import check_delimiter
    from tasks.scaleout import check_dask
    from tasks.train import check_contamination, check_detector

    check_dask(dask)
    check_detector(detector)
    check_contamination(contamination)
    check_delimiter(delimiter)


def model_rows(result: dict[str, Any]) -> dict[str, Any]:
    """The rows of a training summary worth a person's attention."""
    keep = {
        "model": result.get("model"),
        "version": result.get("version"),
        "alias": result.get("alias"),
        "detector": result.get("detector"),
        "threshold": result.get("threshold"),
        "dataset": f"{result.get('dataset')} ({result.get('rows')} rows, "
        f"{str(result.get('dataset_sha256'))[:12]})",
        "validation": result.get("validation"),
    }
    if result.get("sample_rows"):
        keep["trained on"] = f"a sample of {result['sample_rows']} rows (PYNOMALY_TRAIN_MAX_ROWS)"
    for key in ("roc_auc", "average_precision", "precision", "recall", "f1"):
        if key in result.get("metrics", {}):
            keep[f"hold-out {key}"] = result["metrics"][key]
    gate = result.get("gate") or {}
    if gate.get("decision"):
        failed = [r for r in gate.get("reasons", []) if r.startswith("failed")]
        keep["gate"] = f"{gate['decision']}" + (f" ({failed[0]})" if failed else "")
    return keep


def ingest(
    source: Annotated[str, typer.Argument(help="CSV/Parquet path, s3://bucket/key or SQL URL.")],
    dataset: Annotated[str, typer.Option("--dataset", help="Dataset name.")],
    query: QueryOpt = None,
    delimiter: DelimOpt = ",",
    label_column: Annotated[str | None, typer.Option("--label-column")] = None,
    as_json: JsonOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Snapshot a source as a versioned dataset and validate it."""

    def work() -> dict[str, Any]:
        from flows.ingest_dataset import ingest_dataset

        return ingest_dataset(source, dataset, query, delimiter, label_column)

    def checks() -> None:
        from tasks.ingest import check_dataset_name, check_delimiter

        check_dataset_name(dataset)
        check_delimiter(delimiter)

    result = run(
        work,
        as_json=as_json,
        debug=debug,
        status="Ingesting…",
        sources=(source,),
        checks=checks,
    )
    if not as_json:
        show(
            f"Dataset {dataset}",
            {
                "sha256": result["sha256"],
                "rows": result["rows"],
                "columns": len(result["columns"]),
                "snapshot": result["snapshot"],
                "validation": "suite created"
                if result["validation"]["suite_created"]
                else "passed",
            },
        )


def train(
    source: Annotated[str, typer.Argument(help="Training data: path, s3:// URI or SQL URL.")],
    model: Annotated[str, typer.Option("--model", help="Registered model name.")],
    label_column: LabelOpt = None,
    detector: DetectorOpt = "iforest",
    contamination: ContaminationOpt = None,
    time_budget: BudgetOpt = 60.0,
    trials: TrialsOpt = None,
    workers: WorkersOpt = 1,
    dataset: Annotated[str | None, typer.Option("--dataset")] = None,
    query: QueryOpt = None,
    delimiter: DelimOpt = ",",
    dask: DaskOpt = None,
    as_json: JsonOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Train a detector and register it in MLflow."""

    def work() -> dict[str, Any]:
        from flows.train_detector import train_detector

        return train_detector(
            source,
            model,
            dataset=dataset,
            label_column=label_column,
            detector=detector,
            contamination=contamination,
            query=query,
            delimiter=delimiter,
            time_budget_s=time_budget,
            n_trials=trials,
            n_workers=workers,
            dask=dask,
        )

    result = run(
        work,
        as_json=as_json,
        debug=debug,
        status="Training…",
        sources=(source,),
        checks=lambda: check_train_options(detector, contamination, delimiter, dask),
    )
    if not as_json:
        show(f"Trained {model}", model_rows(result))


def score(
    source: Annotated[str, typer.Argument(help="The batch: path, s3:// URI or SQL URL.")],
    model: Annotated[str, typer.Option("--model", help="NAME or NAME@ALIAS (champion).")],
    version: Annotated[int | None, typer.Option("--version", help="A version number.")] = None,
    batch_id: BatchOpt = None,
    query: QueryOpt = None,
    delimiter: DelimOpt = ",",
    dask: DaskOpt = None,
    as_json: JsonOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Score a batch into detection_results (re-scoring a batch id with the same model version
    replaces that version's rows; other models' and versions' rows of the batch stay)."""

    def work() -> dict[str, Any]:
        from flows.score_batch import score_batch

        return score_batch(
            source,
            model,
            version=version,
            batch_id=batch_id,
            query=query,
            delimiter=delimiter,
            dask=dask,
        )

    def checks() -> None:
        from registry.versions import check_model_ref
        from tasks.ingest import check_delimiter
        from tasks.results import check_batch_id
        from tasks.scaleout import check_dask

        check_dask(dask)
        check_model_ref(model, None, version)
        check_batch_id(batch_id)
        check_delimiter(delimiter)

    result = run(
        work,
        as_json=as_json,
        debug=debug,
        status="Scoring…",
        sources=(source,),
        checks=checks,
    )
    if not as_json:
        show(
            f"Scored batch {result['batch_id']} with {result['model']} v{result['version']}", result
        )


def pipeline(
    source: Annotated[str, typer.Argument(help="Training data.")],
    model: Annotated[str, typer.Option("--model")],
    score_source: Annotated[
        str | None, typer.Option("--score", help="Batch to score (default: the source).")
    ] = None,
    label_column: LabelOpt = None,
    detector: DetectorOpt = "iforest",
    contamination: ContaminationOpt = None,
    time_budget: BudgetOpt = 60.0,
    batch_id: BatchOpt = None,
    dask: DaskOpt = None,
    as_json: JsonOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Ingest, validate, train, register and score in one flow run."""

    def work() -> dict[str, Any]:
        from flows.run_pipeline import pipeline as pipeline_flow

        return pipeline_flow(
            source,
            model,
            score_source=score_source,
            label_column=label_column,
            detector=detector,
            contamination=contamination,
            time_budget_s=time_budget,
            batch_id=batch_id,
            dask=dask,
        )

    def checks() -> None:
        from tasks.results import check_batch_id

        check_train_options(detector, contamination, dask=dask)
        check_batch_id(batch_id)

    result = run(
        work,
        as_json=as_json,
        debug=debug,
        status="Running the pipeline…",
        sources=(source, score_source),
        checks=checks,
    )
    if not as_json:
        rows = model_rows(result)
        rows.update({k: result[k] for k in ("batch_id", "rows_scored", "anomalies")})
        show(f"Pipeline for {model}", rows)


def demo(
    model: Annotated[str, typer.Option("--model")] = "breast-cancer",
    detector: DetectorOpt = "iforest",
    as_json: JsonOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Run the whole pipeline on real data (breast-cancer) with nothing to start."""
    started = time.perf_counter()

    def work() -> dict[str, Any]:
        import pandas as pd
        from sklearn.metrics import roc_auc_score

        from deployments.demo import LABEL, build_demo_files, record_demo_feedback
        from flows.run_pipeline import pipeline as pipeline_flow
        from pynomaly.settings import get_settings
        from tasks.results import read_batch, results_engine

        settings = get_settings()
        files = build_demo_files(settings.home_dir / "demo")
        result = pipeline_flow(
            str(files["train"]),
            model,
            score_source=str(files["batch"]),
            label_column=LABEL,
            detector=detector,
        )
        # Judge the scored batch with the labels kept aside, read back from the results DB.
        # Only this version's rows: a second demo run scores the same batch with version 2.
        engine = results_engine(settings.results_url)
        scored = read_batch(
            engine,
            result["batch_id"],
            model_name=result["model"],
            model_version=result["version"],
        )
        engine.dispose()
        truth = pd.read_csv(files["batch_labels"]).set_index("row_index")[LABEL]
        y = truth.loc[scored["row_index"]].to_numpy()
        result["metrics"]["batch_roc_auc"] = float(roc_auc_score(y, scored["score"]))
        result["batch_anomalies_true"] = int(y.sum())
        # Feedback: an analyst labels the flagged rows (the truth kept aside); their precision
        result["feedback"] = record_demo_feedback(
            settings.results_url,
            scored,
            truth,
            batch_id=result["batch_id"],
            model=result["model"],
            version=result["version"],
            folder=files["batch"].parent,
        )
        result["seconds"] = round(time.perf_counter() - started, 1)
        result["ui"] = {
            "mlflow": f"mlflow ui --backend-store-uri {settings.mlflow_tracking_uri} --port 5000",
            # One server per Prefect database: the background API (no UI) stops first.
            "prefect": (
                f"pynomaly services down && PREFECT_HOME={os.environ['PREFECT_HOME']} "
                "prefect server start"
            ),
        }
        return result

    result = run(work, as_json=as_json, debug=debug, status="Running the demo pipeline…")
    if as_json:
        return
    rows = model_rows(result)
    rows["batch ROC-AUC"] = result["metrics"]["batch_roc_auc"]
    rows["rows scored"] = result["rows_scored"]
    rows["anomalies flagged"] = (
        f"{result['anomalies']} (of {result['batch_anomalies_true']} truly malignant in the batch)"
    )
    feedback = result["feedback"]
    if feedback["flagged_precision"] is not None:
        rows["precision of flagged rows"] = (
            f"{feedback['flagged_precision']:.3f} (analyst feedback on {feedback['rows']} rows)"
        )
    rows["batch id"] = result["batch_id"]
    rows["seconds"] = result["seconds"]
    show("Pynomaly demo: breast-cancer (benign = normal, malignant = anomaly)", rows)
    say("Open the UIs on this state:", *(f"  {command}" for command in result["ui"].values()))


def feedback(
    source: Annotated[
        str,
        typer.Argument(help="CSV or Parquet with batch_id, row_index, label (1/0), optional note."),
    ],
    by: Annotated[
        str | None, typer.Option("--by", help="Who labelled the rows (default: your user name).")
    ] = None,
    as_json: JsonOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Record analyst feedback (1 = anomaly, 0 = normal) for scored rows; relabelling replaces."""

    def work() -> dict[str, Any]:
        from pynomaly.settings import get_settings
        from tasks.feedback import record_feedback_file

        return record_feedback_file(get_settings().results_url, source, by)

    result = run(
        work, as_json=as_json, debug=debug, status="Recording feedback…", sources=(source,)
    )
    if not as_json:
        show(
            f"Feedback from {result['labelled_by']}",
            {
                "rows": result["rows"],
                "labelled anomalies": result["anomalies"],
                "batches": ", ".join(result["batches"]),
                "model versions": ", ".join(
                    f"{m['model']} v{m['version']} ({m['rows']} rows)" for m in result["models"]
                ),
                "feedback rows written": result["written"],
                "earlier labels replaced": result["replaced"],
            },
        )
