"""The promotion gate's decisions with and without labels, and the retrain limits."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pytest

from pynomaly.errors import InputError
from registry.gate import (
    KEEP,
    PROMOTE,
    REJECT,
    GateConfig,
    Scorer,
    check_interface,
    decide,
    score_frame,
    sklearn_scorer,
)
from registry.promotion import retrain_allowed


def labelled_scores(seed: int = 0, n: int = 400, share: float = 0.1) -> tuple[np.ndarray, ...]:
    """Labels and two score vectors: a good detector and a weaker one."""
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < share).astype(int)
    good = rng.normal(size=n) + 3.0 * y
    weak = rng.normal(size=n) + 0.8 * y
    return y, good, weak


def test_labels_keep_a_better_champion():
    y, good, weak = labelled_scores()
    decision = decide(weak, 1.0, champion_scores=good, labels=y, champion_version=1)
    assert decision.decision == REJECT
    assert decision.labelled
    assert any(r.startswith("failed: average_precision") for r in decision.reasons)
    assert decision.metrics["champion.roc_auc"] > decision.metrics["challenger.roc_auc"]
    assert decision.tags()["gate.decision"] == "reject"


def test_labels_promote_within_the_margin():
    y, good, _ = labelled_scores()
    slightly_worse = good + np.random.default_rng(1).normal(0, 0.05, len(good))
    decision = decide(
        slightly_worse, 1.0, champion_scores=good, labels=y, config=GateConfig(margin=0.02)
    )
    assert decision.decision == PROMOTE, decision.reasons


def test_labels_margin_is_configurable():
    y, good, weak = labelled_scores()
    assert (
        decide(weak, 1.0, champion_scores=good, labels=y, config=GateConfig(margin=1.0)).decision
        == PROMOTE
    )


def test_label_free_promotes_an_agreeing_challenger():
    rng = np.random.default_rng(2)
    champion = rng.normal(size=500)
    challenger = champion + rng.normal(0, 0.1, 500)
    threshold = float(np.quantile(challenger, 0.95))
    decision = decide(
        challenger, threshold, champion_scores=champion, expected_share=0.05, stability=0.99
    )
    assert decision.decision == PROMOTE, decision.reasons
    assert decision.metrics["rank_correlation"] > 0.9
    assert not decision.labelled


def test_label_free_rejects_a_wild_alert_rate():
    rng = np.random.default_rng(3)
    scores = rng.normal(size=500)
    decision = decide(scores, 0.0, champion_scores=scores, expected_share=0.05, stability=1.0)
    assert decision.decision == REJECT
    assert any("alert rate" in r and r.startswith("failed") for r in decision.reasons)


def test_label_free_disagreement_needs_a_person():
    rng = np.random.default_rng(4)
    challenger, champion = rng.normal(size=500), rng.normal(size=500)
    threshold = float(np.quantile(challenger, 0.95))
    decision = decide(
        challenger, threshold, champion_scores=champion, expected_share=0.05, stability=1.0
    )
    assert decision.decision == KEEP
    assert any(r.startswith("needs review: rank correlation") for r in decision.reasons)


def test_label_free_rejects_unstable_or_slow_scores():
    rng = np.random.default_rng(5)
    scores = rng.normal(size=500)
    threshold = float(np.quantile(scores, 0.95))
    assert decide(scores, threshold, stability=0.3).decision == REJECT
    slow = decide(scores, threshold, stability=1.0, latency_ms_per_1k=10_000.0)
    assert slow.decision == REJECT
    assert any(r.startswith("failed: latency") for r in slow.reasons)


def test_sklearn_scores_are_negated_so_higher_is_anomalous():
    from sklearn.ensemble import IsolationForest

    rng = np.random.default_rng(6)
    x = pd.DataFrame(rng.normal(size=(300, 3)), columns=["a", "b", "c"])
    outlier = pd.DataFrame([[8.0, 8.0, 8.0]], columns=["a", "b", "c"])
    model = IsolationForest(random_state=0, contamination=0.05).fit(x)
    score_fn, threshold, convention = sklearn_scorer(model)
    assert threshold == 0.0 and convention.startswith("-IsolationForest")
    scores = np.asarray(score_fn(pd.concat([x, outlier])))
    assert scores[-1] == scores.max()
    # threshold 0 flags exactly what sklearn's predict calls an outlier
    assert ((scores[:-1] > 0) == (model.predict(x) == -1)).all()


def test_interface_errors_name_the_missing_column():
    scorer = Scorer(
        lambda f: np.zeros(len(f)), ["a", "zz"], {"a": "double", "zz": "double"}, None, ""
    )
    with pytest.raises(InputError, match="zz"):
        check_interface(scorer, pd.DataFrame({"a": [1.0]}), "data.csv")


def test_labels_instead_of_scores_are_refused():
    scorer = Scorer(lambda f: np.where(f["a"] > 0, 1, -1), ["a"], {"a": "double"}, None, "")
    frame = pd.DataFrame({"a": np.linspace(-1, 1, 50)})
    with pytest.raises(InputError, match="labels"):
        score_frame(scorer, frame)


def test_non_finite_scores_are_refused():
    scorer = Scorer(lambda f: np.r_[np.ones(len(f) - 1), np.nan], ["a"], {"a": "double"}, None, "")
    with pytest.raises(InputError, match="non-finite score for row 20"):
        score_frame(scorer, pd.DataFrame({"a": np.arange(20.0)}))


def test_retrain_cooldown_and_daily_cap():
    now = datetime(2026, 1, 2, 12, tzinfo=UTC)
    at = lambda hours: {"at": (now - timedelta(hours=hours)).isoformat()}  # noqa: E731
    assert retrain_allowed([], now, 6, 2) == (True, "allowed")
    ok, why = retrain_allowed([at(1)], now, 6, 2)
    assert not ok and "cooldown" in why
    ok, why = retrain_allowed([at(20), at(10)], now, 6, 2)
    assert not ok and "cap 2" in why
    assert retrain_allowed([at(30), at(10)], now, 6, 2)[0]


def test_failed_retrain_holds_no_cooldown_but_counts_against_the_cap():
    now = datetime(2026, 1, 2, 12, tzinfo=UTC)

    def at(hours: float, status: str) -> dict:
        return {"at": (now - timedelta(hours=hours)).isoformat(), "status": status}

    assert retrain_allowed([at(1, "failed")], now, 6, 2) == (True, "allowed")
    ok, why = retrain_allowed([at(1, "started")], now, 6, 2)
    assert not ok and "cooldown" in why
    ok, why = retrain_allowed([at(2, "failed"), at(1, "failed")], now, 6, 2)
    assert not ok and "cap 2" in why
    # Skipped for want of new data: no retrain happened, nothing is held
    assert retrain_allowed([at(2, "skipped"), at(1, "skipped")], now, 6, 2)[0]
