"""The meta-corpus: detector scores and meta-features on many anomaly-detection tasks.

A task is one train/test split of one dataset under ADBench's protocol (benchmarks/adbench.py).
Tasks come from three sources, all under ../shared/datasets and nothing else:
- the 21 tabular ADBench sets (`adbench/`), 3 seeds each;
- the 22 embedding tasks of `adbench-extra/` (image and text embeddings), 1 seed each;
- synthetic tasks made from the normal rows of each tabular set with ADBench's four anomaly
  types (Han et al. 2022, section 4.3): local (a GMM of the normals with covariances scaled
  up), global (uniform over a widened box), dependency (each column drawn independently from
  its own marginal, breaking the correlations) and clustered (a GMM with its means moved),
  3 seeds each.

For every task the corpus keeps each base detector's scores on the train and test parts (so
any rank or z-score ensemble of them is evaluated without refitting), the test labels, and the
label-free meta-features of the train part (tasks/metafeatures.py). Files go to a cache folder
outside the repository; building it is resumable.

    python benchmarks/metacorpus.py --data-dir ../shared/datasets [--cache DIR] [--jobs 2]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.adbench import load_dataset, split_dataset  # noqa: E402
from tasks.metafeatures import meta_features  # noqa: E402
from tasks.search_space import META_MEMBERS  # noqa: E402

DEFAULT_CACHE = Path.home() / ".cache" / "pynomaly" / "metacorpus"
REAL_SEEDS = 3
SYNTHETIC_TYPES = ("local", "global", "dependency", "clustered")
SYNTHETIC_SEEDS = 3
SYNTHETIC_NORMALS = 3000
SYNTHETIC_SHARE = 0.05


@dataclass(frozen=True)
class Task:
    """One task of the corpus: a dataset (its source file), a seed and how anomalies arise."""

    dataset: str  # the group left out together under leave-one-dataset-out
    path: str
    seed: int
    kind: str  # "real", "extra" or a synthetic anomaly type

    @property
    def key(self) -> str:
        return f"{self.dataset}__{self.kind}__{self.seed}"


def corpus_tasks(data_dir: Path) -> list[Task]:
    """Every task of the corpus, real tabular first."""
    tasks = []
    tabular = pd.read_csv(data_dir / "adbench" / "summary.csv")
    for _, row in tabular.iterrows():
        path = str(data_dir / "adbench" / row["file"])
        tasks += [Task(row["name"], path, seed, "real") for seed in range(REAL_SEEDS)]
    extra = pd.read_csv(data_dir / "adbench-extra" / "summary.csv")
    for _, row in extra.iterrows():
        path = str(data_dir / "adbench-extra" / f"{row['dataset']}.npz")
        tasks.append(Task(row["dataset"], path, 0, "extra"))
    for _, row in tabular.iterrows():
        path = str(data_dir / "adbench" / row["file"])
        tasks += [
            Task(row["name"], path, seed, kind)
            for seed in range(SYNTHETIC_SEEDS)
            for kind in SYNTHETIC_TYPES
        ]
    return tasks


def _gmm(normals: np.ndarray, seed: int):
    """A Gaussian mixture of the normal rows (diagonal covariances on wide data)."""
    from sklearn.mixture import GaussianMixture

    kind = "full" if normals.shape[1] <= 40 else "diag"
    best = None
    for k in (1, 3, 5):
        gmm = GaussianMixture(k, covariance_type=kind, random_state=seed, reg_covar=1e-4)
        gmm.fit(normals)
        bic = gmm.bic(normals)
        if best is None or bic < best[0]:
            best = (bic, gmm)
    return best[1]


def synthetic_anomalies(normals: np.ndarray, kind: str, count: int, seed: int) -> np.ndarray:
    """`count` anomalies of one ADBench type generated from the normal rows."""
    rng = np.random.RandomState(seed)
    if kind == "global":
        low, high = normals.min(axis=0), normals.max(axis=0)
        span = np.where(high > low, high - low, 1.0)
        return rng.uniform(low - 0.1 * span, high + 0.1 * span, size=(count, normals.shape[1]))
    if kind == "dependency":
        # Each column from its own marginal (a resampled value plus kernel noise): the marginals
        # stay normal-looking, the dependence between columns is gone.
        columns = [
            rng.choice(col, count) + rng.normal(0, 0.05 * (col.std() or 1.0), count)
            for col in normals.T
        ]
        return np.column_stack(columns)
    gmm = _gmm(normals, seed)
    if kind == "local":
        gmm.covariances_ = gmm.covariances_ * 5.0
    else:  # clustered: the components move away from where the normals are
        gmm.means_ = gmm.means_ * 5.0
    if gmm.covariance_type == "full":
        from sklearn.mixture._gaussian_mixture import _compute_precision_cholesky

        gmm.precisions_cholesky_ = _compute_precision_cholesky(gmm.covariances_, "full")
    gmm.random_state = seed
    return gmm.sample(count)[0]


def task_data(task: Task) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """x_train, x_test, y_train, y_test of a task (ADBench's split and scaling)."""
    X, y = load_dataset(Path(task.path))
    if task.kind in SYNTHETIC_TYPES:
        rng = np.random.RandomState(task.seed)
        normals = X[y == 0]
        if len(normals) > SYNTHETIC_NORMALS:
            normals = normals[rng.choice(len(normals), SYNTHETIC_NORMALS, replace=False)]
        # On a common scale, so "5x the covariance" means the same on every dataset.
        low, high = normals.min(axis=0), normals.max(axis=0)
        normals = (normals - low) / np.where(high > low, high - low, 1.0)
        count = max(30, int(SYNTHETIC_SHARE * len(normals)))
        anomalies = synthetic_anomalies(normals, task.kind, count, task.seed)
        X = np.vstack([normals, anomalies])
        y = np.r_[np.zeros(len(normals), int), np.ones(count, int)]
    return split_dataset(X, y, task.seed)


def member_scores(
    x_train: np.ndarray, x_test: np.ndarray, seed: int
) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """Train and test scores of every meta member, and the seconds each took."""
    from tasks.automl import _finite
    from tasks.detectors import make_detector

    scores, seconds = {}, {}
    for member, (name, params) in META_MEMBERS.items():
        started = time.perf_counter()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                detector = make_detector(name, params, random_state=seed).fit(x_train)
            train = _finite(detector.decision_scores_)
            test = _finite(detector.decision_function(x_test))
        except Exception:  # noqa: BLE001 - a member that cannot fit scores every row the same
            train, test = np.zeros(len(x_train)), np.zeros(len(x_test))
        scores[f"{member}.train"], scores[f"{member}.test"] = train, test
        seconds[member] = time.perf_counter() - started
    return scores, seconds


def build_task(task: Task, cache: Path) -> Path:
    """Compute and store one task (skipped when its file exists)."""
    target = cache / f"{task.key}.npz"
    if target.exists():
        return target
    x_train, x_test, y_train, y_test = task_data(task)
    scores, seconds = member_scores(x_train, x_test, task.seed)
    features = meta_features(x_train, random_state=task.seed)
    info = {
        "task": task.__dict__,
        "meta_features": features,
        "seconds": seconds,
        "train_rows": len(x_train),
    }
    partial = target.with_suffix(".tmp.npz")
    np.savez_compressed(
        partial, y_test=y_test, y_train=y_train, info=np.array(json.dumps(info)), **scores
    )
    partial.rename(target)
    return target


def load_corpus(cache: Path) -> list[dict]:
    """Every stored task: its description, meta-features, labels and member scores."""
    tasks = []
    for path in sorted(cache.glob("*.npz")):
        if path.name.endswith(".tmp.npz"):
            continue
        with np.load(path) as data:
            info = json.loads(str(data["info"]))
            tasks.append(
                {
                    **info["task"],
                    "key": path.stem,
                    "meta_features": info["meta_features"],
                    "y_test": data["y_test"],
                    "y_train": data["y_train"],
                    "scores": {k: data[k] for k in data.files if k.endswith((".train", ".test"))},
                }
            )
    return tasks


def main() -> None:
    """Build (or complete) the meta-corpus cache."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, required=True, help="../shared/datasets")
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    parser.add_argument("--jobs", type=int, default=1)
    parser.add_argument("--kinds", default="real,extra," + ",".join(SYNTHETIC_TYPES))
    args = parser.parse_args()
    args.cache.mkdir(parents=True, exist_ok=True)
    kinds = set(args.kinds.split(","))
    tasks = [t for t in corpus_tasks(args.data_dir) if t.kind in kinds]
    from joblib import Parallel, delayed

    started = time.perf_counter()
    done = Parallel(n_jobs=args.jobs, verbose=5)(delayed(build_task)(t, args.cache) for t in tasks)
    print(f"{len(done)} tasks in {args.cache} ({time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()


def config_test_scores(task: dict, config: str) -> np.ndarray:
    """Test scores of one META_CONFIGS configuration, combined from the stored member scores."""
    from tasks.automl import combine_scores
    from tasks.search_space import META_CONFIGS

    members, how = META_CONFIGS[config]
    tests = [task["scores"][f"{m}.test"] for m in members]
    if how is None:
        return tests[0]
    references = [np.sort(task["scores"][f"{m}.train"]) for m in members]
    return combine_scores(tests, references, how)


def performance_matrix(tasks: list[dict], configs: list[str]) -> np.ndarray:
    """Test ROC-AUC of every configuration on every task (tasks x configs)."""
    from sklearn.metrics import roc_auc_score

    return np.array(
        [[roc_auc_score(t["y_test"], config_test_scores(t, c)) for c in configs] for t in tasks]
    )
