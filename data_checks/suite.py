"""Expectation suites: generated from a dataset's first accepted snapshot, then run with GX.

The suite is Great Expectations' own JSON (`ExpectationSuite.to_json_dict()`), stored in the
artifact store at `expectations/<dataset>.json`, where people may edit it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
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


Chunks = Callable[[], Iterable[pd.DataFrame]]


def as_chunks(data: pd.DataFrame | Chunks) -> Chunks:
    """A whole frame or a callable giving a fresh iterator of chunks, as the latter."""
    if isinstance(data, pd.DataFrame):
        return lambda: [data]
    return data


@dataclass
class _ColumnStats:
    """What generate_suite needs of a column, gathered chunk by chunk (exactly the whole
    column's values: counts add up, min and max of minima and maxima, distinct values united)."""

    numeric: bool
    rows: int = 0
    nulls: int = 0
    low: float = float("nan")
    high: float = float("nan")
    seen: set[str] = field(default_factory=set)

    def add(self, values: pd.Series) -> None:
        self.rows += len(values)
        self.nulls += int(values.isna().sum())
        if self.numeric:
            low, high = float(values.min()), float(values.max())
            self.low = low if np.isnan(self.low) else min(self.low, low)
            self.high = high if np.isnan(self.high) else max(self.high, high)
        elif len(self.seen) <= CATEGORY_LIMIT:  # beyond the limit no set is written
            self.seen.update(str(v) for v in values.dropna().unique())


def generate_suite(data: pd.DataFrame | Chunks, dataset: str, optional_columns: list[str]) -> dict:
    """GX suite JSON for a dataset: columns, types, null shares, value ranges with tolerance.

    `data` is a frame or a callable giving its chunks: read once, chunk by chunk.
    """
    stats: dict[str, _ColumnStats] = {}
    for chunk in as_chunks(data)():
        for col in chunk.columns:
            values = chunk[col]
            if col not in stats:
                stats[col] = _ColumnStats(pd.api.types.is_numeric_dtype(values))
            stats[col].add(values)
    expectations: list[dict[str, Any]] = [
        {"type": "expect_table_row_count_to_be_between", "kwargs": {"min_value": 1}},
    ]
    for col, stat in stats.items():
        meta = {"optional": True} if col in optional_columns else {}

        def add(kind: str, col: str = col, meta: dict = meta, **kwargs: Any) -> None:
            expectations.append({"type": kind, "kwargs": {"column": col, **kwargs}, "meta": meta})

        add("expect_column_to_exist")
        add(
            "expect_column_values_to_be_in_type_list",
            type_list=["float64"] if stat.numeric else ["object", "str", "string"],
        )
        null_share = stat.nulls / stat.rows if stat.rows else float("nan")
        add(
            "expect_column_values_to_not_be_null",
            mostly=round(max(0.0, 1.0 - null_share - NULL_TOLERANCE), 4),
        )
        if stat.numeric:
            low, high = stat.low, stat.high
            span = (high - low) or max(abs(high), 1.0)
            add(
                "expect_column_values_to_be_between",
                min_value=low - RANGE_WIDEN * span,
                max_value=high + RANGE_WIDEN * span,
                mostly=RANGE_MOSTLY,
            )
        elif len(stat.seen) <= CATEGORY_LIMIT:
            add(
                "expect_column_values_to_be_in_set",
                value_set=sorted(stat.seen),
                mostly=CATEGORY_MOSTLY,
            )
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


# How an expectation is checked on a batch read in chunks. Row-wise expectations decide each row
# on its own, so their unexpected counts add up across chunks and `mostly` is applied to the
# sums exactly as GX applies it to one frame. Schema expectations see the same columns and dtypes
# in every chunk. The row count is a sum. Anything else (means, quantiles, uniqueness, order
# across rows) needs whole columns: it runs once on the columns it names, read in full.
ROW_WISE = {
    f"expect_column_values_to_{kind}"
    for kind in (
        "not_be_null",
        "be_null",
        "be_between",
        "be_in_set",
        "not_be_in_set",
        "match_regex",
        "not_match_regex",
        "match_regex_list",
        "not_match_regex_list",
        "match_like_pattern",
        "not_match_like_pattern",
        "match_like_pattern_list",
        "not_match_like_pattern_list",
        "match_strftime_format",
        "be_dateutil_parseable",
        "be_json_parseable",
        "match_json_schema",
    )
} | {
    "expect_column_value_lengths_to_be_between",
    "expect_column_value_lengths_to_equal",
    "expect_column_pair_values_to_be_equal",
    "expect_column_pair_values_a_to_be_greater_than_b",
    "expect_column_pair_values_to_be_in_set",
    "expect_multicolumn_sum_to_equal",
    "expect_select_column_values_to_be_unique_within_record",
}
SCHEMA = {
    "expect_column_to_exist",
    "expect_column_values_to_be_of_type",
    "expect_column_values_to_be_in_type_list",
    "expect_table_columns_to_match_ordered_list",
    "expect_table_columns_to_match_set",
    "expect_table_column_count_to_equal",
    "expect_table_column_count_to_be_between",
}
ROW_COUNT = "expect_table_row_count_to_be_between"
CHUNKWISE = ROW_WISE | SCHEMA


def _named_columns(kwargs: dict[str, Any]) -> list[str]:
    """The columns an expectation reads (its column, column pair or column list)."""
    names = [kwargs.get(k) for k in ("column", "column_A", "column_B")]
    return [n for n in names if n] + list(kwargs.get("column_list") or [])


def _row_count_success(rows: int, kwargs: dict[str, Any]) -> bool:
    low, high = kwargs.get("min_value"), kwargs.get("max_value")
    above = low is None or (rows > low if kwargs.get("strict_min") else rows >= low)
    below = high is None or (rows < high if kwargs.get("strict_max") else rows <= high)
    return above and below


class _Tally:
    """One expectation's outcome summed over chunks."""

    def __init__(self) -> None:
        self.success = True
        self.elements = self.missing = self.unexpected = 0
        self.counted = False
        self.observed: Any = None
        self.error: str | None = None

    def add(self, item: Any) -> None:
        result = item.result or {}
        if item.exception_info and item.exception_info.get("raised_exception"):
            self.success, self.error = False, item.exception_info.get("exception_message")
        if result.get("unexpected_count") is not None and "element_count" in result:
            self.counted = True
            self.elements += int(result["element_count"])
            self.missing += int(result.get("missing_count") or 0)
            self.unexpected += int(result["unexpected_count"])
        elif not item.success and self.observed is None:
            self.success, self.observed = False, result.get("observed_value")

    def outcome(self, mostly: float) -> tuple[bool, Any]:
        if self.error is not None:
            return False, self.error
        if not self.counted:
            return self.success, self.observed
        # GX's rule (_mostly_success): rows considered are the non-missing ones (all rows for
        # expect_column_values_to_not_be_null, which reports no missing_count); none is a pass.
        considered = self.elements - self.missing
        if considered == 0:
            return True, None
        share = (considered - self.unexpected) / considered
        percent = self.unexpected / considered * 100
        return share >= mostly, f"{percent:.1f}% unexpected"


class _Validator:
    """One ephemeral GX context and batch definition, reused for every chunk of a command."""

    def __init__(self, name: str) -> None:
        os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
        import great_expectations as gx
        from great_expectations.data_context.types.base import ProgressBarsConfig

        self.gx = gx
        context = gx.get_context(mode="ephemeral")
        context.variables.progress_bars = ProgressBarsConfig(globally=False)
        asset = context.data_sources.add_pandas("pynomaly").add_dataframe_asset(name)
        self.definition = asset.add_batch_definition_whole_dataframe("batch")

    def validate(self, frame: pd.DataFrame, name: str, expectations: list[dict]) -> list[Any]:
        """GX's results for `expectations`, in their order (GX returns its own order)."""
        tagged = [
            {**e, "meta": {**(e.get("meta") or {}), "pynomaly_position": i}}
            for i, e in enumerate(expectations)
        ]
        batch = self.definition.get_batch(batch_parameters={"dataframe": frame})
        suite = self.gx.ExpectationSuite(name=name, expectations=tagged)
        # BASIC holds the counts the chunks are summed by, without SUMMARY's value tallies
        # (measured: 0.38 s instead of 0.70 s for 80 expectations on 200k rows).
        results = batch.validate(suite, result_format="BASIC").results
        return sorted(results, key=lambda r: r.expectation_config.meta["pynomaly_position"])


def run_suite(data: pd.DataFrame | Chunks, suite: dict) -> ValidationReport:
    """Validate a frame, or a batch chunk by chunk (`data` a callable giving its chunks), with
    Great Expectations; expectations on absent optional columns drop."""
    chunks = as_chunks(data)
    tallies: dict[int, _Tally] = {}
    rows = 0
    present: set[str] = set()
    kept: list[dict] = []
    validator: _Validator | None = None
    for chunk in chunks():
        if validator is None:
            present = set(chunk.columns)
            kept = [
                e
                for e in suite["expectations"]
                if not (
                    e.get("meta", {}).get("optional") and e["kwargs"].get("column") not in present
                )
            ]
            chunked = [i for i, e in enumerate(kept) if e["type"] in CHUNKWISE]
            tallies = {i: _Tally() for i in chunked}
            validator = _Validator(suite["name"])
        rows += len(chunk)
        results = validator.validate(chunk, suite["name"], [kept[i] for i in tallies])
        for i, item in zip(tallies, results, strict=True):
            tallies[i].add(item)
    if validator is None:  # no rows at all: one empty frame stands for the batch
        raise ValueError("run_suite needs at least one chunk (a header without rows)")
    whole = [i for i, e in enumerate(kept) if i not in tallies and e["type"] != ROW_COUNT]
    if whole:
        # Only the columns these expectations name are held in full, and only for them.
        columns = sorted({c for i in whole for c in _named_columns(kept[i]["kwargs"])} & present)
        frame = pd.concat([chunk[columns] for chunk in chunks()], ignore_index=True)
        results = validator.validate(frame, suite["name"], [kept[i] for i in whole])
        del frame
        for i, item in zip(whole, results, strict=True):
            tallies[i] = _Tally()
            tallies[i].add(item)
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
    for i, config in enumerate(kept):
        kwargs = config["kwargs"]
        if config["type"] == ROW_COUNT:
            success, observed = _row_count_success(rows, kwargs), rows
        else:
            success, observed = tallies[i].outcome(float(kwargs.get("mostly", 1.0)))
        if success or kwargs.get("column") in missing:
            continue
        failures.append(
            {
                "expectation": config["type"],
                "column": kwargs.get("column"),
                "kwargs": {k: v for k, v in kwargs.items() if k != "batch_id"},
                "observed": str(observed),
            }
        )
    return ValidationReport(
        dataset=suite["name"], success=not failures, evaluated=len(kept), failures=failures
    )


def dumps_suite(suite: dict) -> bytes:
    """Suite JSON as people should read and edit it."""
    return json.dumps(suite, indent=2, sort_keys=False).encode()
