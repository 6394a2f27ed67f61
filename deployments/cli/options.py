"""Option types every `pynomaly` command group shares (imports only typer: cheap, no cycles)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Annotated, Any

import typer

# Typer 0.29 parses with its own copy of click: these are the exceptions its commands raise.
from typer._click.exceptions import NoArgsIsHelpError, UsageError
from typer.core import TyperGroup

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
DaskOpt = Annotated[
    str | None,
    typer.Option(
        "--dask",
        metavar="ADDRESS|local",
        help="Run on Dask: a scheduler address (tcp://HOST:PORT) or 'local' (a LocalCluster).",
    ),
]
BatchOpt = Annotated[
    str | None, typer.Option("--batch-id", help="Default: the batch's content hash.")
]


def group(help: str, **kw: Any) -> typer.Typer:
    """A command group: its help on no arguments, plain tracebacks, no completion commands."""
    return typer.Typer(
        help=help, no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False, **kw
    )


class OneLineUsageErrors(TyperGroup):
    """Usage errors (a bad option value, a missing option, an unknown command) as one line on
    stderr naming the option and value, exit code 2, like every other bad input."""

    def make_context(self, info_name: str | None, args: list[str], *more: Any, **kw: Any) -> Any:
        with _one_line_usage_errors(list(args)):
            return super().make_context(info_name, args, *more, **kw)

    def invoke(self, ctx: Any) -> Any:
        # The words after the group's own options: the subcommand, its options and values.
        with _one_line_usage_errors([*getattr(ctx, "_protected_args", []), *ctx.args]):
            return super().invoke(ctx)


def _given_value(exc: UsageError, args: list[str]) -> str | None:
    """The value given on the command line to the option a usage error is about."""
    opts = getattr(getattr(exc, "param", None), "opts", None) or []
    for i, arg in enumerate(args):
        for opt in opts:
            if arg == opt and i + 1 < len(args):
                return args[i + 1]
            if arg.startswith(f"{opt}="):
                return arg[len(opt) + 1 :]
    return None


@contextlib.contextmanager
def _one_line_usage_errors(args: list[str]) -> Iterator[None]:
    try:
        yield
    except NoArgsIsHelpError:
        raise  # `pynomaly` alone still prints the help
    except UsageError as exc:
        message = " ".join(exc.format_message().split())
        value = _given_value(exc, args)
        if value is not None and repr(value) not in message:
            message += f" (got {value!r})"
        where = f" (see {exc.ctx.command_path} --help)" if exc.ctx is not None else ""
        typer.echo(f"error: {message}{where}", err=True)
        raise typer.Exit(exc.exit_code) from None
