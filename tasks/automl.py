"""AutoML: choose, fit and return one picklable detector, with or without labels.

Three paths, by what the user has (measured under leave-one-dataset-out: benchmarks/README.md):
- No labels: meta-learned selection (tasks/metaselect.py, after MetaOD). The label-free
  meta-features of the data go through the shipped meta-model, which ranks the configurations of
  search_space.META_CONFIGS; the members of the top META_TOP_K are pooled into one robust
  z-score ensemble and fitted directly. No per-dataset search runs: a label-free search criterion
  added nothing over the default under leave-one-dataset-out, so the time budget is not spent.
- Labels with at least MIN_LABELLED_ANOMALIES anomalies: an Optuna search over labelled models
  (a gradient-boosted classifier, the classifier with detector scores as extra features (XGBOD),
  or the label-free choice fitted on the rows labelled normal), each judged by stratified
  cross-validated average precision (or ROC-AUC) on the given rows only. The defaults of each
  kind are the first trials; the winner is refitted on all rows.
- Fewer labelled anomalies: the label-free choice, fitted on the rows not labelled anomalous
  (semi-supervised: the known anomalies are kept out of what "normal" is learned from).

Parallel search: `n_workers > 1` starts that many spawned processes, each running
`study.optimize` on one shared RDB study (PostgreSQL or MySQL). With `dask` (a scheduler address
or 'local') the same loops run as tasks on Dask workers (one per worker thread unless
`n_workers > 1`), sharing an RDB study or Optuna's journal file (a storage that is a file path,
for workers on one machine). SQLite or no storage with parallel workers raises InputError:
SQLite locks under concurrent writers.
"""

from __future__ import annotations

import math
import time
import uuid
import warnings
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import pandas as pd

from pynomaly.errors import InputError
from registry.model import calibrate_threshold
from tasks.detectors import DEFAULT_CONTAMINATION, make_preprocessor
from tasks.search_space import (
    CLASSIFIER_DEFAULTS,
    CLASSIFIER_PARAMS,
    LABELLED_KINDS,
    META_CONFIGS,
    META_MEMBERS,
    META_TOP_K,
    XGBOD_MEMBERS,
)
from tasks.supervised import ClassifierScorer, XGBODScorer, _finite, fit_member

METRICS = ("average_precision", "roc_auc")
MAX_SEARCH_ROWS = 3000  # bounds one trial: the search sees a subsample, the winner all rows
REFIT_SHARE = 0.2  # share of the time budget kept for refitting the winner on all rows
CV_FOLDS = 3
MIN_LABELLED_ANOMALIES = 10  # fewer: too few for cross-validation to mean anything
SCALER = "minmax"  # as in ADBench, where the meta-corpus was measured
LABEL_FREE = "meta-learned selection"
SEMI_SUPERVISED = "semi-supervised (too few labelled anomalies)"


# ---------------------------------------------------------------- the fitted models


def _as_frame(X: Any) -> pd.DataFrame:
    """A DataFrame view of X (arrays get columns x0, x1, ...)."""
    if isinstance(X, pd.DataFrame):
        return X
    array = np.asarray(X)
    if array.ndim != 2:
        raise InputError(f"X must be 2-dimensional, got shape {array.shape}")
    return pd.DataFrame(array, columns=[f"x{i}" for i in range(array.shape[1])])


class ScoreEnsemble:
    """Preprocessing + one or more META_MEMBERS detectors, scores combined against training.

    `members` are META_MEMBERS names; a single member's raw scores are returned as they are.
    """

    def __init__(
        self,
        members: list[str],
        scaler: str = SCALER,
        combine: str = "zscore",
        random_state: int | None = 0,
    ):
        self.members = members
        self.scaler = scaler
        self.combine = combine
        self.random_state = random_state

    def fit(self, X: Any, y: Any = None) -> ScoreEnsemble:
        """Fit the preprocessor and every member; keep each member's training scores."""
        frame = _as_frame(X)
        self.preprocessor_ = make_preprocessor(frame, self.scaler).fit(frame)
        matrix = self.preprocessor_.transform(frame)
        seed = 0 if self.random_state is None else self.random_state
        self.detectors_ = [fit_member(m, matrix, seed) for m in self.members]
        # Sorted training scores: a fixed reference, so new batches are never rescaled by their
        # own statistics.
        self.reference_ = [np.sort(_finite(d.decision_scores_)) for d in self.detectors_]
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
            parts.append(np.clip((raw - median) / spread, -1e6, 1e6))
    return np.mean(parts, axis=0)


class LabelledModel:
    """Preprocessing + a model that learns from labels (tasks/supervised.py)."""

    def __init__(self, kind: str, params: dict[str, Any] | None = None, random_state: int = 0):
        self.kind = kind
        self.params = params
        self.random_state = random_state

    def fit(self, X: Any, y: Any) -> LabelledModel:
        frame = _as_frame(X)
        self.preprocessor_ = make_preprocessor(frame, SCALER).fit(frame)
        matrix = self.preprocessor_.transform(frame)
        if self.kind == "classifier":
            scorer = ClassifierScorer(self.params, self.random_state)
        else:
            scorer = XGBODScorer(XGBOD_MEMBERS, self.params, self.random_state)
        self.scorer_ = scorer.fit(matrix, np.asarray(y, dtype=int))
        return self

    def decision_function(self, X: Any) -> np.ndarray:
        return self.scorer_.decision_function(self.preprocessor_.transform(_as_frame(X)))


class AutoDetector:
    """The AutoML choice: score, predict, and explain how it was chosen."""

    def __init__(self, model: Any, contamination: float):
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


# ---------------------------------------------------------------- label-free selection


def label_free_ranking(
    frame: pd.DataFrame, random_state: int, meta_model: Any = None
) -> list[tuple[str, float]]:
    """META_CONFIGS best first by the meta-model's predicted relative ROC-AUC on this data."""
    from tasks.metafeatures import meta_features
    from tasks.metaselect import shipped_meta_model

    model = meta_model if meta_model is not None else shipped_meta_model()
    matrix = make_preprocessor(frame, SCALER).fit_transform(frame)
    return model.rank(meta_features(matrix, random_state), allowed=list(META_CONFIGS))


def pooled_members(ranking: list[tuple[str, float]]) -> list[str]:
    """The members of the META_TOP_K best configurations, in META_MEMBERS order."""
    chosen = {m for name, _ in ranking[:META_TOP_K] for m in META_CONFIGS[name][0]}
    return [m for m in META_MEMBERS if m in chosen]


def _detector_config(members: list[str], fit_on: str) -> dict[str, Any]:
    """The configuration of pooled label-free members, described like every AutoML choice."""
    return {
        "kind": "detector",
        "detector": members[0] if len(members) == 1 else f"z({'+'.join(members)})",
        "detectors": [{"name": m, "params": META_MEMBERS[m][1]} for m in members],
        "scaler": SCALER,
        "combine": None if len(members) == 1 else "zscore",
        "fit_on": fit_on,
    }


def _ranking_board(ranking: list[tuple[str, float]]) -> pd.DataFrame:
    """The meta-model's ranking in the leaderboard's columns (nothing was fitted to get it)."""
    return pd.DataFrame(
        [
            {
                "number": i,
                "detector": name,
                "params": {m: META_MEMBERS[m][1] for m in META_CONFIGS[name][0]},
                "scaler": SCALER,
                "fit_on": "all",
                "value": round(value, 6),
                "seconds": None,
                "state": "PREDICTED",
                "worker": 0,
            }
            for i, (name, value) in enumerate(ranking)
        ]
    )


# ---------------------------------------------------------------- labelled search


@dataclass(frozen=True)
class SearchSettings:
    """What every worker needs to run trials: the data and the fixed choices of this search."""

    X: pd.DataFrame
    y: np.ndarray
    metric: str
    random_state: int
    deadline: float  # time.time() after which trials stop fitting
    detector_members: tuple[str, ...]  # the label-free choice, for the "detector" kind
    worker: int = 0


def _suggest(trial: Any, name: str, spec: tuple[Any, ...]) -> Any:
    """One hyper-parameter value from its plain-data spec."""
    if spec[0] == "int":
        return trial.suggest_int(name, spec[1], spec[2], log=spec[3])
    if spec[0] == "float":
        return trial.suggest_float(name, spec[1], spec[2], log=spec[3])
    choices = spec[1]
    return choices[trial.suggest_categorical(name, list(range(len(choices))))]


def suggest_config(trial: Any, detector_members: tuple[str, ...]) -> dict[str, Any]:
    """A labelled configuration sampled by the trial."""
    kind = trial.suggest_categorical("kind", LABELLED_KINDS)
    if kind == "detector":
        return _detector_config(list(detector_members), "normal")
    params = {key: _suggest(trial, key, spec) for key, spec in CLASSIFIER_PARAMS.items()}
    detector = "hgb" if kind == "classifier" else f"xgbod(hgb+{'+'.join(XGBOD_MEMBERS)})"
    return {
        "kind": kind,
        "detector": detector,
        "detectors": [{"name": "hgb", "params": params}],
        "scaler": SCALER,
        "combine": None,
        "fit_on": "labelled",
    }


def fit_config(config: dict[str, Any], X: pd.DataFrame, y: np.ndarray | None, seed: int) -> Any:
    """A configuration fitted: detectors on all or the normal rows, labelled models on all."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if config["kind"] != "detector":
            return LabelledModel(config["kind"], config["detectors"][0]["params"], seed).fit(X, y)
        members = [d["name"] for d in config["detectors"]]
        model = ScoreEnsemble(members, combine=config["combine"] or "zscore", random_state=seed)
        return model.fit(X if config["fit_on"] == "all" else X.iloc[np.flatnonzero(y == 0)])


def objective(trial: Any, settings: SearchSettings) -> float:
    """Cross-validated metric of one labelled configuration on the search rows."""
    import optuna
    from sklearn import metrics
    from sklearn.model_selection import StratifiedKFold

    metric = getattr(metrics, f"{settings.metric}_score")  # "roc_auc" -> roc_auc_score
    config = suggest_config(trial, settings.detector_members)
    trial.set_user_attr("config", config)
    trial.set_user_attr("worker", settings.worker)
    # The first trial is the fallback answer: it always finishes, even past the deadline.
    deadline = math.inf if trial.number == 0 else settings.deadline
    folds = StratifiedKFold(CV_FOLDS, shuffle=True, random_state=settings.random_state)
    values = []
    for step, (fit_rows, held_rows) in enumerate(folds.split(settings.X, settings.y)):
        if time.time() > deadline:
            raise optuna.TrialPruned("time budget spent")
        model = fit_config(
            config, settings.X.iloc[fit_rows], settings.y[fit_rows], settings.random_state
        )
        scores = model.decision_function(settings.X.iloc[held_rows])
        values.append(metric(settings.y[held_rows], scores))
        trial.report(float(np.mean(values)), step)
        if trial.should_prune():
            raise optuna.TrialPruned()
    # Rounded, so float noise (1.0 vs 1.0000000000000002) never picks the best.
    return round(float(np.mean(values)), 12)


def _search_rows(n_rows: int, y: np.ndarray, random_state: int) -> np.ndarray:
    """Indices of the rows the search works on (all, or a stratified subsample)."""
    if n_rows <= MAX_SEARCH_ROWS:
        return np.arange(n_rows)
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
    """Prune trials whose first fold is below the median of earlier trials."""
    import optuna

    return optuna.pruners.MedianPruner(n_startup_trials=len(LABELLED_KINDS), n_warmup_steps=0)


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
        # Caps the total over all workers of a shared study, not each worker's own count; the
        # enqueued default trials still WAITING are not counted until they run.
        TrialState = optuna.trial.TrialState
        counted = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL, TrialState.RUNNING)
        callbacks = [*callbacks, optuna.study.MaxTrialsCallback(n_trials, states=counted)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        study.optimize(
            lambda trial: objective(trial, settings),
            timeout=max(timeout, 0.0),
            callbacks=callbacks,
            catch=(Exception,),
            gc_after_trial=False,
        )


def is_journal(storage: str | None) -> bool:
    """A storage given as a file path (no URL scheme): Optuna's journal file."""
    return storage is not None and "://" not in storage


def open_storage(storage: str | None) -> Any:
    """The Optuna storage of a URL (RDB) or a file path (journal file); None: in memory."""
    import optuna

    if storage is None:
        return None
    if is_journal(storage):
        from optuna.storages.journal import JournalFileBackend

        return optuna.storages.JournalStorage(JournalFileBackend(storage))
    return optuna.storages.RDBStorage(storage)


def _worker(
    study_name: str,
    storage: str,
    settings: SearchSettings,
    n_trials: int | None,
    worker_index: int,
) -> None:
    """One spawned process or Dask task: load the shared study and run trials on it."""
    import optuna

    from tasks.scaleout import worker_name

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    settings = replace(settings, worker=worker_index)
    sampler = _make_sampler(settings.random_state + worker_index, parallel=True)
    study = optuna.load_study(
        study_name=study_name, storage=open_storage(storage), sampler=sampler, pruner=_pruner()
    )
    if worker_name():  # on Dask: which worker ran this loop, for the record
        study.set_user_attr(f"dask_worker_{worker_index}", worker_name())
    # The deadline is wall-clock time shared by all processes, so spawn start-up counts too.
    _optimize(study, settings, n_trials, settings.deadline - time.time(), [])


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
    from functools import partial

    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(n_workers, mp_context=context) as pool:
        list(pool.map(partial(_worker, study_name, storage, settings, n_trials), range(n_workers)))


def _run_dask_workers(
    study_name: str,
    storage: str,
    settings: SearchSettings,
    n_trials: int | None,
    n_workers: int,
    dask: str,
) -> None:
    """Run the trial loops as tasks on Dask workers (a new LocalCluster for 'local') and wait."""
    import contextlib
    from functools import partial

    from distributed import Client, LocalCluster

    from tasks.scaleout import LOCAL, local_cluster_kwargs

    with contextlib.ExitStack() as stack:
        target: Any = dask
        if dask == LOCAL:
            kwargs = local_cluster_kwargs(n_workers if n_workers > 1 else None)
            target = stack.enter_context(LocalCluster(**kwargs))
        client = stack.enter_context(Client(target, set_as_default=False))
        loops = n_workers if n_workers > 1 else sum(client.nthreads().values())
        run = partial(_worker, study_name, storage, settings, n_trials)
        client.gather(client.map(run, range(loops), pure=False))


def trial_info(trial: Any) -> dict[str, Any]:
    """A flat description of one trial (what the leaderboard and trial_callback get)."""
    config = trial.user_attrs.get("config") or {}
    return {
        "number": trial.number,
        "detector": config.get("detector"),
        "params": (
            {d["name"]: d["params"] for d in config["detectors"]} if config else dict(trial.params)
        ),
        "scaler": config.get("scaler"),
        "fit_on": config.get("fit_on"),
        "value": trial.value,
        "seconds": trial.duration.total_seconds() if trial.duration else None,
        "state": trial.state.name,
        "worker": trial.user_attrs.get("worker"),
    }


def _search(
    frame: pd.DataFrame,
    labels: np.ndarray,
    detector_members: tuple[str, ...],
    *,
    started: float,
    time_budget_s: float,
    n_trials: int | None,
    random_state: int,
    storage: str | None,
    n_workers: int,
    dask: str | None,
    metric: str,
    study_name: str,
    trial_callback: Callable[[dict[str, Any]], None] | None,
) -> tuple[Any, Any, dict[str, Any]]:
    """The labelled Optuna search; returns the study, the refitted winner and its trial."""
    import optuna

    rows = _search_rows(len(frame), labels, random_state)
    settings = SearchSettings(
        X=frame.iloc[rows].reset_index(drop=True),
        y=labels[rows],
        metric=metric,
        random_state=random_state,
        deadline=started + time_budget_s * (1.0 - REFIT_SHARE),
        detector_members=detector_members,
    )
    # The storage and the study are created once here, before any worker starts, because two
    # processes creating the schema at the same time crash.
    parallel = n_workers > 1 or dask is not None
    study = optuna.create_study(
        study_name=study_name,
        storage=open_storage(storage),
        direction="maximize",
        sampler=_make_sampler(random_state, parallel=parallel),
        pruner=_pruner(),
        load_if_exists=True,
    )
    if not study.trials:  # each kind's defaults are the first trials
        for kind in LABELLED_KINDS:
            study.enqueue_trial({"kind": kind, **CLASSIFIER_DEFAULTS}, skip_if_exists=True)
    remaining = settings.deadline - time.time()
    if not parallel:
        callbacks = []
        if trial_callback is not None:
            callbacks.append(lambda _study, trial: trial_callback(trial_info(trial)))
        _optimize(study, settings, n_trials, remaining, callbacks)
    else:
        if dask is None:
            _run_workers(study_name, storage, settings, n_trials, n_workers)
        else:
            _run_dask_workers(study_name, storage, settings, n_trials, n_workers, dask)
        if trial_callback is not None:
            for trial in study.get_trials(deepcopy=False):
                trial_callback(trial_info(trial))

    # Refit: the best configuration that fits on all rows wins (a few fail on other data).
    completed = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if not completed:
        raise InputError(
            f"AutoML finished no trial within {time_budget_s:.0f} s; raise time_budget_s"
        )
    completed.sort(key=lambda t: (-t.value, t.number))
    for trial in completed:
        config = trial.user_attrs["config"]
        try:
            model = fit_config(config, frame, labels, random_state)
            return study, model, {**config, "value": trial.value, "trial": trial.number}
        except Exception:  # noqa: BLE001 - a model failing on the full rows: take the next
            continue
    raise InputError("no searched configuration could be fitted on all rows")


# ---------------------------------------------------------------- the entry point


def _check_inputs(
    X: pd.DataFrame,
    y: Any,
    metric: str,
    n_workers: int,
    storage: str | None,
    time_budget_s: float,
    n_trials: int | None,
    dask: str | None = None,
) -> np.ndarray | None:
    """Validate the arguments; return y as a 0/1 array or None."""
    if not time_budget_s > 0:
        raise InputError(f"time budget must be a positive number of seconds, got {time_budget_s}")
    if n_trials is not None and n_trials < 1:
        raise InputError(f"number of trials must be at least 1, got {n_trials}")
    if len(X) < 20:
        raise InputError(f"AutoML needs at least 20 rows, got {len(X)}")
    if metric not in METRICS:
        raise InputError(f"metric must be one of {METRICS}, got {metric!r}")
    if n_workers < 1:
        raise InputError(f"n_workers must be at least 1, got {n_workers}")
    if (n_workers > 1 or dask is not None) and (storage is None or storage.startswith("sqlite")):
        raise InputError(
            f"{'--dask' if dask is not None else 'n_workers > 1'} needs a shared PostgreSQL or "
            "MySQL storage URL (SQLite locks under parallel writers); pass "
            "storage=postgresql+psycopg2://... (or a journal file path for workers on one machine)"
        )
    if y is None:
        return None
    labels = np.asarray(y)
    if len(labels) != len(X):
        raise InputError(f"y has {len(labels)} labels for {len(X)} rows")
    if not np.isin(labels, [0, 1]).all():
        raise InputError("y must hold only 0 (normal) and 1 (anomaly)")
    labels = labels.astype(int)
    if (labels == 0).sum() < 20:
        raise InputError("y needs at least 20 rows labelled normal (0)")
    return labels


def _fit_label_free(
    frame: pd.DataFrame, labels: np.ndarray | None, ranking: list[tuple[str, float]], seed: int
) -> tuple[Any, dict[str, Any], pd.DataFrame]:
    """The meta-model's first choice, fitted on all rows (or the normal ones, when labelled)."""
    config = _detector_config(pooled_members(ranking), "all" if labels is None else "normal")
    config["ranking"] = [
        {"config": name, "predicted_relative_roc_auc": round(value, 4)}
        for name, value in ranking[:5]
    ]
    model = fit_config(config, frame, labels, seed)
    return model, {**config, "value": ranking[0][1], "trial": None}, _ranking_board(ranking)


def fit_best_detector(
    X: Any,
    y: Any = None,
    *,
    time_budget_s: float = 60,
    n_trials: int | None = None,
    random_state: int = 0,
    storage: str | None = None,
    n_workers: int = 1,
    dask: str | None = None,
    metric: str = "average_precision",
    contamination: float | None = None,
    study_name: str | None = None,
    trial_callback: Callable[[dict[str, Any]], None] | None = None,
    meta_model: Any = None,
) -> AutoDetector:
    """Choose and fit a model for X (and labels y, 1 = anomaly, when there are any).

    `meta_model` replaces the shipped meta-model (the benchmark passes one trained without the
    dataset under test).
    """
    started = time.time()
    import optuna

    # Failed trials are on the leaderboard (state FAIL); their tracebacks would flood the log.
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    frame = _as_frame(X).reset_index(drop=True)
    labels = _check_inputs(frame, y, metric, n_workers, storage, time_budget_s, n_trials, dask)
    if contamination is None:
        contamination = (
            DEFAULT_CONTAMINATION if labels is None else float(np.clip(labels.mean(), 0.001, 0.49))
        )

    # Label-free choice: every path needs it (alone, on the normal rows, or as a search option)
    ranking = label_free_ranking(frame, random_state, meta_model)
    study = None
    if labels is None or labels.sum() < MIN_LABELLED_ANOMALIES:
        objective_name = LABEL_FREE if labels is None else SEMI_SUPERVISED
        model, config, board = _fit_label_free(frame, labels, ranking, random_state)
    else:
        objective_name = metric
        study_name = study_name or f"pynomaly-automl-{uuid.uuid4().hex[:12]}"
        study, model, config = _search(
            frame,
            labels,
            tuple(pooled_members(ranking)),
            started=started,
            time_budget_s=time_budget_s,
            n_trials=n_trials,
            random_state=random_state,
            storage=storage,
            n_workers=n_workers,
            dask=dask,
            metric=metric,
            study_name=study_name,
            trial_callback=trial_callback,
        )
        board = pd.DataFrame([trial_info(t) for t in study.get_trials(deepcopy=False)])

    result = AutoDetector(model, contamination)
    result.model_ = model
    result.threshold_ = calibrate_threshold(model.decision_function(frame), contamination)
    result.best_config_ = {**config, "objective": objective_name}
    result.leaderboard_ = board
    result.study_ = study
    result.study_name_ = study_name if study is not None else None
    result.seconds_ = time.time() - started
    return result
