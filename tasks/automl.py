"""AutoML over the detector catalog: an Optuna search that returns one fitted, picklable detector.

Objectives
- Labels given: the detector (or ensemble) is fitted on part of the search rows and measured on a
  held-back stratified part (two repeated splits, the trial is pruned after the first when it is
  clearly worse than the median); metric "average_precision" (default) or "roc_auc". The labels
  choose where detectors are fitted ("all" rows or only rows labelled "normal"). The winner is
  refitted on all given rows.
- No labels: a label-free criterion, `0.5 * agreement + 0.5 * stability`, where
  agreement = Spearman correlation of the candidate's scores with the rank-averaged scores of a
  prior ensemble of strong, diverse detectors (IForest, INNE, CBLOF, PCA: model consensus, as in
  "model centrality" of Ma, Zhao & Akoglu 2023, restricted to detectors that benchmarks rank high
  so weak detectors do not drag the consensus down), and
  stability = Spearman correlation between the scores of the candidate fitted on two disjoint
  halves of the rows (Perini et al. 2020: a detector whose ranking changes with the sample it was
  fitted on is not to be trusted). It never invents labels. Measured quality: benchmarks/README.md.

Parallel search: `n_workers > 1` starts that many spawned processes, each running
`study.optimize` on one shared RDB study (PostgreSQL or MySQL). SQLite or no storage with
`n_workers > 1` raises InputError: SQLite locks under concurrent writers, and threads would share
2 cores' worth of GIL-bound work for little gain.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
import uuid
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import pandas as pd

from data_checks.errors import InputError
from tasks.detectors import calibrate_threshold, make_detector, make_preprocessor, split_columns
from tasks.search_space import (
    COMBINERS,
    DETECTOR_PARAMS,
    FIT_ON_LABELLED,
    OPTIONAL_MEMBERS,
    PRIOR_ENSEMBLE,
    QUADRATIC_DETECTORS,
    SCALERS,
)

METRICS = ("average_precision", "roc_auc")
DEFAULT_CONTAMINATION = 0.05
MAX_SEARCH_ROWS = 3000  # bounds one trial: the search sees a subsample, the winner all rows
MAX_QUADRATIC_ROWS = 5000  # knn/lof/ocsvm beyond this many rows are too slow for the budget
REFIT_SHARE = 0.2  # share of the time budget kept for refitting the winner on all rows
HOLDOUT_SHARE = 0.3
MIN_LABELLED_ANOMALIES = 4  # fewer cannot be split into fit and held-back parts
LABELLED_SPLITS = 2


# ---------------------------------------------------------------- the fitted model


def _as_frame(X: Any) -> pd.DataFrame:
    """A DataFrame view of X (arrays get columns x0, x1, ...)."""
    if isinstance(X, pd.DataFrame):
        return X
    array = np.asarray(X)
    if array.ndim != 2:
        raise InputError(f"X must be 2-dimensional, got shape {array.shape}")
    return pd.DataFrame(array, columns=[f"x{i}" for i in range(array.shape[1])])


def _finite(scores: np.ndarray) -> np.ndarray:
    """Scores with NaN/inf replaced by fixed finite values (PCA gives inf on constant columns)."""
    return np.nan_to_num(np.asarray(scores, dtype=float), nan=0.0, posinf=1e12, neginf=-1e12)


class ScoreEnsemble:
    """Preprocessing + one or more detectors whose scores combine against training references."""

    def __init__(
        self,
        members: list[tuple[str, dict[str, Any]]],
        scaler: str = "standard",
        combine: str = "rank",
        random_state: int | None = 0,
    ):
        self.members = members
        self.scaler = scaler
        self.combine = combine
        self.random_state = random_state

    def fit(self, X: Any, y: Any = None) -> ScoreEnsemble:
        """Fit the preprocessor and every member; keep each member's training scores."""
        frame = _as_frame(X)
        numeric, categorical = split_columns(frame)
        self.preprocessor_ = make_preprocessor(numeric, categorical, self.scaler).fit(frame)
        matrix = self.preprocessor_.transform(frame)
        self.detectors_ = []
        self.reference_ = []
        for name, params in self.members:
            detector = make_detector(name, params, random_state=self.random_state).fit(matrix)
            self.detectors_.append(detector)
            # Sorted training scores: a fixed reference, so new batches are never rescaled by
            # their own statistics.
            self.reference_.append(np.sort(_finite(detector.decision_scores_)))
        return self

    def member_scores(self, X: Any) -> list[np.ndarray]:
        """Raw scores of every member on X."""
        matrix = self.preprocessor_.transform(_as_frame(X))
        return [_finite(d.decision_function(matrix)) for d in self.detectors_]

    def decision_function(self, X: Any) -> np.ndarray:
        """Anomaly scores, higher = more anomalous; raw for one member, combined otherwise."""
        scores = self.member_scores(X)
        if len(scores) == 1:
            return scores[0]
        return combine_scores(scores, self.reference_, self.combine)


def combine_scores(scores: list[np.ndarray], references: list[np.ndarray], how: str) -> np.ndarray:
    """Mean of member scores mapped through each member's training distribution."""
    parts = []
    for raw, ref in zip(scores, references, strict=True):
        if how == "rank":
            parts.append(np.searchsorted(ref, raw, side="right") / len(ref))
        else:
            median = np.median(ref)
            spread = np.subtract(*np.percentile(ref, [75, 25])) or np.std(ref) or 1.0
            parts.append((raw - median) / spread)
    return np.mean(parts, axis=0)


class AutoDetector:
    """The winner of an AutoML search: score, predict, and explain how it was chosen."""

    def __init__(self, model: ScoreEnsemble, contamination: float):
        self.model = model
        self.contamination = contamination

    def decision_function(self, X: Any) -> np.ndarray:
        """Raw anomaly scores of the chosen model (higher = more anomalous)."""
        return self.model_.decision_function(X)

    def predict(self, X: Any) -> np.ndarray:
        """1 for rows scoring above the calibrated threshold, else 0."""
        return (self.decision_function(X) > self.threshold_).astype(int)

    def __getstate__(self) -> dict[str, Any]:
        # An RDB-backed study holds an engine (and the URL with its password): keep its name only;
        # reload it with optuna.load_study(study_name=model.study_name_, storage=<url>).
        state = dict(self.__dict__)
        study = state.get("study_")
        if study is not None and type(study._storage).__name__ != "InMemoryStorage":
            state["study_"] = None
        return state


# ---------------------------------------------------------------- configurations


@dataclass(frozen=True)
class SearchSettings:
    """What every worker needs to run trials: the data and the fixed choices of this search."""

    X: pd.DataFrame
    y: np.ndarray | None
    metric: str
    random_state: int
    deadline: float  # time.time() after which trials stop fitting
    allow_quadratic: bool
    worker: int = 0
    cache: dict[str, Any] = field(default_factory=dict, compare=False)


def _suggest(trial: Any, name: str, key: str, spec: tuple[Any, ...]) -> Any:
    """One hyper-parameter value from its plain-data spec."""
    label = f"{name}.{key}"
    if spec[0] == "int":
        return trial.suggest_int(label, spec[1], spec[2], log=spec[3])
    if spec[0] == "float":
        return trial.suggest_float(label, spec[1], spec[2], log=spec[3])
    choices = spec[1]
    # Optuna stores categorical choices by position: suggest the index so None/bool/str all fit.
    return choices[trial.suggest_categorical(label, list(range(len(choices))))]


def suggest_config(trial: Any, labelled: bool, allow_quadratic: bool) -> dict[str, Any]:
    """A configuration (detectors, params, scaler, combiner, fit rows) sampled by the trial."""
    optional = [m for m in OPTIONAL_MEMBERS if allow_quadratic or m not in QUADRATIC_DETECTORS]
    singles = [d for d in DETECTOR_PARAMS if allow_quadratic or d not in QUADRATIC_DETECTORS]
    kind = trial.suggest_categorical("kind", ["ensemble", "single"])
    if kind == "single":
        names = [trial.suggest_categorical("detector", singles)]
    else:
        names = list(PRIOR_ENSEMBLE) + [m for m in optional if trial.suggest_int(f"add.{m}", 0, 1)]
    detectors = [
        {"name": n, "params": {k: _suggest(trial, n, k, s) for k, s in DETECTOR_PARAMS[n].items()}}
        for n in names
    ]
    return {
        "detectors": detectors,
        "scaler": trial.suggest_categorical("scaler", SCALERS),
        "combine": trial.suggest_categorical("combine", COMBINERS) if len(names) > 1 else None,
        "fit_on": trial.suggest_categorical("fit_on", FIT_ON_LABELLED) if labelled else "all",
    }


def prior_trial_params(labelled: bool) -> dict[str, Any]:
    """Trial parameters of the prior ensemble with catalog defaults (enqueued as trial 0)."""
    from tasks.detectors import CATALOG

    # MinMax as in ADBench, where the prior was measured (benchmarks/README.md).
    params: dict[str, Any] = {"kind": "ensemble", "scaler": "minmax", "combine": "rank"}
    params.update({f"add.{m}": 0 for m in OPTIONAL_MEMBERS})
    for name in PRIOR_ENSEMBLE:
        for key, spec in DETECTOR_PARAMS[name].items():
            default = CATALOG[name].defaults.get(key, _pyod_default(name, key))
            if spec[0] == "choice":
                default = spec[1].index(default) if default in spec[1] else 0
            params[f"{name}.{key}"] = default
    if labelled:
        params["fit_on"] = "all"
    return params


def _pyod_default(name: str, key: str) -> Any:
    """The PyOD constructor default of one parameter."""
    import inspect

    from tasks.detectors import detector_class

    return inspect.signature(detector_class(name)).parameters[key].default


def describe(config: dict[str, Any]) -> str:
    """Short name of a configuration, e.g. 'iforest' or 'rank(iforest+inne+cblof+pca)'."""
    names = "+".join(d["name"] for d in config["detectors"])
    return names if config["combine"] is None else f"{config['combine']}({names})"


def build_model(config: dict[str, Any], random_state: int) -> ScoreEnsemble:
    """An unfitted ScoreEnsemble for a configuration."""
    return ScoreEnsemble(
        [(d["name"], d["params"]) for d in config["detectors"]],
        scaler=config["scaler"],
        combine=config["combine"] or "rank",
        random_state=random_state,
    )


# ---------------------------------------------------------------- objectives


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation, 0 when either side is constant."""
    from scipy.stats import rankdata

    ra, rb = rankdata(a), rankdata(b)
    if ra.std() == 0 or rb.std() == 0:
        return 0.0
    return float(np.corrcoef(ra, rb)[0, 1])


def _check_time(settings: SearchSettings) -> None:
    """Stop a trial that would run past the search deadline."""
    import optuna

    if time.time() > settings.deadline:
        raise optuna.TrialPruned("time budget spent")


def _fit_scored(
    config: dict[str, Any], settings: SearchSettings, fit_rows: np.ndarray, score_rows: np.ndarray
) -> np.ndarray:
    """Fit a configuration on some rows and score others, checking the deadline per member."""
    X = settings.X
    matrix_fit = matrix_score = None
    scores: list[np.ndarray] = []
    refs: list[np.ndarray] = []
    rows_key = (hashlib.sha1(fit_rows.tobytes()).hexdigest(), len(score_rows), config["scaler"])
    for member in config["detectors"]:
        # Members recur across trials (the prior core, parameter-free detectors): fit each once.
        key = (member["name"], json.dumps(member["params"], sort_keys=True, default=str), rows_key)
        if key not in settings.cache:
            _check_time(settings)
            if matrix_fit is None:
                numeric, categorical = split_columns(X)
                preprocessor = make_preprocessor(numeric, categorical, config["scaler"])
                matrix_fit = preprocessor.fit_transform(X.iloc[fit_rows])
                matrix_score = preprocessor.transform(X.iloc[score_rows])
            detector = make_detector(
                member["name"], member["params"], random_state=settings.random_state
            ).fit(matrix_fit)
            settings.cache[key] = (
                np.sort(_finite(detector.decision_scores_)),
                _finite(detector.decision_function(matrix_score)),
            )
        refs.append(settings.cache[key][0])
        scores.append(settings.cache[key][1])
    if len(scores) == 1:
        return scores[0]
    return combine_scores(scores, refs, config["combine"])


def _label_free_splits(settings: SearchSettings) -> tuple[np.ndarray, np.ndarray]:
    """Two disjoint halves of the search rows, the same for every trial."""
    if "halves" not in settings.cache:
        rows = np.random.RandomState(settings.random_state).permutation(len(settings.X))
        settings.cache["halves"] = (np.sort(rows[::2]), np.sort(rows[1::2]))
    return settings.cache["halves"]


def _prior_consensus(settings: SearchSettings) -> np.ndarray:
    """Rank-averaged scores of the prior ensemble on all search rows (the agreement target)."""
    if "consensus" not in settings.cache:
        first, _ = _label_free_splits(settings)
        every = np.arange(len(settings.X))
        # Not deadline-bound: it is computed once and the search cannot judge anything without it.
        unbounded = replace(settings, deadline=math.inf)
        members = []
        for name in PRIOR_ENSEMBLE:
            single = {"detectors": [{"name": name, "params": {}}], "scaler": "minmax"}
            try:
                members.append(_fit_scored({**single, "combine": None}, unbounded, first, every))
            except ValueError:
                # CBLOF cannot always separate large from small clusters: the others still agree.
                continue
        if not members:
            raise InputError("none of the prior detectors could be fitted on these rows")
        refs = [np.sort(m[first]) for m in members]
        settings.cache["consensus"] = combine_scores(members, refs, "rank")
    return settings.cache["consensus"]


def label_free_score(config: dict[str, Any], settings: SearchSettings) -> dict[str, float]:
    """Agreement with the prior consensus and stability across two halves of the rows."""
    first, second = _label_free_splits(settings)
    every = np.arange(len(settings.X))
    consensus = _prior_consensus(settings)
    scores_first = _fit_scored(config, settings, first, every)
    scores_second = _fit_scored(config, settings, second, every)
    agreement = _spearman(scores_first, consensus)
    stability = _spearman(scores_first, scores_second)
    return {
        "agreement": agreement,
        "stability": stability,
        "value": 0.5 * agreement + 0.5 * stability,
    }


def labelled_splits(y: np.ndarray, random_state: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Stratified (fit rows, held-back rows) pairs over the search rows."""
    from sklearn.model_selection import StratifiedShuffleSplit

    splitter = StratifiedShuffleSplit(
        n_splits=LABELLED_SPLITS, test_size=HOLDOUT_SHARE, random_state=random_state
    )
    return list(splitter.split(np.zeros(len(y)), y))


def _metric(name: str, y: np.ndarray, scores: np.ndarray) -> float:
    """Average precision or ROC-AUC of scores against labels."""
    from sklearn.metrics import average_precision_score, roc_auc_score

    if name == "roc_auc":
        return float(roc_auc_score(y, scores))
    return float(average_precision_score(y, scores))


def _trial_value(value: float) -> float:
    """A trial's value rounded, so float noise (1.0 vs 1.0000000000000002) never picks the best."""
    return round(float(value), 12)


def objective(trial: Any, settings: SearchSettings) -> float:
    """The value of one trial: held-back metric with labels, label-free criterion without."""
    import optuna

    labelled = settings.y is not None
    config = suggest_config(trial, labelled, settings.allow_quadratic)
    if trial.number == 0:
        # The prior ensemble is the fallback answer: it always finishes, even past the deadline.
        settings = replace(settings, deadline=math.inf)
    trial.set_user_attr("config", config)
    trial.set_user_attr("worker", settings.worker)
    if not labelled:
        parts = label_free_score(config, settings)
        trial.set_user_attr("agreement", parts["agreement"])
        trial.set_user_attr("stability", parts["stability"])
        return _trial_value(parts["value"])
    if "splits" not in settings.cache:
        settings.cache["splits"] = labelled_splits(settings.y, settings.random_state)
    values = []
    for step, (fit_rows, held_rows) in enumerate(settings.cache["splits"]):
        if config["fit_on"] == "normal":
            fit_rows = fit_rows[settings.y[fit_rows] == 0]
        scores = _fit_scored(config, settings, fit_rows, held_rows)
        values.append(_metric(settings.metric, settings.y[held_rows], scores))
        trial.report(float(np.mean(values)), step)
        if trial.should_prune():
            raise optuna.TrialPruned()
    return _trial_value(np.mean(values))


# ---------------------------------------------------------------- the search


def _search_rows(n_rows: int, y: np.ndarray | None, random_state: int) -> np.ndarray:
    """Indices of the rows the search works on (all, or a stratified subsample)."""
    if n_rows <= MAX_SEARCH_ROWS:
        return np.arange(n_rows)
    if y is None:
        rows = np.random.RandomState(random_state).choice(n_rows, MAX_SEARCH_ROWS, replace=False)
        return np.sort(rows)
    from sklearn.model_selection import train_test_split

    rows, _ = train_test_split(
        np.arange(n_rows), train_size=MAX_SEARCH_ROWS, stratify=y, random_state=random_state
    )
    return np.sort(rows)


def _make_sampler(random_state: int, parallel: bool) -> Any:
    """Seeded multivariate TPE (constant liar when workers run trials at the same time)."""
    import optuna

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.samplers.TPESampler(
            seed=random_state,
            multivariate=True,
            group=True,
            n_startup_trials=8,
            constant_liar=parallel,
        )


def _pruner() -> Any:
    """Prune labelled trials whose first split is below the median of earlier trials."""
    import optuna

    return optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=0)


def _optimize(
    study: Any,
    settings: SearchSettings,
    n_trials: int | None,
    timeout: float,
    callbacks: list[Callable[..., None]],
) -> None:
    """Run trials on a study until the trial count or the timeout is reached."""
    import optuna

    if n_trials is not None:
        # Caps the total over all workers of a shared study, not each worker's own count.
        callbacks = [*callbacks, optuna.study.MaxTrialsCallback(n_trials, states=None)]
    with warnings.catch_warnings():
        # Detectors warn about small clusters, constant columns and the like; the leaderboard
        # records what failed.
        warnings.simplefilter("ignore")
        study.optimize(
            lambda trial: objective(trial, settings),
            timeout=max(timeout, 0.0),
            callbacks=callbacks,
            catch=(Exception,),
            gc_after_trial=False,
        )


def _worker(
    study_name: str,
    storage: str,
    settings: SearchSettings,
    n_trials: int | None,
    worker_index: int,
) -> int:
    """One spawned process: load the shared study and run trials on it."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    settings = replace(settings, worker=worker_index)
    sampler = _make_sampler(settings.random_state + worker_index, parallel=True)
    study = optuna.load_study(
        study_name=study_name, storage=storage, sampler=sampler, pruner=_pruner()
    )
    # The deadline is wall-clock time shared by all processes, so spawn start-up counts too.
    _optimize(study, settings, n_trials, settings.deadline - time.time(), [])
    return worker_index


def trial_info(trial: Any) -> dict[str, Any]:
    """A flat description of one trial (what the leaderboard and trial_callback get)."""
    config = trial.user_attrs.get("config")
    seconds = (
        (trial.datetime_complete - trial.datetime_start).total_seconds()
        if trial.datetime_complete and trial.datetime_start
        else None
    )
    info = {
        "number": trial.number,
        "detector": describe(config) if config else None,
        "params": (
            {d["name"]: d["params"] for d in config["detectors"]} if config else dict(trial.params)
        ),
        "scaler": config["scaler"] if config else None,
        "fit_on": config["fit_on"] if config else None,
        "value": trial.value,
        "seconds": seconds,
        "state": trial.state.name,
        "worker": trial.user_attrs.get("worker"),
    }
    for key in ("agreement", "stability"):
        if key in trial.user_attrs:
            info[key] = trial.user_attrs[key]
    return info


def _check_inputs(
    X: pd.DataFrame, y: Any, metric: str, n_workers: int, storage: str | None
) -> np.ndarray | None:
    """Validate the arguments; return y as a 0/1 array or None."""
    if len(X) < 20:
        raise InputError(f"AutoML needs at least 20 rows, got {len(X)}")
    if metric not in METRICS:
        raise InputError(f"metric must be one of {METRICS}, got {metric!r}")
    if n_workers < 1:
        raise InputError(f"n_workers must be at least 1, got {n_workers}")
    if n_workers > 1 and (storage is None or storage.startswith("sqlite")):
        raise InputError(
            "n_workers > 1 needs a shared PostgreSQL or MySQL storage URL "
            "(SQLite locks under parallel writers); pass storage=postgresql+psycopg2://..."
        )
    if y is None:
        return None
    labels = np.asarray(y)
    if len(labels) != len(X):
        raise InputError(f"y has {len(labels)} labels for {len(X)} rows")
    if not np.isin(labels, [0, 1]).all():
        raise InputError("y must hold only 0 (normal) and 1 (anomaly)")
    labels = labels.astype(int)
    if (labels == 0).sum() < 4:
        raise InputError("y needs at least 4 rows labelled normal (0)")
    return labels


def fit_best_detector(
    X: Any,
    y: Any = None,
    *,
    time_budget_s: float = 60,
    n_trials: int | None = None,
    random_state: int = 0,
    storage: str | None = None,
    n_workers: int = 1,
    metric: str = "average_precision",
    contamination: float | None = None,
    study_name: str | None = None,
    trial_callback: Callable[[dict[str, Any]], None] | None = None,
) -> AutoDetector:
    """Search detectors, hyper-parameters, scalers and ensembles; return the refitted winner."""
    import optuna

    started = time.time()
    if not time_budget_s > 0:
        raise InputError(f"time budget must be a positive number of seconds, got {time_budget_s}")
    if n_trials is not None and n_trials < 1:
        raise InputError(f"number of trials must be at least 1, got {n_trials}")
    # Failed trials are on the leaderboard (state FAIL); their tracebacks would flood the log.
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    frame = _as_frame(X).reset_index(drop=True)
    labels = _check_inputs(frame, y, metric, n_workers, storage)
    objective_name = "label-free" if labels is None else metric
    if labels is not None and labels.sum() < MIN_LABELLED_ANOMALIES:
        # Too few anomalies for a held-back measurement that means anything: search label-free
        # and say so in best_config_["objective"] (the labels still set the contamination).
        warnings.warn(
            f"only {labels.sum()} labelled anomalies (< {MIN_LABELLED_ANOMALIES}): "
            "searching with the label-free criterion",
            stacklevel=2,
        )
        objective_name = "label-free (too few labelled anomalies)"
        if contamination is None:
            contamination = float(np.clip(labels.mean(), 0.001, 0.49))
        labels = None
    if contamination is None:
        contamination = (
            float(np.clip(labels.mean(), 0.001, 0.49))
            if labels is not None
            else DEFAULT_CONTAMINATION
        )
    rows = _search_rows(len(frame), labels, random_state)
    search_seconds = time_budget_s * (1.0 - REFIT_SHARE)
    settings = SearchSettings(
        X=frame.iloc[rows].reset_index(drop=True),
        y=None if labels is None else labels[rows],
        metric=metric,
        random_state=random_state,
        deadline=started + search_seconds,
        allow_quadratic=len(frame) <= MAX_QUADRATIC_ROWS,
    )

    # Tune: the storage and the study are created once here, before any worker starts, because
    # two processes creating the schema at the same time crash.
    study_name = study_name or f"pynomaly-automl-{uuid.uuid4().hex[:12]}"
    rdb = None if storage is None else optuna.storages.RDBStorage(storage)
    study = optuna.create_study(
        study_name=study_name,
        storage=rdb,
        direction="maximize",
        sampler=_make_sampler(random_state, parallel=n_workers > 1),
        pruner=_pruner(),
        load_if_exists=True,
    )
    if not study.trials:
        # The prior ensemble first: the search starts from the best known default.
        study.enqueue_trial(prior_trial_params(labels is not None), skip_if_exists=True)
    remaining = settings.deadline - time.time()
    if n_workers == 1:
        callbacks = []
        if trial_callback is not None:
            callbacks.append(lambda _study, trial: trial_callback(trial_info(trial)))
        _optimize(study, settings, n_trials, remaining, callbacks)
    else:
        _run_workers(study_name, storage, settings, n_trials, n_workers)
        if trial_callback is not None:
            for trial in study.get_trials(deepcopy=False):
                trial_callback(trial_info(trial))

    # Refit: the best configuration that fits on all rows wins (a few fail on other data).
    completed = [t for t in study.get_trials(deepcopy=False) if t.value is not None]
    completed = [t for t in completed if t.state == optuna.trial.TrialState.COMPLETE]
    if not completed:
        raise InputError(
            f"AutoML finished no trial within {time_budget_s:.0f} s; raise time_budget_s"
        )
    completed.sort(key=lambda t: (-t.value, t.number))
    fit_rows = np.arange(len(frame))
    for trial in completed:
        config = trial.user_attrs["config"]
        rows_used = fit_rows if config["fit_on"] == "all" else fit_rows[labels == 0]
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                model = build_model(config, random_state).fit(frame.iloc[rows_used])
            break
        except Exception:  # noqa: BLE001 - a detector failing on the full rows: take the next
            continue
    else:
        raise InputError("no searched configuration could be fitted on all rows")

    result = AutoDetector(model, contamination)
    result.model_ = model
    result.threshold_ = calibrate_threshold(model.decision_function(frame), contamination)
    result.best_config_ = {
        "detector": describe(config),
        "detectors": config["detectors"],
        "scaler": config["scaler"],
        "combine": config["combine"],
        "fit_on": config["fit_on"],
        "objective": objective_name,
        "value": trial.value,
        "trial": trial.number,
    }
    result.leaderboard_ = pd.DataFrame(
        [trial_info(t) for t in study.get_trials(deepcopy=False)],
        columns=[
            "number",
            "detector",
            "params",
            "scaler",
            "fit_on",
            "value",
            "seconds",
            "state",
            "worker",
        ],
    )
    result.study_ = study
    result.study_name_ = study_name
    result.search_rows_ = len(rows)
    result.seconds_ = time.time() - started
    return result


def _run_workers(
    study_name: str,
    storage: str,
    settings: SearchSettings,
    n_trials: int | None,
    n_workers: int,
) -> None:
    """Run n_workers spawned processes on one shared study and wait for them."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(n_workers, mp_context=context) as pool:
        futures = [
            pool.submit(_worker, study_name, storage, settings, n_trials, index)
            for index in range(n_workers)
        ]
        for future in futures:
            future.result()
