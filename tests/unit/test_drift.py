"""Drift is found on an injected shift and not on a fresh sample of the same distribution."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from tasks.drift import DriftResult, detect_drift, population_stability, score_drift

COLUMNS = [f"f{i}" for i in range(6)]


def sample(rng: np.random.Generator, n: int, shift: float = 0.0) -> pd.DataFrame:
    frame = pd.DataFrame(rng.normal(size=(n, len(COLUMNS))), columns=COLUMNS)
    frame[COLUMNS[:4]] += shift
    frame["kind"] = rng.choice(["a", "b", "c"], n)
    return frame


@pytest.fixture(scope="module")
def frames() -> dict[str, pd.DataFrame]:
    rng = np.random.default_rng(0)
    return {
        "reference": sample(rng, 500),
        "fresh": sample(rng, 300),
        "shifted": sample(rng, 300, shift=1.0),
    }


def scores_of(frame: pd.DataFrame) -> np.ndarray:
    return np.abs(frame[COLUMNS].to_numpy()).sum(axis=1)


def drift_against_reference(
    frames: dict[str, pd.DataFrame], current: str
) -> tuple[DriftResult, str]:
    """detect_drift of the reference frame vs `frames[current]`, columns and scores."""
    return detect_drift(
        frames["reference"],
        frames[current],
        COLUMNS + ["kind"],
        drift_threshold=0.5,
        reference_scores=scores_of(frames["reference"]),
        current_scores=scores_of(frames[current]),
    )


def test_no_drift_on_a_fresh_sample(frames):
    result, html = drift_against_reference(frames, "fresh")
    assert not result.drift_detected
    assert result.drift_share < 0.5
    assert not result.score_drift["drifted"]
    assert set(result.columns) == set(COLUMNS + ["kind"])
    assert "<html" in html.lower()


def test_drift_on_an_injected_shift(frames):
    result, _ = drift_against_reference(frames, "shifted")
    assert result.drift_detected
    assert {c for c, r in result.columns.items() if r["drifted"]} >= set(COLUMNS[:4])
    assert not result.columns["kind"]["drifted"]
    assert result.drift_share == pytest.approx(result.drifted_columns / 7)
    assert result.score_drift["drifted"] and result.score_drift["psi"] > 0.2


def test_psi_is_zero_for_the_same_sample_and_grows_with_shift():
    rng = np.random.default_rng(1)
    ref = rng.normal(size=2000)
    assert population_stability(ref, ref) == pytest.approx(0.0, abs=1e-9)
    assert population_stability(ref, ref + 0.5) < population_stability(ref, ref + 2.0)
    same = score_drift(ref, rng.normal(size=2000))
    assert not same["drifted"] and same["psi"] < 0.05


def test_rows_compared_names_a_sampled_side_and_its_size():
    from tasks.drift import rows_compared

    result = {
        "reference_rows": 2_000,
        "reference_sample_rows": 2_000,
        "current_rows": 4_000_000,
        "current_sample_rows": 100_000,
    }
    assert rows_compared(result) == "training 2,000, batch 100,000 of 4,000,000 (sampled)"
