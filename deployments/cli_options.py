"""Option types every `pynomaly` command group shares (imports only typer: cheap, no cycles)."""

from __future__ import annotations

from typing import Annotated

import typer

JsonOpt = Annotated[bool, typer.Option("--json", help="Print exactly one JSON object on stdout.")]
DebugOpt = Annotated[bool, typer.Option("--debug", help="Show tracebacks and library logs.")]
QueryOpt = Annotated[
    str | None, typer.Option("--query", help="For a SQL URL source: a table name or a SELECT.")
]
DelimOpt = Annotated[str, typer.Option("--delimiter", help="CSV field delimiter.")]
LabelOpt = Annotated[
    str | None, typer.Option("--label-column", help="0/1 labels, for hold-out metrics.")
]
DetectorOpt = Annotated[str, typer.Option("--detector", help="Catalog name or 'auto'.")]
ContaminationOpt = Annotated[
    float | None, typer.Option("--contamination", help="Expected anomaly share.")
]
BudgetOpt = Annotated[float, typer.Option("--time-budget", help="AutoML seconds.")]
TrialsOpt = Annotated[int | None, typer.Option("--trials", help="AutoML trial cap.")]
WorkersOpt = Annotated[int, typer.Option("--workers", help="AutoML parallel workers.")]
BatchOpt = Annotated[
    str | None, typer.Option("--batch-id", help="Default: the batch's content hash.")
]
