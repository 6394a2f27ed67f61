"""`pynomaly`: the command line over the flows. Heavy imports happen inside commands only."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import signal
import sys
import threading
import time
import traceback
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from deployments.cli_options import (
    BatchOpt,
    BudgetOpt,
    ContaminationOpt,
    DebugOpt,
    DelimOpt,
    DetectorOpt,
    JsonOpt,
    LabelOpt,
    OneLineUsageErrors,
    QueryOpt,
    TrialsOpt,
    WorkersOpt,
)

app = typer.Typer(
    cls=OneLineUsageErrors,
    help="Pynomaly: anomaly detection you can trust, trace and restore.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
out = Console()
err = Console(stderr=True)


def _quiet_libraries() -> None:
    """Keep stderr for our own one-line messages: library chatter goes to the Prefect API/logs."""
    os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "CRITICAL")
    os.environ.setdefault("PREFECT_LOGGING_INTERNAL_LEVEL", "CRITICAL")
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    os.environ.setdefault("TQDM_DISABLE", "1")
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "ERROR")
    warnings.filterwarnings("ignore")
    for name in ("mlflow", "alembic", "great_expectations", "urllib3", "botocore", "httpx"):
        logging.getLogger(name).setLevel(logging.ERROR)


def run(
    work: Callable[[], dict[str, Any]],
    *,
    as_json: bool,
    debug: bool,
    status: str,
    sources: tuple[str | None, ...] = (),
    checks: Callable[[], object] | None = None,
) -> dict:
    """Run a command body: environment first, errors as one line (exit 2 bad input, 1 other).

    `checks` validates the arguments before Prefect starts; with --json, whatever libraries
    print on stdout (MLflow's "View run" lines) is kept off it: stdout is the one JSON object.
    """
    from pynomaly.errors import InputError
    from pynomaly.settings import apply_runtime_environment, get_settings

    if not debug:
        _quiet_libraries()
    try:
        with _signals_as_interrupts():
            for source in sources:
                _check_local_file(source)
            if checks is not None:
                checks()
            settings = get_settings()
            apply_runtime_environment(settings)
            _remove_leftovers(settings)
            if not debug:
                _quiet_libraries()  # again: importing MLflow resets its logger levels
            stray = sys.stderr if debug else io.StringIO()
            with (
                err.status(status) if err.is_terminal else _nothing(),
                contextlib.redirect_stdout(stray) if as_json else _nothing(),
            ):
                result = work()
    except KeyboardInterrupt as exc:
        # Ctrl-C, SIGTERM or SIGHUP: Prefect's ephemeral server is stopped at exit (atexit).
        signum = exc.signum if isinstance(exc, Interrupted) else signal.SIGINT
        if debug:
            traceback.print_exc()
        err.print(
            f"pynomaly: interrupted ({signal.Signals(signum).name})", markup=False, highlight=False
        )
        raise typer.Exit(128 + signum) from None
    except InputError as exc:
        if debug:
            traceback.print_exc()
        # One line whatever the message holds (a value quoted from a file may span lines).
        message = " ".join(line.strip() for line in str(exc).splitlines() if line.strip())
        err.print(f"error: {message}", markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None
    except typer.Exit:
        raise
    except Exception as exc:
        if debug:
            traceback.print_exc()
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        err.print(
            f"error: {type(exc).__name__}: {message} (run with --debug for the traceback)",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )
        raise typer.Exit(1) from None
    if as_json:
        sys.stdout.write(json.dumps(result, default=str) + "\n")
    return result


class Interrupted(KeyboardInterrupt):
    """A termination signal raised like Ctrl-C, so cleanup runs as it does for Ctrl-C."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _raise_interrupted(signum: int, frame: object) -> None:
    raise Interrupted(signum)


@contextlib.contextmanager
def _signals_as_interrupts() -> Iterator[None]:
    """While a command body runs, SIGTERM and SIGHUP raise `Interrupted` (the default would end
    the process at once, leaving Prefect's ephemeral API server running)."""
    previous: dict[int, Any] = {}
    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGTERM, signal.SIGHUP):
            previous[signum] = signal.signal(signum, _raise_interrupted)
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _remove_leftovers(settings: Any) -> None:
    """What killed commands of this home left: their Prefect API servers, staging folders."""
    from deployments.leftovers import mark_command, stop_orphan_servers
    from tasks.staging import remove_dead_staging

    mark_command()  # before Prefect starts its server: the server inherits the name
    stop_orphan_servers(Path(os.environ["PREFECT_HOME"]))
    remove_dead_staging(settings.staging_dir)


def _check_local_file(source: str | None) -> None:
    """Fail at once on a missing local file, an s3:// URI without a key, a SQL URL with a
    password or an unset env: reference, before the seconds Prefect takes to start."""
    from pynomaly.errors import InputError
    from tasks.ingest import check_source, is_reference

    if source:
        # Before Prefect records the source as a flow parameter: no password may be in it.
        check_source(source)
    if source and is_reference(source):
        return
    if source and "://" not in source and not os.path.exists(source):
        raise InputError(f"{source}: file not found")
    if source and source.startswith("s3://"):
        from tasks.ingest import check_s3_source

        check_s3_source(source)


def check_train_options(detector: str, contamination: float | None, delimiter: str = ",") -> None:
    """Option values of train and pipeline, checked before Prefect starts."""
    from tasks.ingest import check_delimiter
    from tasks.train import check_contamination, check_detector

    check_detector(detector)
    check_contamination(contamination)
    check_delimiter(delimiter)


class _nothing:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def show(title: str, rows: dict[str, Any]) -> None:
    """A two-column table on stdout."""
    table = Table(title=title, show_header=False, title_justify="left")
    for key, value in rows.items():
        if isinstance(value, float):
            value = f"{value:.4g}"
        table.add_row(key, str(value))
    out.print(table)


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
    for key in ("roc_auc", "average_precision", "precision", "recall", "f1"):
        if key in result.get("metrics", {}):
            keep[f"hold-out {key}"] = result["metrics"][key]
    gate = result.get("gate") or {}
    if gate.get("decision"):
        failed = [r for r in gate.get("reasons", []) if r.startswith("failed")]
        keep["gate"] = f"{gate['decision']}" + (f" ({failed[0]})" if failed else "")
    return keep


@app.command()
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


@app.command()
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
        )

    result = run(
        work,
        as_json=as_json,
        debug=debug,
        status="Training…",
        sources=(source,),
        checks=lambda: check_train_options(detector, contamination, delimiter),
    )
    if not as_json:
        show(f"Trained {model}", model_rows(result))


@app.command()
def score(
    source: Annotated[str, typer.Argument(help="The batch: path, s3:// URI or SQL URL.")],
    model: Annotated[str, typer.Option("--model", help="NAME or NAME@ALIAS (champion).")],
    version: Annotated[int | None, typer.Option("--version", help="A version number.")] = None,
    batch_id: BatchOpt = None,
    query: QueryOpt = None,
    delimiter: DelimOpt = ",",
    as_json: JsonOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Score a batch into detection_results (re-scoring a batch id with the same model version
    replaces that version's rows; other models' and versions' rows of the batch stay)."""

    def work() -> dict[str, Any]:
        from flows.score_batch import score_batch

        return score_batch(
            source, model, version=version, batch_id=batch_id, query=query, delimiter=delimiter
        )

    def checks() -> None:
        from registry.versions import check_model_ref
        from tasks.ingest import check_delimiter
        from tasks.results import check_batch_id

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


@app.command()
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
        )

    def checks() -> None:
        from tasks.results import check_batch_id

        check_train_options(detector, contamination)
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


@app.command()
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
            "prefect": f"PREFECT_HOME={os.environ['PREFECT_HOME']} prefect server start",
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
    out.print("Open the UIs on this state:")
    for command in result["ui"].values():
        out.print(f"  {command}", markup=False, highlight=False, soft_wrap=True)


def _mount_subcommands() -> None:
    """Command groups that live in their own modules (each imports only typer at the top)."""
    from deployments.backup_cli import backup_app
    from deployments.deploy import deploy
    from deployments.feedback_cli import feedback
    from deployments.metrics_cli import health, metrics_app
    from deployments.registry_cli import drift, registry_app
    from deployments.services_cli import services_app

    app.add_typer(services_app, name="services", help="Local production services.")
    app.add_typer(backup_app, name="backup", help="Back up, verify, restore and prune.")
    app.add_typer(
        registry_app, name="registry", help="Models: list, show, gate, promote, roll back."
    )
    app.command("drift")(drift)
    app.add_typer(metrics_app, name="metrics", help="Prometheus metrics: serve or show.")
    app.command("health")(health)
    app.command("feedback")(feedback)
    app.command(help="Register the Prefect deployments and the drift -> retrain automation.")(
        deploy
    )


_mount_subcommands()


def main() -> None:  # pragma: no cover - console entry
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
