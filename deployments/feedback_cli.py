"""`pynomaly feedback SOURCE [--by NAME]`: analysts' 0/1 labels of scored rows."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from deployments.cli_options import DebugOpt, JsonOpt


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
    from deployments.cli import run, show

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
