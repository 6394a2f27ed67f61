"""ADBench benchmark: catalog detectors, a plain classifier and AutoML, under leave-one-dataset-out.

Protocol (ADBench, Han et al. 2022): datasets above 10,000 rows are subsampled to 10,000, below
1,000 rows resampled (with replacement) to 1,000; 70/30 stratified split; MinMax scaling fitted on
the train part; detectors fit on the train part; ROC-AUC and average precision on the test part.
The test labels never reach the search: AutoML gets the train rows (and, in the labelled mode,
the train labels) only.

Leave-one-dataset-out (the default): the label-free meta-model is re-fitted for every dataset on
the meta-corpus without that dataset (its real tasks and the synthetic tasks made from it), so
the figures are those of data the choice never saw. `--no-lodo` uses the shipped meta-model,
which has seen every dataset (an in-sample figure, for comparison only).

Methods: every catalog detector with its defaults; `hgb+labels`, one default
HistGradientBoostingClassifier on the train labels; `automl` (no labels); `automl+labels`.
`--label-fractions 0.01,0.05,0.25,1` runs the labelled methods with only that share of the train
anomalies labelled (the rest look normal, as in ADBench's semi-supervised setting).

    python benchmarks/adbench.py --data-dir ../shared/datasets/adbench [--json]
        [--datasets cardio,WBC] [--seeds 3] [--time-budget 15] [--label-fractions 1]
        [--no-catalog] [--save rows.csv]
    python benchmarks/adbench.py --data-dir ... --workers-scaling --storage postgresql://...
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tasks.automl import fit_best_detector  # noqa: E402
from tasks.detectors import CATALOG, make_detector  # noqa: E402

MIN_ROWS, MAX_ROWS = 1_000, 10_000
TEST_SHARE = 0.3
UNLABELLED, LABELLED, CLASSIFIER = "automl", "automl+labels", "hgb+labels"
# Our catalog names -> the column names of published_rocauc.csv / published_aucpr.csv.
PUBLISHED_NAMES = {
    "iforest": "IForest",
    "ecod": "ECOD",
    "copod": "COPOD",
    "hbos": "HBOS",
    "knn": "KNN",
    "lof": "LOF",
    "ocsvm": "OCSVM",
    "pca": "PCA",
    "cblof": "CBLOF",
    "loda": "LODA",
}


def load_dataset(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """X and y of one ADBench .npz file."""
    with np.load(path, allow_pickle=True) as data:
        return np.asarray(data["X"], dtype=float), np.asarray(data["y"], dtype=int)


def split_dataset(
    X: np.ndarray, y: np.ndarray, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """ADBench's subsample/resample, 70/30 stratified split and train-fitted MinMax scaling."""
    from sklearn.model_selection import train_test_split
    from sklearn.preprocessing import MinMaxScaler

    rng = np.random.RandomState(seed)
    if len(y) > MAX_ROWS:
        rows = rng.choice(len(y), MAX_ROWS, replace=False)
        X, y = X[rows], y[rows]
    if len(y) < MIN_ROWS:
        rows = rng.choice(len(y), MIN_ROWS, replace=True)
        X, y = X[rows], y[rows]
    x_train, x_test, y_train, y_test = train_test_split(
        X, y, test_size=TEST_SHARE, stratify=y, random_state=seed
    )
    scaler = MinMaxScaler().fit(x_train)
    return scaler.transform(x_train), scaler.transform(x_test), y_train, y_test


def measure(y_test: np.ndarray, scores: np.ndarray) -> dict[str, float]:
    """ROC-AUC and average precision on the test part."""
    from sklearn.metrics import average_precision_score, roc_auc_score

    scores = np.nan_to_num(np.asarray(scores, float), nan=0.0, posinf=1e12, neginf=-1e12)
    return {
        "roc_auc": float(roc_auc_score(y_test, scores)),
        "average_precision": float(average_precision_score(y_test, scores)),
    }


def plain_classifier_scores(
    x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, seed: int
) -> np.ndarray:
    """What a user would do with labels: one default HistGradientBoostingClassifier."""
    from sklearn.ensemble import HistGradientBoostingClassifier

    model = HistGradientBoostingClassifier(random_state=seed).fit(x_train, y_train)
    return model.predict_proba(x_test)[:, 1]


def partial_labels(y_train: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Train labels with only `fraction` of the anomalies labelled; the rest look normal (0).

    ADBench's semi-supervised setting: the unlabelled anomalies hide among the unlabelled rows.
    """
    if fraction >= 1.0:
        return y_train
    anomalies = np.flatnonzero(y_train == 1)
    keep = max(1, int(round(fraction * len(anomalies))))
    kept = np.random.RandomState(seed).choice(anomalies, keep, replace=False)
    labels = np.zeros_like(y_train)
    labels[kept] = 1
    return labels


def _timed(method: str, y_test: np.ndarray, work) -> dict:
    """Run one method; a failure counts as a random ranking and is reported."""
    started = time.perf_counter()
    extra: dict = {}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            scores, extra = work()
        result, error = measure(y_test, scores), None
    except Exception as exc:  # noqa: BLE001 - reported, counted as a random ranking
        result = {"roc_auc": 0.5, "average_precision": float(y_test.mean())}
        error = f"{type(exc).__name__}: {exc}"[:200]
    return {
        "method": method,
        **result,
        "seconds": time.perf_counter() - started,
        "error": error,
        **extra,
    }


def run_methods(
    x_train: np.ndarray,
    x_test: np.ndarray,
    y_train: np.ndarray,
    y_test: np.ndarray,
    seed: int,
    time_budget: float,
    meta_model=None,
    label_fractions: tuple[float, ...] = (1.0,),
    catalog: bool = True,
) -> list[dict]:
    """Scores of every method on one split: catalog defaults, the plain classifier, AutoML.

    `meta_model` is the label-free meta-model to use (under leave-one-dataset-out, one fitted
    without this dataset). Labelled methods run once per fraction of labelled train anomalies.
    """
    rows = []
    for name in CATALOG if catalog else [n for n in CATALOG if n == "iforest"]:

        def fit_default(name=name):
            detector = make_detector(name, contamination=0.1, random_state=seed).fit(x_train)
            return detector.decision_function(x_test), {}

        rows.append(_timed(name, y_test, fit_default))

    def automl(labels):
        def work():
            model = fit_best_detector(
                x_train,
                labels,
                time_budget_s=time_budget,
                random_state=seed,
                contamination=float(np.clip(y_train.mean(), 0.001, 0.49)),
                meta_model=meta_model,
            )
            extra = {
                "chosen": model.best_config_["detector"],
                "objective": model.best_config_["objective"],
                "trials": len(model.leaderboard_),
            }
            return model.decision_function(x_test), extra

        return work

    rows.append(_timed(UNLABELLED, y_test, automl(None)))
    for fraction in label_fractions:
        labels = partial_labels(y_train, fraction, seed)
        suffix = "" if fraction >= 1.0 else f"@{fraction:g}"
        rows.append(_timed(LABELLED + suffix, y_test, automl(labels)))
        if labels.sum() >= 2:
            rows.append(
                _timed(
                    CLASSIFIER + suffix,
                    y_test,
                    lambda labels=labels: (
                        plain_classifier_scores(x_train, labels, x_test, seed),
                        {},
                    ),
                )
            )
    return rows


def published_table(data_dir: Path, metric_file: str) -> pd.DataFrame:
    """Published ADBench numbers, one row per dataset, our method names as columns."""
    table = pd.read_csv(data_dir / metric_file).set_index("dataset")
    table = table.rename(columns={v: k for k, v in PUBLISHED_NAMES.items()})
    return table[list(PUBLISHED_NAMES)]


def lodo_meta_models(corpus_dir: Path, cache: Path, names: list[str], log) -> dict:
    """For each benchmark dataset, the meta-model fitted on the corpus without that dataset.

    Leave-one-dataset-out: the held-out dataset's real tasks and the synthetic tasks made from
    its rows are all left out, so nothing the label-free choice learned has seen it.
    """
    from benchmarks.metacorpus import build_task, corpus_tasks, load_corpus, performance_matrix
    from tasks.metaselect import train_meta_model
    from tasks.search_space import META_CONFIGS

    cache.mkdir(parents=True, exist_ok=True)
    tasks = corpus_tasks(corpus_dir)
    missing = [t for t in tasks if not (cache / f"{t.key}.npz").exists()]
    if missing:
        log(f"building {len(missing)} meta-corpus tasks in {cache}")
        for task in missing:
            build_task(task, cache)
    keys = {t.key for t in tasks}
    corpus = [t for t in load_corpus(cache) if t["key"] in keys]
    configs = list(META_CONFIGS)
    performance = performance_matrix(corpus, configs)
    models = {}
    for name in names:
        keep = [i for i, t in enumerate(corpus) if t["dataset"] != name]
        models[name] = train_meta_model(
            [corpus[i]["meta_features"] for i in keep], performance[keep], configs
        )
    log(f"{len(models)} leave-one-dataset-out meta-models from {len(corpus)} corpus tasks")
    return models


def run_benchmark(
    data_dir: Path,
    datasets: list[str] | None,
    seeds: int,
    time_budget: float,
    log,
    *,
    lodo: bool = True,
    cache: Path | None = None,
    label_fractions: tuple[float, ...] = (1.0,),
    catalog: bool = True,
) -> pd.DataFrame:
    """Every method on every dataset and seed, one row per (dataset, seed, method)."""
    summary = pd.read_csv(data_dir / "summary.csv")
    if datasets:
        unknown = set(datasets) - set(summary["name"])
        if unknown:
            raise SystemExit(f"unknown datasets: {', '.join(sorted(unknown))}")
        summary = summary[summary["name"].isin(datasets)]
    meta_models: dict = {}
    if lodo:
        from benchmarks.metacorpus import DEFAULT_CACHE

        meta_models = lodo_meta_models(
            data_dir.parent, cache or DEFAULT_CACHE, list(summary["name"]), log
        )
    records = []
    for _, entry in summary.iterrows():
        X, y = load_dataset(data_dir / entry["file"])
        started = time.perf_counter()
        for seed in range(seeds):
            split = split_dataset(X, y, seed)
            rows = run_methods(
                *split,
                seed=seed,
                time_budget=time_budget,
                meta_model=meta_models.get(entry["name"]),
                label_fractions=label_fractions,
                catalog=catalog,
            )
            records += [{"dataset": entry["name"], "seed": seed, **row} for row in rows]
        log(f"{entry['name']}: {time.perf_counter() - started:.0f} s")
    return pd.DataFrame.from_records(records)


def against_iforest(table: pd.DataFrame, tie: float = 0.01) -> dict:
    """Wins, ties (within `tie`) and losses of every method against IForest, per dataset."""
    if "iforest" not in table.columns:
        return {}
    gap = table.sub(table["iforest"], axis=0)
    return {
        method: {
            "wins": int((gap[method] > tie).sum()),
            "ties": int((gap[method].abs() <= tie).sum()),
            "losses": int((gap[method] < -tie).sum()),
            "worst_gap": round(float(gap[method].min()), 4),
        }
        for method in table.columns
        if method != "iforest"
    }


def report(results: pd.DataFrame, data_dir: Path) -> dict:
    """Per-dataset tables, means, mean ranks, W/T/L against IForest and published figures."""
    published = {
        "roc_auc": published_table(data_dir, "published_rocauc.csv"),
        "average_precision": published_table(data_dir, "published_aucpr.csv"),
    }
    order = list(dict.fromkeys(results["method"]))
    out: dict = {}
    for metric in ("roc_auc", "average_precision"):
        table = results.pivot_table(
            index="dataset", columns="method", values=metric, aggfunc="mean"
        )
        table = table[[m for m in order if m in table.columns]]
        ranks = table.rank(axis=1, ascending=False).mean()
        pub = published[metric].reindex(table.index)
        out[metric] = {
            "per_dataset": table.round(4).to_dict(orient="index"),
            "mean": table.mean().round(4).to_dict(),
            "mean_rank": ranks.round(2).to_dict(),
            "vs_iforest": against_iforest(table),
            "published_mean": pub.mean(numeric_only=True).round(4).to_dict(),
            "published_per_dataset": pub.round(4).to_dict(orient="index"),
        }
    automl = results[results["method"].str.startswith("automl")]
    seconds = automl.pivot_table(
        index="dataset", columns="method", values="seconds", aggfunc="mean"
    )
    out["automl_seconds_per_run"] = seconds.round(1).to_dict(orient="index")
    out["automl_seconds_max"] = automl.groupby("method")["seconds"].max().round(1).to_dict()
    per_dataset = results.groupby("dataset")["seconds"].sum() / results["seed"].nunique()
    out["all_methods_seconds_per_dataset"] = per_dataset.round(1).to_dict()
    out["chosen"] = (
        automl.groupby(["method", "chosen"]).size().rename("runs").reset_index().to_dict("records")
    )
    out["failed_fits"] = results[results["error"].notna()][
        ["dataset", "seed", "method", "error"]
    ].to_dict("records")
    return out


def print_report(summary: dict) -> None:
    """Human-readable tables of a report."""
    for metric in ("roc_auc", "average_precision"):
        part = summary[metric]
        table = pd.DataFrame(part["per_dataset"]).T
        pub = pd.DataFrame(part["published_per_dataset"]).T
        table["pub_IForest"] = pub.get("iforest")
        print(f"\n== test {metric} per dataset (mean of seeds; pub_ = published ADBench) ==")
        print(table.round(3).to_string())
        print(f"\n== mean test {metric}, mean rank, against IForest (tie: within 0.01) ==")
        versus = pd.DataFrame(part["vs_iforest"]).T
        lines = pd.DataFrame(
            {
                "mean": part["mean"],
                "published": part["published_mean"],
                "mean_rank": part["mean_rank"],
            }
        ).join(versus)
        print(lines.sort_values("mean_rank").to_string())
    print("\n== AutoML seconds per run (mean of seeds) ==")
    print(pd.DataFrame(summary["automl_seconds_per_run"]).T.to_string())
    print("max seconds per run:", summary["automl_seconds_max"])
    print("\n== chosen configurations ==")
    print(pd.DataFrame(summary["chosen"]).to_string(index=False))
    if summary["failed_fits"]:
        print("\n== failed fits (counted as random ranking) ==")
        print(pd.DataFrame(summary["failed_fits"]).to_string(index=False))


def workers_scaling(data_dir: Path, dataset: str, storage: str, time_budget: float) -> dict:
    """Trials per minute of 1 and 2 workers on a shared RDB study, side by side in one run."""
    summary = pd.read_csv(data_dir / "summary.csv").set_index("name")
    X, y = load_dataset(data_dir / summary.loc[dataset, "file"])
    x_train, _, y_train, _ = split_dataset(X, y, 0)
    out = {"dataset": dataset, "time_budget_s": time_budget}
    for n_workers in (1, 2):
        started = time.perf_counter()
        model = fit_best_detector(
            x_train,
            y_train,
            time_budget_s=time_budget,
            storage=storage,
            n_workers=n_workers,
            study_name=f"workers-scaling-{n_workers}-{int(time.time())}",
        )
        seconds = time.perf_counter() - started
        trials = [t for t in model.study_.trials if t.datetime_complete is not None]
        finished = [t for t in trials if t.state.name in ("COMPLETE", "PRUNED")]
        # Throughput while the search ran (first trial start to last trial end), so process
        # start-up and the final refit do not blur the comparison.
        window = max(t.datetime_complete for t in trials) - min(t.datetime_start for t in trials)
        out[f"{n_workers}_workers"] = {
            "trials_finished": len(finished),
            "trials_per_minute": round(len(finished) / (window.total_seconds() / 60), 1),
            "search_seconds": round(window.total_seconds(), 1),
            "seconds": round(seconds, 1),
            "trials_per_worker": model.leaderboard_["worker"].value_counts().to_dict(),
        }
    out["speedup"] = round(
        out["2_workers"]["trials_per_minute"] / out["1_workers"]["trials_per_minute"], 2
    )
    return out


def main() -> None:
    """Parse arguments and run the benchmark or the worker scaling measurement."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--datasets", help="comma-separated dataset names (default: all)")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--time-budget", type=float, default=60.0, help="seconds per AutoML run")
    parser.add_argument("--workers-scaling", action="store_true")
    parser.add_argument("--storage", help="PostgreSQL URL for --workers-scaling")
    parser.add_argument("--save", type=Path, help="also write the raw rows as CSV here")
    parser.add_argument(
        "--no-lodo",
        action="store_true",
        help="use the shipped meta-model (trained on every dataset: in-sample, not honest)",
    )
    parser.add_argument("--cache", type=Path, help="meta-corpus cache (benchmarks/metacorpus.py)")
    parser.add_argument(
        "--label-fractions",
        default="1",
        help="shares of train anomalies labelled for the labelled methods, e.g. 0.01,0.05,0.25,1",
    )
    parser.add_argument(
        "--no-catalog", action="store_true", help="leave out the catalog detectors but IForest"
    )
    args = parser.parse_args()

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    if args.workers_scaling:
        if not args.storage:
            raise SystemExit("--workers-scaling needs --storage postgresql://...")
        dataset = (args.datasets or "cardio").split(",")[0]
        result = workers_scaling(args.data_dir, dataset, args.storage, args.time_budget)
        print(json.dumps(result, indent=2))
        return
    datasets = args.datasets.split(",") if args.datasets else None
    results = run_benchmark(
        args.data_dir,
        datasets,
        args.seeds,
        args.time_budget,
        log,
        lodo=not args.no_lodo,
        cache=args.cache,
        label_fractions=tuple(float(f) for f in args.label_fractions.split(",")),
        catalog=not args.no_catalog,
    )
    if args.save:
        results.to_csv(args.save, index=False)
    summary = report(results, args.data_dir)
    if args.json:
        print(json.dumps(summary, indent=2, default=str))
    else:
        print_report(summary)


if __name__ == "__main__":
    main()
