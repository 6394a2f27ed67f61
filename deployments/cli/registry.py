"""`pynomaly registry ...` and `pynomaly drift`: lineage, gate, promotion, rollback, drift."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.table import Table

from deployments.cli.options import DebugOpt, DelimOpt, JsonOpt, QueryOpt, group
from deployments.cli.output import out, run, say

registry_app = group("Models: list, show, gate, promote, roll back.")

NameArg = Annotated[str, typer.Argument(help="Registered model name.")]


def _client() -> Any:
    from pynomaly.settings import get_settings
    from registry.versions import client

    return client(get_settings().mlflow_tracking_uri)


def _short(value: Any, n: int = 12) -> str:
    return str(value)[:n] if value else "-"


def _gate_lines(gate: dict[str, Any] | None, indent: str = "    ") -> list[str]:
    if not gate:
        return [f"{indent}gate: not evaluated"]
    against = gate.get("champion_version")
    lines = [
        f"{indent}gate: {gate['decision']}"
        + (f" (vs champion v{against})" if against else "")
        + (" on labels" if gate.get("labelled") else " label-free")
        + (f", {gate['at']}" if gate.get("at") else "")
    ]
    lines += [f"{indent}  - {r}" for r in gate.get("reasons", [])]
    return lines


@registry_app.command("list")
def list_cmd(as_json: JsonOpt = False, debug: DebugOpt = False) -> None:
    """Registered models with their aliases and champion lineage."""

    def work() -> dict[str, Any]:
        from registry.lineage import list_models

        return {"models": list_models(_client())}

    result = run(work, as_json=as_json, debug=debug, status="Reading the registry…")
    if as_json:
        return
    columns = ("model", "versions", "champion", "aliases", "detector", "dataset", "sha256")
    table = Table(*columns, "latest gate", title="Registered models", title_justify="left")
    for m in result["models"]:
        table.add_row(
            m["name"],
            str(m["versions"]),
            f"v{m['champion']}" if m["champion"] else "-",
            ", ".join(f"{a}->v{v}" for a, v in sorted(m["aliases"].items())) or "-",
            m.get("detector") or "-",
            m.get("dataset") or "-",
            _short(m.get("dataset_sha256")),
            m.get("latest_gate") or "-",
        )
    out.print(table)


@registry_app.command()
def show(name: NameArg, as_json: JsonOpt = False, debug: DebugOpt = False) -> None:
    """A model's versions with lineage (data hash, validation, run, tuning) and gate decisions."""

    def work() -> dict[str, Any]:
        from registry.lineage import show_model

        return show_model(_client(), name)

    result = run(work, as_json=as_json, debug=debug, status="Reading the registry…")
    if as_json:
        return
    aliases = ", ".join(f"{a}->v{v}" for a, v in sorted(result["aliases"].items()))
    history = " -> ".join(f"v{e['version']}" for e in result["champion_history"]) or "-"
    lines = [f"{name}   aliases: {aliases or '-'}   champion history: {history}"]
    if result["retrain_history"]:
        lines.append(
            "retrains: "
            + ", ".join(f"{e['at']} ({e['trigger']})" for e in result["retrain_history"])
        )
    for v in result["versions"]:
        tags = f" [{', '.join(v['aliases'])}]" if v["aliases"] else ""
        lines.append(f"v{v['version']}{tags}  {v['status']}  created {v['created_at']}")
        lines.append(
            f"    data: {v.get('dataset') or '-'} sha256 {_short(v.get('dataset_sha256'))}"
            f"  validation: {v.get('validation') or '-'}"
        )
        tuning = v.get("tuning")
        lines.append(
            f"    run: {v.get('run_id') or '-'}  detector: {v.get('detector') or '-'}"
            f"  threshold: {v.get('threshold') or '-'}"
            f"  code: {v.get('code_version') or '-'}"
            + (f"  tuning: {tuning['trials']} trials {tuning.get('study') or ''}" if tuning else "")
        )
        if v.get("window_snapshots"):
            parts = [
                f"{d}/{sha[:12]}" for d, _, sha in (p.partition("/") for p in v["window_snapshots"])
            ]
            lines.append(f"    window: {', '.join(parts)}")
        for key in ("promoted_at", "retired_at", "rolled_back_at", "restored_at"):
            if v.get(key):
                lines.append(f"    {key.replace('_', ' ')}: {v[key]}")
        lines += _gate_lines(v.get("gate"))
    say(*lines)


@registry_app.command()
def promote(
    name: NameArg,
    version: Annotated[int, typer.Option("--version", help="The version to make champion.")],
    force: Annotated[
        bool, typer.Option("--force", help="Promote even a version the gate rejected.")
    ] = False,
    as_json: JsonOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Make a version champion by hand (under the promotion lock; a rejected one needs --force)."""

    def work() -> dict[str, Any]:
        from pynomaly.settings import get_settings
        from registry.promotion import promote as promote_version
        from registry.versions import CHAMPION, aliases_of

        settings = get_settings()
        mlflow_client = _client()
        return promote_version(
            mlflow_client,
            settings.mlflow_tracking_uri,
            name,
            version,
            expected_champion=aliases_of(mlflow_client, name).get(CHAMPION),
            lock_dir=settings.home_dir,
            reason="manual" + (" (forced)" if force else ""),
            force=force,
            prefect_server=settings.prefect_server,
        )

    result = run(work, as_json=as_json, debug=debug, status="Promoting…")
    if not as_json:
        before = f"v{result['previous']}" if result["previous"] else "none"
        say(
            f"{name}: champion v{result['version']} (was {before}; {result['lock']} lock)"
            if result["changed"]
            else f"{name}: v{version} already is the champion"
        )


@registry_app.command()
def rollback(
    name: NameArg,
    to: Annotated[int | None, typer.Option("--to", help="An earlier champion version.")] = None,
    as_json: JsonOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Restore the previous champion (or an earlier one with --to)."""

    def work() -> dict[str, Any]:
        from pynomaly.settings import get_settings
        from registry.promotion import rollback as rollback_version

        settings = get_settings()
        return rollback_version(
            _client(),
            settings.mlflow_tracking_uri,
            name,
            to=to,
            lock_dir=settings.home_dir,
            prefect_server=settings.prefect_server,
        )

    result = run(work, as_json=as_json, debug=debug, status="Rolling back…")
    if not as_json:
        say(f"{name}: champion v{result['version']} restored (v{result['previous']} retired)")


@registry_app.command()
def evaluate(
    name: NameArg,
    version: Annotated[int, typer.Option("--version", help="The version to evaluate.")],
    data: Annotated[
        str | None, typer.Option("--data", help="Evaluation data (default: a training snapshot).")
    ] = None,
    label_column: Annotated[str | None, typer.Option("--label-column")] = None,
    expected_share: Annotated[
        float | None, typer.Option("--expected-share", help="Expected anomaly share.")
    ] = None,
    no_promote: Annotated[
        bool, typer.Option("--no-promote", help="Only record the decision.")
    ] = False,
    query: QueryOpt = None,
    delimiter: DelimOpt = ",",
    as_json: JsonOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Check a version's interface, gate it against the champion, promote it if it passes."""

    def work() -> dict[str, Any]:
        from flows.evaluate_model import evaluate_model

        return evaluate_model(
            name,
            version,
            data=data,
            label_column=label_column,
            expected_share=expected_share,
            promote=not no_promote,
            query=query,
            delimiter=delimiter,
        )

    result = run(work, as_json=as_json, debug=debug, status="Evaluating…", sources=(data,))
    if not as_json:
        say(
            f"{name} v{version}: {result['decision']}"
            + (" -> promoted to champion" if result["promoted"] else ""),
            f"  evaluated on {result['evaluated_on']}",
            f"  score: {result['score_convention']}; threshold {result['threshold']:.6g} "
            f"({result['threshold_source']})",
            *[f"  - {r}" for r in result["reasons"]],
        )


def drift(
    source: Annotated[str, typer.Argument(help="The new batch: path, s3:// URI or SQL URL.")],
    model: Annotated[str, typer.Option("--model", help="NAME or NAME@ALIAS (champion).")],
    retrain: Annotated[
        bool, typer.Option("--retrain/--no-retrain", help="Start a retrain when drift is found.")
    ] = True,
    query: QueryOpt = None,
    delimiter: DelimOpt = ",",
    as_json: JsonOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Compare a batch with the champion's training data (columns and scores)."""

    def work() -> dict[str, Any]:
        from flows.check_drift import check_drift

        return check_drift(
            source, model, retrain_on_drift=retrain, query=query, delimiter=delimiter
        )

    result = run(work, as_json=as_json, debug=debug, status="Checking drift…", sources=(source,))
    if as_json:
        return
    from tasks.drift import rows_compared

    drifted = [c for c, r in result["columns"].items() if r["drifted"]]
    score = result["score_drift"]
    retrain_info = result.get("retrain") or {}
    say(
        f"{result['model']} v{result['version']}: drift "
        + ("DETECTED" if result["drift_detected"] else "not detected"),
        f"  columns drifted: {len(drifted)}/{len(result['columns'])} "
        f"(share {result['drift_share']:.2f}, threshold {result['drift_threshold']:g})"
        + (f": {', '.join(drifted[:10])}{'…' if len(drifted) > 10 else ''}" if drifted else ""),
        f"  score drift: PSI {score.get('psi', 0):.3f}, KS {score.get('ks_statistic', 0):.3f} "
        f"(p={score.get('ks_pvalue', 1):.2g}) -> {'drifted' if score.get('drifted') else 'stable'}",
        f"  rows compared: {rows_compared(result)}",
        f"  report: {result['report_uri']}",
        f"  retrain: {retrain_info.get('status', 'not requested')}"
        + (f" ({retrain_info['reason']})" if retrain_info.get("reason") else ""),
    )
