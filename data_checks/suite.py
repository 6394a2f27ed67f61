"""Expectation suites: generated from a dataset's first accepted snapshot, then run with GX.

The suite is Great Expectations' own JSON (`ExpectationSuite.to_json_dict()`), stored in the
artifact store at `expectations/<dataset>.json`, where people may edit it.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from typing import Any

import pandas as pd

# Tolerances for generated expectations: wide on purpose, since a new batch of an anomaly
# detector is expected to hold some outliers; the suite catches broken feeds, not anomalies.
NULL_TOLERANCE = 0.10
RANGE_WIDEN = 0.5
RANGE_MOSTLY = 0.95
CATEGORY_LIMIT = 50
CATEGORY_MOSTLY = 0.9


def suite_key(dataset: str) -> str:
    """Where a dataset's suite lives in the artifact store."""
    return f"expectations/{dataset}.json"


def generate_suite(frame: pd.DataFrame, dataset: str, optional_columns: list[str]) -> dict:
    """GX suite JSON for a dataset: columns, types, null shares, value ranges with tolerance."""
    expectations: list[dict[str, Any]] = [
        {"type": "expect_table_row_count_to_be_between", "kwargs": {"min_value": 1}},
    ]
    for col in frame.columns:
        values = frame[col]
        meta = {"optional": True} if col in optional_columns else {}
        numeric = pd.api.types.is_numeric_dtype(values)

        def add(kind: str, col: str = col, meta: dict = meta, **kwargs: Any) -> None:
            expectations.append({"type": kind, "kwargs": {"column": col, **kwargs}, "meta": meta})

        add("expect_column_to_exist")
        add(
            "expect_column_values_to_be_in_type_list",
            type_list=["float64"] if numeric else ["object", "str", "string"],
        )
        null_share = float(values.isna().mean())
        add(
            "expect_column_values_to_not_be_null",
            mostly=round(max(0.0, 1.0 - null_share - NULL_TOLERANCE), 4),
        )
        if numeric:
            low, high = float(values.min()), float(values.max())
            span = (high - low) or max(abs(high), 1.0)
            add(
                "expect_column_values_to_be_between",
                min_value=low - RANGE_WIDEN * span,
                max_value=high + RANGE_WIDEN * span,
                mostly=RANGE_MOSTLY,
            )
        else:
            seen = sorted(str(v) for v in values.dropna().unique())
            if len(seen) <= CATEGORY_LIMIT:
                add("expect_column_values_to_be_in_set", value_set=seen, mostly=CATEGORY_MOSTLY)
    return {"name": dataset, "expectations": expectations, "meta": {"generated_by": "pynomaly"}}


@dataclass
class ValidationReport:
    """Outcome of one batch against its suite; failures are named by expectation and column."""

    dataset: str
    success: bool
    suite_created: bool = False
    evaluated: int = 0
    failures: list[dict[str, Any]] = field(default_factory=list)

    def summary(self) -> str:
        if self.success:
            what = "suite created from this snapshot" if self.suite_created else "passed"
            return f"{self.dataset}: validation {what} ({self.evaluated} expectations)"
        first = self.failures[0]
        where = f" column {first['column']!r}" if first.get("column") else ""
        return (
            f"{self.dataset}: {len(self.failures)} of {self.evaluated} expectations failed; "
            f"first:{where} {first['expectation']} ({first['observed']})"
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def run_suite(frame: pd.DataFrame, suite: dict) -> ValidationReport:
    """Validate a frame with Great Expectations; expectations on absent optional columns drop."""
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    present = set(frame.columns)
    kept = [
        e
        for e in suite["expectations"]
        if not (e.get("meta", {}).get("optional") and e["kwargs"].get("column") not in present)
    ]
    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    asset = context.data_sources.add_pandas("pynomaly").add_dataframe_asset(suite["name"])
    batch = asset.add_batch_definition_whole_dataframe("batch").get_batch(
        batch_parameters={"dataframe": frame}
    )
    gx_suite = gx.ExpectationSuite(name=suite["name"], expectations=kept)
    result = batch.validate(gx_suite)
    missing = {
        e["kwargs"]["column"]
        for e in kept
        if e["type"] == "expect_column_to_exist" and e["kwargs"]["column"] not in present
    }
    failures: list[dict[str, Any]] = [
        {
            "expectation": "expect_column_to_exist",
            "column": column,
            "kwargs": {},
            "observed": "column is missing",
        }
        for column in sorted(missing)
    ]
    for item in result.results:
        config = item.expectation_config
        if item.success or config.kwargs.get("column") in missing:
            continue
        observed = item.result.get("observed_value")
        if observed is None and "unexpected_percent" in item.result:
            observed = f"{item.result['unexpected_percent']:.1f}% unexpected"
        if item.exception_info and item.exception_info.get("raised_exception"):
            observed = item.exception_info.get("exception_message")
        failures.append(
            {
                "expectation": config.type,
                "column": config.kwargs.get("column"),
                "kwargs": {k: v for k, v in config.kwargs.items() if k != "batch_id"},
                "observed": str(observed),
            }
        )
    return ValidationReport(
        dataset=suite["name"], success=not failures, evaluated=len(kept), failures=failures
    )


def dumps_suite(suite: dict) -> bytes:
    """Suite JSON as people should read and edit it."""
    return json.dumps(suite, indent=2, sort_keys=False).encode()
