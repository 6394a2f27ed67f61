"""Promotion gate: load any registered detector as a scorer, check it, compare it with the champion.

Score convention, for every model the gate touches: a score is a raw float, higher = more
anomalous, and a row is an anomaly when score > threshold.
- Pynomaly pyfunc models and PyOD estimators: `decision_function` as is (PyOD: higher = outlier);
  PyOD's own `threshold_` is used when the model carries one.
- scikit-learn outlier detectors (IsolationForest, OneClassSVM, LocalOutlierFactor(novelty=True),
  EllipticEnvelope): their `decision_function` / `score_samples` are higher = *normal*, so the
  score is the negated `decision_function` and the threshold is 0 (exactly where sklearn's
  `predict` says -1); with only `score_samples` the score is its negation and the threshold is
  calibrated on the evaluation data.
- Other pyfunc models: `predict` must return one score per row (a `score` column, a single
  numeric column, or a 1-D array); the threshold is the version tag `threshold`, else calibrated.

Decisions: `promote` (every check passed), `keep` (nothing is broken but the evidence is not
enough to replace the champion without a person: label-free disagreement with the champion),
`reject` (a check failed: worse metrics, alert rate, unstable ranking, latency).

Analyst feedback (rows of the model's scored batches labelled 1/0, handed in by the flow as
plain data): from MIN_FEEDBACK_ANOMALIES labelled anomalies on, the challenger's average
precision on those rows is compared with the champion's, and it decides over label-free doubts.
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import mlflow
import numpy as np
import pandas as pd
from mlflow.models import Model

from pynomaly.errors import InputError
from registry.model import calibrate_threshold
from registry.versions import client

PROMOTE, KEEP, REJECT = "promote", "keep", "reject"
DEFAULT_EXPECTED_SHARE = 0.05
NUMERIC_TYPES = {"double", "float", "long", "integer"}
# Below this many rows a label-free statistic says little; the gate notes it in the reasons.
MIN_EVAL_ROWS = 30
# Analyst feedback judges a challenger once the model's batches hold this many rows labelled 1.
MIN_FEEDBACK_ANOMALIES = 5


@dataclass(frozen=True)
class GateConfig:
    """Thresholds of the gate; `margin` comes from settings.gate_margin."""

    margin: float = 0.02
    alert_rate_factor: float = 2.0  # alert rate within [expected / f, expected * f] (+ 3 sigma)
    min_stability: float = 0.9  # Spearman of scores on the rows vs on slightly jittered rows
    jitter: float = 0.01  # noise added per numeric column, as a share of its standard deviation
    min_rank_correlation: float = 0.5  # Spearman of challenger vs champion scores
    # share of the champion's top-k rows the challenger also ranks top
    min_topk_overlap: float = 0.3
    latency_budget_ms_per_1k: float = 2000.0
    resamples: int = 3
    seed: int = 0


@dataclass
class Scorer:
    """A loaded model that gives raw scores (higher = more anomalous) for a frame."""

    score_fn: Callable[[pd.DataFrame], np.ndarray]
    columns: list[str]
    input_types: dict[str, str]
    threshold: float | None
    convention: str


@dataclass
class FeedbackScores:
    """Analyst labels (1 = anomaly) of scored rows with both models' scores on those rows."""

    labels: np.ndarray
    challenger: np.ndarray
    champion: np.ndarray | None = None
    left_out: int = 0  # labelled rows not judged on (trained on, or features not found)


@dataclass
class FeedbackRows:
    """Labelled rows of the model's scored batches: features, labels, rows left out."""

    features: pd.DataFrame
    labels: np.ndarray
    left_out: int = 0


@dataclass
class GateDecision:
    """The gate's verdict on a challenger, with the reasons a person can read."""

    decision: str
    reasons: list[str]
    metrics: dict[str, float] = field(default_factory=dict)
    labelled: bool = False
    champion_version: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def tags(self) -> dict[str, str]:
        """MLflow version tags recording this decision."""
        return {
            "gate.decision": self.decision,
            "gate.reasons": json.dumps(self.reasons),
            "gate.metrics": json.dumps({k: round(v, 6) for k, v in self.metrics.items()}),
            "gate.labelled": str(self.labelled).lower(),
            "gate.champion_version": str(self.champion_version or ""),  # versions count from 1
        }


# --------------------------------------------------------------------------- loading


def _final_step(estimator: Any) -> Any:
    steps = getattr(estimator, "steps", None)
    return steps[-1][1] if steps else estimator


def sklearn_scorer(
    estimator: Any,
) -> tuple[Callable[[pd.DataFrame], np.ndarray], float | None, str]:
    """Score function, threshold and convention text for a scikit-learn or PyOD estimator."""
    final = _final_step(estimator)
    name = type(final).__name__
    if type(final).__module__.startswith("pyod."):
        threshold = getattr(final, "threshold_", None)
        return (
            lambda x: estimator.decision_function(x),
            None if threshold is None else float(threshold),
            f"PyOD {name}.decision_function (higher = anomalous)",
        )
    if getattr(final, "novelty", True) is False:
        raise InputError(
            f"{name} was fitted with novelty=False and cannot score new rows; "
            "fit it with novelty=True"
        )
    if hasattr(final, "decision_function") and hasattr(final, "offset_"):
        return (
            lambda x: -np.asarray(estimator.decision_function(x), float),
            0.0,
            f"-{name}.decision_function (sklearn is higher = normal; threshold 0 = its predict)",
        )
    if hasattr(final, "score_samples"):
        return (
            lambda x: -np.asarray(estimator.score_samples(x), float),
            None,
            f"-{name}.score_samples (sklearn is higher = normal)",
        )
    if hasattr(final, "decision_function"):
        return (
            lambda x: estimator.decision_function(x),
            None,
            f"{name}.decision_function (taken as higher = anomalous)",
        )
    raise InputError(
        f"{name} has neither decision_function nor score_samples: it cannot give anomaly scores"
    )


def _pyfunc_scores(output: Any) -> np.ndarray:
    if isinstance(output, pd.DataFrame):
        if "score" in output.columns:
            return np.asarray(output["score"], float)
        if len(output.columns) == 1 and pd.api.types.is_numeric_dtype(output.iloc[:, 0]):
            return np.asarray(output.iloc[:, 0], float)
        raise InputError(
            "the model's predict returns columns "
            f"{list(output.columns)}; it must return one score per row "
            "(a 'score' column or a single numeric column)"
        )
    values = np.asarray(output)
    if values.ndim == 2 and values.shape[1] == 1:
        values = values[:, 0]
    if values.ndim != 1:
        raise InputError(
            f"the model's predict returns shape {values.shape}; it must return one score per row"
        )
    try:
        return values.astype(float)
    except (TypeError, ValueError) as exc:
        raise InputError("the model's predict returns values that are not numbers") from exc


def load_scorer(model_uri: str, tracking_uri: str, tags: dict[str, str] | None = None) -> Scorer:
    """Load a registered model (sklearn, PyOD or pyfunc flavour) as a Scorer."""
    # Fetched with explicit URIs into a folder removed once loaded (the model is in memory):
    # MLflow resolves a models:/ URI against the process-wide registry URI only, which library
    # code never sets.
    with tempfile.TemporaryDirectory(prefix="pynomaly-model-") as folder:
        try:
            location = model_uri
            if model_uri.startswith("models:/"):
                name, _, version = model_uri.removeprefix("models:/").rpartition("/")
                location = client(tracking_uri).get_model_version_download_uri(name, version)
            local = mlflow.artifacts.download_artifacts(
                artifact_uri=location, dst_path=folder, tracking_uri=tracking_uri
            )
            info = Model.load(local)  # its MLmodel file: flavours and signature
        except Exception as exc:
            raise InputError(f"{model_uri}: cannot read the logged model ({exc})") from exc
        return _scorer_from(local, info, model_uri, tags or {})


def _scorer_from(local: str, info: Any, model_uri: str, tags: dict[str, str]) -> Scorer:
    """The Scorer of a model downloaded to `local` (MLmodel `info`)."""
    schema = info.get_input_schema()
    named = schema is not None and schema.has_input_names()
    columns = list(schema.input_names()) if named else []
    types = {c.name: str(c.type) for c in schema.inputs} if named else {}
    tagged = tags.get("threshold")
    threshold: float | None = float(tagged) if tagged not in (None, "") else None

    if "sklearn" in info.flavors:
        estimator = mlflow.sklearn.load_model(local)
        score_fn, own_threshold, convention = sklearn_scorer(estimator)
        if not columns:
            names = getattr(estimator, "feature_names_in_", None)
            if names is None:
                raise InputError(
                    f"{model_uri}: the model has no input signature and no feature names; "
                    "log it with a signature (mlflow.models.infer_signature)"
                )
            columns = [str(n) for n in names]
            types = {c: "double" for c in columns}
        return Scorer(
            score_fn=lambda x: np.asarray(score_fn(x[columns]), float),
            columns=columns,
            input_types=types,
            threshold=threshold if threshold is not None else own_threshold,
            convention=convention,
        )

    model = mlflow.pyfunc.load_model(local)
    if not columns:
        raise InputError(
            f"{model_uri}: the model has no input signature; log it with a signature "
            "(mlflow.models.infer_signature on a sample of its input)"
        )
    try:
        inner = model.unwrap_python_model()
    except Exception:  # not a PythonModel (e.g. another flavour's pyfunc loader)
        inner = None
    if type(inner).__name__ == "DetectorModel":
        threshold = float(inner.threshold)
    return Scorer(
        score_fn=lambda x: _pyfunc_scores(model.predict(x[columns])),
        columns=columns,
        input_types=types,
        threshold=threshold,
        convention="pyfunc predict score (higher = anomalous)",
    )


# --------------------------------------------------------------------------- interface


def check_interface(scorer: Scorer, frame: pd.DataFrame, where: str) -> None:
    """The model's signature must fit the data: every input column present, numbers as numbers."""
    missing = [c for c in scorer.columns if c not in frame.columns]
    if missing:
        raise InputError(
            f"the model's signature does not fit {where}: it needs column(s) "
            f"{', '.join(missing)} which the data lacks (data has: "
            f"{', '.join(map(str, frame.columns[:12]))}{'…' if len(frame.columns) > 12 else ''})"
        )
    for col in scorer.columns:
        expected = scorer.input_types.get(col, "")
        if expected in NUMERIC_TYPES and not pd.api.types.is_numeric_dtype(frame[col]):
            raise InputError(
                f"the model's signature does not fit {where}: column {col!r} holds text, "
                f"the model expects {expected}"
            )


def score_checked(scorer: Scorer, frame: pd.DataFrame, where: str) -> np.ndarray:
    """The scores of `frame`, after checking it fits the model's signature."""
    check_interface(scorer, frame, where)
    return score_frame(scorer, frame)[0]


def score_frame(scorer: Scorer, frame: pd.DataFrame) -> tuple[np.ndarray, float]:
    """One finite score per row and the scoring time in ms per 1000 rows."""
    started = time.perf_counter()
    try:
        scores = scorer.score_fn(frame)
    except InputError:
        raise
    except Exception as exc:
        raise InputError(
            f"the model failed to score the evaluation data: {type(exc).__name__}: {exc}"
        ) from exc
    elapsed = time.perf_counter() - started
    scores = np.asarray(scores, float).reshape(-1)
    if len(scores) != len(frame):
        raise InputError(f"the model returned {len(scores)} scores for {len(frame)} rows")
    bad = ~np.isfinite(scores)
    if bad.any():
        raise InputError(
            f"the model returned a non-finite score for row {int(np.flatnonzero(bad)[0]) + 1}"
        )
    if len(frame) > 10 and set(np.unique(scores)) <= {-1.0, 0.0, 1.0}:
        raise InputError(
            "the model returns labels (-1/0/1), not scores; register a model whose output is "
            "a continuous anomaly score (e.g. decision_function)"
        )
    return scores, 1000.0 * elapsed * 1000.0 / max(len(frame), 1)


# --------------------------------------------------------------------------- the gate


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation, 0 where it is undefined (constant scores)."""
    from scipy.stats import spearmanr

    rho = float(spearmanr(a, b).statistic)
    return 0.0 if np.isnan(rho) else rho


def alert_bounds(expected: float, rows: int, factor: float) -> tuple[float, float]:
    """Accepted alert-rate range: a factor around the expected share, widened by 3 sigma."""
    sigma = float(np.sqrt(expected * (1 - expected) / max(rows, 1)))
    return max(0.0, expected / factor - 3 * sigma), min(1.0, expected * factor + 3 * sigma)


def jitter_stability(
    scorer: Scorer, frame: pd.DataFrame, resamples: int, jitter: float, seed: int
) -> float:
    """Lowest Spearman correlation of the scores with scores of jittered copies of the rows.

    A fixed model gives fixed scores, so stability is measured under small input noise: a
    detector whose ranking flips under 1% noise is not one to trust with a threshold.
    """
    rows = frame.sample(n=min(len(frame), 2000), random_state=seed) if len(frame) > 2000 else frame
    base, _ = score_frame(scorer, rows)
    rng = np.random.default_rng(seed)
    numeric = [c for c in scorer.columns if pd.api.types.is_numeric_dtype(rows[c])]
    worst = 1.0
    for _ in range(resamples):
        noisy = rows.copy()
        for col in numeric:
            std = float(np.nanstd(noisy[col].to_numpy(float))) or 1.0
            noisy[col] = noisy[col] + rng.normal(0, jitter * std, len(noisy))
        worst = min(worst, _spearman(base, score_frame(scorer, noisy)[0]))
    return worst


def agreement(challenger: np.ndarray, champion: np.ndarray, k: int) -> tuple[float, float]:
    """Spearman rank correlation and top-k overlap of two score vectors on the same rows."""
    k = max(1, min(k, len(challenger)))
    top_ch = set(np.argsort(-challenger, kind="stable")[:k])
    top_cp = set(np.argsort(-champion, kind="stable")[:k])
    return _spearman(challenger, champion), len(top_ch & top_cp) / k


def label_metrics(
    labels: np.ndarray, challenger: np.ndarray, champion: np.ndarray | None, prefix: str = ""
) -> dict[str, float]:
    """Average precision and ROC-AUC of the challenger's (and champion's) scores on labels."""
    from sklearn.metrics import average_precision_score, roc_auc_score

    return {
        f"{who}.{prefix}{key}": float(fn(labels, scores))
        for key, fn in (("average_precision", average_precision_score), ("roc_auc", roc_auc_score))
        for who, scores in (("challenger", challenger), ("champion", champion))
        if scores is not None
    }


def decide(
    challenger_scores: np.ndarray,
    challenger_threshold: float,
    *,
    champion_scores: np.ndarray | None = None,
    labels: np.ndarray | None = None,
    expected_share: float = DEFAULT_EXPECTED_SHARE,
    latency_ms_per_1k: float = 0.0,
    deterministic: bool = True,
    stability: float | None = None,
    champion_version: int | None = None,
    config: GateConfig | None = None,
    feedback: FeedbackScores | None = None,
) -> GateDecision:
    """Compare a challenger with the champion on the same rows and decide promote/keep/reject
    (analyst feedback, once there is enough, overrules label-free doubts: see the module doc)."""
    config = config or GateConfig()
    failed: list[str] = []
    soft: list[str] = []
    passed: list[str] = []
    metrics: dict[str, float] = {
        "rows": float(len(challenger_scores)),
        "latency_ms_per_1k": latency_ms_per_1k,
    }
    on_feedback, feedback_ok, feedback_text = (
        judge_feedback(feedback, config.margin, metrics)
        if feedback is not None
        else (False, True, "")
    )

    def check(ok: bool, text: str, hard: bool = True) -> None:
        if not ok and not hard and on_feedback:
            passed.append(f"{text}: not held against it, analyst feedback decides")
            return
        (passed if ok else failed if hard else soft).append(text)

    check(
        deterministic,
        "scores are reproducible" if deterministic else "scoring the same rows twice differs",
    )
    check(
        latency_ms_per_1k <= config.latency_budget_ms_per_1k,
        f"latency {latency_ms_per_1k:.1f} ms/1k rows (budget {config.latency_budget_ms_per_1k:g})",
    )
    if feedback is not None:
        check(feedback_ok, feedback_text)

    if labels is not None:
        metrics.update(label_metrics(np.asarray(labels, int), challenger_scores, champion_scores))
        for key in ("average_precision", "roc_auc"):
            mine = metrics[f"challenger.{key}"]
            if champion_scores is None:
                passed.append(f"{key} {mine:.4f} (no champion to compare)")
                continue
            theirs = metrics[f"champion.{key}"]
            check(
                mine >= theirs - config.margin,
                f"{key} {mine:.4f} vs champion {theirs:.4f} (allowed drop {config.margin:g})",
            )
    else:
        rows = len(challenger_scores)
        rate = float((challenger_scores > challenger_threshold).mean())
        low, high = alert_bounds(expected_share, rows, config.alert_rate_factor)
        metrics.update({"alert_rate": rate, "alert_rate_low": low, "alert_rate_high": high})
        check(
            low <= rate <= high,
            f"alert rate {rate:.3f} within [{low:.3f}, {high:.3f}] "
            f"(expected share {expected_share:g})",
        )
        if stability is not None:
            metrics["stability"] = stability
            check(
                stability >= config.min_stability,
                f"score ranking stable under {config.jitter:g} jitter: Spearman {stability:.3f} "
                f"(floor {config.min_stability:g})",
            )
        if rows < MIN_EVAL_ROWS and not on_feedback:
            soft.append(f"only {rows} evaluation rows: label-free checks are weak")
        if champion_scores is not None:
            k = max(1, round(expected_share * rows))
            rho, overlap = agreement(challenger_scores, champion_scores, k)
            metrics.update({"rank_correlation": rho, "topk_overlap": overlap, "topk": float(k)})
            check(
                rho >= config.min_rank_correlation,
                f"rank correlation with champion {rho:.3f} (floor {config.min_rank_correlation:g})",
                hard=False,
            )
            check(
                overlap >= config.min_topk_overlap,
                f"top-{k} overlap with champion {overlap:.2f} (floor {config.min_topk_overlap:g})",
                hard=False,
            )
        else:
            passed.append("no champion to compare with")

    decision = REJECT if failed else KEEP if soft else PROMOTE
    reasons = [f"failed: {t}" for t in failed] + [f"needs review: {t}" for t in soft]
    reasons += [f"ok: {t}" for t in passed]
    return GateDecision(
        decision=decision,
        reasons=reasons,
        metrics=metrics,
        labelled=labels is not None or on_feedback,
        champion_version=champion_version,
    )


def judge_feedback(
    feedback: FeedbackScores, margin: float, metrics: dict[str, float]
) -> tuple[bool, bool, str]:
    """(judged on labels, passed, reason): once there are enough analyst labels, the challenger's
    average precision on them may drop at most `margin` below the champion's."""
    labels = np.asarray(feedback.labels, int)
    anomalies, normals = int(labels.sum()), int((labels == 0).sum())
    metrics.update(
        {
            "feedback.rows": float(len(labels)),
            "feedback.anomalies": float(anomalies),
            "feedback.left_out": float(feedback.left_out),
        }
    )
    left = f"; {feedback.left_out} labelled row(s) left out" if feedback.left_out else ""
    if anomalies < MIN_FEEDBACK_ANOMALIES or normals < 2:
        return (
            False,
            True,
            f"analyst feedback: {anomalies} labelled anomalies and {normals} normal rows usable "
            f"(judging needs {MIN_FEEDBACK_ANOMALIES} and 2{left}): not judged on labels yet",
        )
    metrics.update(label_metrics(labels, feedback.challenger, feedback.champion, "feedback_"))
    mine = metrics["challenger.feedback_average_precision"]
    what = f"on {len(labels)} labelled rows ({anomalies} anomalies{left})"
    if feedback.champion is None:
        return True, True, f"analyst feedback: average precision {mine:.4f} {what}, no champion"
    theirs = metrics["champion.feedback_average_precision"]
    return (
        True,
        mine >= theirs - margin,
        f"analyst feedback: average precision {mine:.4f} vs champion {theirs:.4f} {what} "
        f"(allowed drop {margin:g})",
    )


# --------------------------------------------------------------------------- one evaluation


@dataclass
class Evaluation:
    """The gate's decision with what it needed: scores, threshold and where it came from."""

    decision: GateDecision
    threshold: float
    threshold_source: str
    convention: str


def holdout_rows(
    frame: pd.DataFrame, label_column: str, random_state: int, share: float
) -> pd.DataFrame:
    """The labelled hold-out rows a platform training run did not fit on (same split as train)."""
    from sklearn.model_selection import train_test_split

    return train_test_split(
        frame, test_size=share, stratify=frame[label_column], random_state=random_state
    )[1]


def _deterministic(scorer: Scorer, frame: pd.DataFrame, scores: np.ndarray) -> bool:
    head = frame.head(200)
    again, _ = score_frame(scorer, head)
    return bool(np.allclose(again, scores[: len(head)], rtol=1e-6, atol=1e-9))


def evaluate_version(
    challenger: Scorer,
    frame: pd.DataFrame,
    labels: np.ndarray | None,
    *,
    where: str,
    expected_share: float,
    champion: Scorer | None = None,
    champion_version: int | None = None,
    config: GateConfig | None = None,
    feedback: FeedbackRows | None = None,
) -> Evaluation:
    """Check the challenger's interface on the data, score it and the champion, decide.

    `feedback` (labelled rows of the model's scored batches) is scored by both models too.
    """
    config = config or GateConfig()
    check_interface(challenger, frame, where)
    scores, latency = score_frame(challenger, frame)
    threshold, source = challenger.threshold, "model"
    if threshold is None:
        threshold = calibrate_threshold(scores, expected_share)
        source = f"calibrated on {where} at expected share {expected_share:g}"
    champion_scores = None if champion is None else score_checked(champion, frame, where)
    decision = decide(
        scores,
        threshold,
        champion_scores=champion_scores,
        labels=labels,
        expected_share=expected_share,
        latency_ms_per_1k=latency,
        deterministic=_deterministic(challenger, frame, scores),
        stability=None
        if labels is not None
        else jitter_stability(challenger, frame, config.resamples, config.jitter, config.seed),
        champion_version=champion_version,
        config=config,
        feedback=None if feedback is None else score_feedback(feedback, challenger, champion),
    )
    decision.metrics["threshold"] = threshold
    return Evaluation(decision, threshold, source, challenger.convention)


def score_feedback(
    feedback: FeedbackRows, challenger: Scorer, champion: Scorer | None
) -> FeedbackScores:
    """Both models' scores on the labelled feedback rows."""
    labels = np.asarray(feedback.labels, int)
    if feedback.features.empty:
        return FeedbackScores(labels, np.zeros(0), None, feedback.left_out)
    where = "the rows analysts labelled"
    try:
        mine = score_checked(challenger, feedback.features, where)
        theirs = None if champion is None else score_checked(champion, feedback.features, where)
    except InputError:
        # Rows of older batches may not fit a model's signature: they cannot judge it, and the
        # model is judged on its evaluation data as before (the reason counts them left out).
        return FeedbackScores(labels[:0], np.zeros(0), None, feedback.left_out + len(labels))
    return FeedbackScores(labels, mine, theirs, feedback.left_out)
