"""Weak-training methods matrix: datasets x noise x methods (+ clean oracle and gold-only), seeds.

Each cell runs the pipeline's weak_train stage (``tasks/weak_train.py``: the method looked up in the
registry of ``tasks/lib/weak_methods.py``, cross-fitted over the gold rows, the epoch chosen on their
out-of-fold predictions) on the demo's splits: 20% test, 10% gold (3 cross-fitting folds), the rest 70% weak /
30% unlabeled; test accuracy of the weak model (its refit on all gold). ``oracle`` is the stage's ``ce`` with
the weak rows' true labels, ``gold_only`` the pipeline's gold-only stage, ``ce_last`` plain CE on the weak
rows alone to the last epoch (no gold, no early stopping: what memorising the noise costs).
All cells are logged to one MLflow experiment (bench/results/mlflow.db) and summarised in
docs/benchmarks.md.

    python -m bench.methods            # full matrix, 3 seeds (each cell cross-fits 3 folds and the refit)
    python -m bench.methods --quick    # smoke: 1 seed, 2 noise settings, 15 epochs
    python -m bench.methods --dask-workers 4          # cells as Prefect tasks on a local Dask cluster
    python -m bench.methods --dask-address tcp://host:8786

Serial by default. On Dask every cell is a Prefect task (one torch thread each) and the results are
logged and tabled in the same order; a cell's accuracy equals the serial run's with one torch thread
(``OMP_NUM_THREADS=1``), while seconds per epoch are then single-thread figures.
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from prefect import flow

from bench.common import ROOT, mean_std, write_section
from weakflow.tasks.core.clid import ClidMonitor, ClidMu, ClidMuSettings
from weakflow.tasks.core.folds import gold_folds
from weakflow.tasks.core.models import ModelSpec, build_model
from weakflow.tasks.core.noise import corrupt_labels
from weakflow.tasks.core.training import TrainSettings, fit, predict_proba
from weakflow.tasks.lib.config import (
    ClidMuConfig, FilesData, GoldOnlyConfig, SelectionConfig, WeakLabelsConfig, WeakTrainConfig,
)
from weakflow.tasks.lib.data import FOLD, PROVENANCE, ROW_ID, SPLIT, PipelineData
from weakflow.tasks.lib.results import WeakLabels
from weakflow.tasks.lib.stage import stage_task
from weakflow.tasks.lib.steps import RunContext

# the registry's methods this matrix compares on aggregated weak labels (anchored and glc need the
# gold-anchored evidence of several sources: the pipeline benchmarks measure them)
METHODS: tuple[str, ...] = ("ce", "gce", "confident_learning", "clid_mu")
NOISES = [("symmetric", 0.2), ("symmetric", 0.4), ("symmetric", 0.6), ("pairflip", 0.4), ("instance", 0.4)]
# CLID-MU beside its default: the other virtual-step scope ("full": the look-ahead moves every parameter;
# "head": the classifier head only, a cheap meta step), meta step every step.
CLID_ALT_SCOPE = "full" if ClidMuConfig().virtual_scope == "head" else "head"
CLID_ALT = f"clid_mu_{CLID_ALT_SCOPE}"


@dataclass
class Split:
    x_weak: np.ndarray
    y_weak_true: np.ndarray
    x_unlabeled: np.ndarray
    x_gold: np.ndarray
    y_gold: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    spec: ModelSpec


def load(dataset: str, seed: int) -> Split:
    from sklearn.datasets import load_digits, make_classification
    from sklearn.model_selection import train_test_split

    if dataset == "digits":
        x, y = load_digits(return_X_y=True)
        spec = ModelSpec("cnn", 64, 10, hidden=(64,), image_shape=(1, 8, 8))
    else:  # generated: 6 classes, 20 features, 10 informative, two clusters per class
        x, y = make_classification(n_samples=3000, n_features=20, n_informative=10, n_redundant=4, n_classes=6,
                                   n_clusters_per_class=2, class_sep=1.5, random_state=seed)
        spec = ModelSpec("mlp", 20, 6, hidden=(256, 256))
    x = x.astype(np.float32)
    rest, test = train_test_split(np.arange(len(y)), test_size=0.2, stratify=y, random_state=seed)
    other, gold = train_test_split(rest, test_size=0.1, stratify=y[rest], random_state=seed)
    weak, unlabeled = train_test_split(other, test_size=0.3, stratify=y[other], random_state=seed)
    return Split(x[weak], y[weak], x[unlabeled], x[gold], y[gold], x[test], y[test], spec)


def as_pipeline(x_gold: np.ndarray, y_gold: np.ndarray, x_weak: np.ndarray, weak_y: np.ndarray,
                x_unlabeled: np.ndarray, x_test: np.ndarray, y_test: np.ndarray, classes: int,
                image_shape: tuple[int, int, int] | None = None, seed: int = 0, folds: int = 3,
                weak_on_gold: np.ndarray | None = None) -> tuple[PipelineData, WeakLabels]:
    """Arrays as the pipeline's data and weak labels (one weak column): gold rows (in ``folds`` stratified
    cross-fitting folds), weak rows labelled ``weak_y``, unlabeled rows. ``weak_on_gold``: the weak column's
    label on the gold rows too (confident learning then measures its removals there)."""
    features = [f"x{i}" for i in range(x_gold.shape[1])]
    sizes = (len(x_gold), len(x_weak), len(x_unlabeled))
    train = pd.DataFrame(np.concatenate([x_gold, x_weak, x_unlabeled]), columns=features)
    train["label"] = pd.array([*y_gold, *[pd.NA] * (sizes[1] + sizes[2])], dtype="Int64")
    gold_votes = np.full(sizes[0], -1) if weak_on_gold is None else np.asarray(weak_on_gold)
    train["weak_label"] = np.concatenate([gold_votes, weak_y, np.full(sizes[2], -1)]).astype(np.int64)
    train[PROVENANCE] = np.repeat(["gold", "weak", "unlabeled"], sizes)
    train[SPLIT] = train[PROVENANCE]
    train[FOLD] = np.concatenate([gold_folds(np.asarray(y_gold), folds, seed), np.full(sizes[1] + sizes[2], -1)])
    train[ROW_ID] = np.arange(len(train))
    test = pd.DataFrame(x_test, columns=features).assign(label=pd.array(y_test, dtype="Int64"))
    spec = FilesData(train_path=Path("in-memory-train.parquet"), test_path=Path("in-memory-test.parquet"),
                     feature_columns=features, weak_label_columns=["weak_label"], classes=list(range(classes)),
                     image_shape=image_shape, seed=seed)
    data = PipelineData(train=train, test=test, spec=spec, classes=list(range(classes)))
    labels = WeakLabels(row_ids=np.arange(sizes[0], sizes[0] + sizes[1]), hard=np.asarray(weak_y, np.int64),
                        soft=None, stats=pd.DataFrame({"source": ["weak_label"]}))
    return data, labels


def stage_section(spec: ModelSpec, method: str, epochs: int, scope: str | None = None) -> WeakTrainConfig:
    """The weak_train section of a cell: the matrix's network (``spec``), per-epoch CLID for every method."""
    clid = ClidMuConfig(virtual_scope=scope) if scope else ClidMuConfig()
    return WeakTrainConfig(method=method, model=spec.kind, hidden=list(spec.hidden), cnn_width=spec.hidden[0],
                           epochs=epochs, batch_size=TrainSettings.batch_size, clid_mu=clid, clid_monitor=True)


def run_cell(split: Split, kind: str, rate: float, method: str, seed: int, epochs: int) -> tuple[float, float, dict]:
    """(test accuracy, seconds per epoch, figures) of one method on one noisy split."""
    from weakflow.tasks import gold_only, weak_train

    noisy = corrupt_labels(split.y_weak_true, split.spec.num_classes, rate, kind, seed, features=split.x_weak)
    weak_y = split.y_weak_true if method == "oracle" else noisy
    data, labels = as_pipeline(split.x_gold, split.y_gold, split.x_weak, weak_y, split.x_unlabeled, split.x_test,
                               split.y_test, split.spec.num_classes, split.spec.image_shape, seed)
    name = "clid_mu" if method == CLID_ALT else method if method in METHODS else "ce"  # oracle: ce, true labels
    section = stage_section(split.spec, name, epochs, CLID_ALT_SCOPE if method == CLID_ALT else None)
    ctx = RunContext(seed=seed, device="auto", workspace=ROOT / "bench" / "results")
    t = time.perf_counter()
    figures: dict = {}
    if method == "ce_last":  # no gold, no early stopping: the last epoch, after memorising the noise
        torch.manual_seed(seed)
        model = build_model(split.spec)
        model.scale.fit(data.x(data.train))
        model = fit(model, split.x_weak, noisy, TrainSettings(epochs=epochs, seed=seed)).model
    elif method == "gold_only":  # the pipeline's gold-only stage under its default settings
        model = gold_only.compute(ctx, data, GoldOnlyConfig().resolved(section), SelectionConfig()).model
    else:
        weak = weak_train.compute(ctx, data, labels, None, section, SelectionConfig(),
                                  WeakLabelsConfig().confusion_strength)
        model, figures = weak.model, weak.figures
    per_epoch = (time.perf_counter() - t) / epochs
    acc = float((predict_proba(model, split.x_test).argmax(1) == split.y_test).mean())
    return acc, per_epoch, figures


Cell = tuple[str, int, str, float, str]  # (dataset, seed, noise kind, rate, method)


def cell_result(cell: Cell, epochs: int, split: Split | None = None) -> tuple[float, float, dict]:
    dataset, seed, kind, rate, method = cell
    return run_cell(split if split is not None else load(dataset, seed), kind, rate, method, seed, epochs)


@stage_task("methods_cell", limited=False)
def cell_task(cell: Cell, epochs: int) -> tuple[float, float, dict]:
    from weakflow.tasks.lib.parallel import limit_worker_threads

    limit_worker_threads()  # cleanlab runs in-process (tasks/core/label_issues.py): no pool, no start method
    return cell_result(cell, epochs)


@flow(name="weakflow-methods-matrix")
def matrix_flow(cells: list[Cell], epochs: int) -> list[tuple[float, float, dict]]:
    from weakflow.tasks.lib.parallel import run_tasks

    return run_tasks(cell_task, [(cell, epochs) for cell in cells])


def run_matrix(cells: list[Cell], epochs: int, parallel=None) -> list[tuple[float, float, dict]]:
    """Every cell's (accuracy, seconds per epoch, figures), in ``cells`` order: serially here (each
    split loaded once), or with ``parallel`` (a ParallelConfig) as Prefect tasks on its task runner."""
    if parallel is None or parallel.runner == "local":
        splits: dict[tuple[str, int], Split] = {}
        out = []
        for cell in cells:
            if cell[:2] not in splits:
                splits[cell[:2]] = load(*cell[:2])
            a, c, figures = cell_result(cell, epochs, splits[cell[:2]])
            print(f"{cell[0]} {cell[2]}{cell[3]} {cell[4]} seed {cell[1]}: {a:.4f} ({c * 1000:.0f} ms/epoch)", flush=True)
            out.append((a, c, figures))
        return out
    from weakflow.tasks.lib.parallel import with_runner

    return with_runner(matrix_flow, parallel)(cells, epochs)


def epoch_cost(dataset: str, repeats: int = 3) -> list[str]:
    """Seconds per epoch of CE vs CLID-MU (full look-ahead with a meta update every 1, 2, 4 steps; head-only
    look-ahead every step), warm, median of repeats."""
    split = load(dataset, 0)
    noisy = corrupt_labels(split.y_weak_true, split.spec.num_classes, 0.4, "symmetric", 0)
    meta = torch.as_tensor(split.x_unlabeled)
    epochs = 8

    def once(rule=None) -> float:
        t = time.perf_counter()
        fit(build_model(split.spec), split.x_weak, noisy, TrainSettings(epochs=epochs), rule=rule)
        return (time.perf_counter() - t) / epochs

    once()  # warm-up: first-call allocations and kernel selection
    ce = statistics.median(once() for _ in range(repeats))
    ce_mon = statistics.median(
        (lambda: (lambda t0: (fit(build_model(split.spec), split.x_weak, noisy, TrainSettings(epochs=epochs),
                                  monitor=ClidMonitor(meta)), (time.perf_counter() - t0) / epochs)[1])(time.perf_counter()))()
        for _ in range(repeats))
    rows = [f"| {dataset} | ce | {ce * 1000:.0f} | 1.00 |", f"| {dataset} | ce + per-epoch CLID | {ce_mon * 1000:.0f} | {ce_mon / ce:.2f} |"]
    for scope, k in (("full", 1), ("full", 2), ("full", 4), ("head", 1)):
        c = statistics.median(once(ClidMu(meta, ClidMuSettings(meta_interval=k, virtual_scope=scope))) for _ in range(repeats))
        default = " (default)" if ClidMuSettings() == ClidMuSettings(meta_interval=k, virtual_scope=scope) else ""
        rows.append(f"| {dataset} | clid_mu, {scope} look-ahead, meta step every {k}{default} | {c * 1000:.0f} | {c / ce:.2f} |")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--no-write", action="store_true")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--dask-workers", type=int, metavar="N", help="run the cells on a local Dask cluster of N workers")
    where.add_argument("--dask-address", metavar="ADDR", help="run the cells on a running Dask scheduler")
    args = parser.parse_args()
    parallel = None
    if args.dask_workers or args.dask_address:
        from weakflow.tasks.lib.config import ParallelConfig

        parallel = ParallelConfig(runner="dask", n_workers=args.dask_workers, address=args.dask_address)
    seeds = 1 if args.quick else args.seeds
    epochs = 15 if args.quick else args.epochs
    noises = NOISES[1:2] + NOISES[3:4] if args.quick else NOISES
    datasets = ["digits", "generated"]
    methods = ["ce_last", *METHODS, CLID_ALT, "oracle", "gold_only"]
    import mlflow

    results_dir = ROOT / "bench" / "results"
    results_dir.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(f"sqlite:///{results_dir / 'mlflow.db'}")
    name = "weakflow-methods-quick" if args.quick else "weakflow-methods"
    if mlflow.get_experiment_by_name(name) is None:
        mlflow.create_experiment(name, artifact_location=(results_dir / "artifacts").as_uri())
    mlflow.set_experiment(name)
    acc: dict[tuple, list[float]] = {}
    cost: dict[tuple, list[float]] = {}
    cells = [(dataset, seed, kind, rate, method) for dataset in datasets for seed in range(seeds)
             for kind, rate in noises for method in methods]
    for (dataset, seed, kind, rate, method), (a, c, figures) in zip(cells, run_matrix(cells, epochs, parallel)):
        acc.setdefault((dataset, kind, rate, method), []).append(a)
        cost.setdefault((dataset, method), []).append(c)
        with mlflow.start_run(run_name=f"{dataset}-{kind}{rate}-{method}-s{seed}"):
            mlflow.log_params({"dataset": dataset, "noise": kind, "rate": rate, "method": method,
                               "seed": seed, "epochs": epochs})
            mlflow.log_metrics({"test_accuracy": a, "seconds_per_epoch": c,
                                **{k: v for k, v in figures.items() if np.isfinite(v)}})
        if parallel is not None:  # the serial path printed each cell as it finished
            print(f"{dataset} {kind}{rate} {method} seed {seed}: {a:.4f} ({c * 1000:.0f} ms/epoch)", flush=True)
    header = "| dataset | noise | " + " | ".join(methods) + " | best weak method |"
    lines = [header, "|" + "---|" * (len(methods) + 3)]
    for dataset in datasets:
        for kind, rate in noises:
            cells = {m: acc[(dataset, kind, rate, m)] for m in methods}
            best = max(METHODS + (CLID_ALT,), key=lambda m: np.mean(cells[m]))
            row = [mean_std(cells[m]) if m != best else f"**{mean_std(cells[m])}**" for m in methods]
            lines.append(f"| {dataset} | {kind} {int(rate * 100)}% | " + " | ".join(row) + f" | {best} |")
    cost_rows = ["| dataset | method | ms per epoch (mean over the matrix) |", "|---|---|---|"]
    for dataset in datasets:
        for method in methods:
            cost_rows.append(f"| {dataset} | {method} | {np.mean(cost[(dataset, method)]) * 1000:.0f} |")
    epoch_rows = ["| dataset | loop | ms per epoch (median of 3, warm) | × ce |", "|---|---|---|---|"]
    for dataset in datasets:
        epoch_rows += epoch_cost(dataset)
    body = (
        f"## Weak-training methods ({'quick smoke' if args.quick else 'full matrix'}: {seeds} seed(s), {epochs} epochs; "
        "weak-model test accuracy %, mean ± std)\n\n"
        "Every method runs the pipeline's weak_train stage: the gold rows and the weak rows, cross-fitted over the "
        "gold (3 folds and the refit), the epoch best on the out-of-fold gold predictions (CLID-MU ensembles the "
        "snapshots CLID picks, without labels); `ce_last` is cross-entropy on the weak rows alone to the last epoch "
        "(no gold, no early stopping). "
        f"`clid_mu` runs with its default look-ahead (`virtual_scope: {ClidMuConfig().virtual_scope}`), `{CLID_ALT}` "
        f"with the other one (`virtual_scope: {CLID_ALT_SCOPE}`; `full` moves every parameter in the virtual step, "
        "`head` only the classifier head), both with a meta step every step; `oracle` trains on the weak rows' true labels, "
        "`gold_only` on the gold split alone. Best weak method per row in bold. Datasets: scikit-learn digits "
        "(CNN) and a generated 6-class problem (`make_classification`, 3000 rows, MLP).\n\n"
        + "\n".join(lines) + "\n\n### Cost\n\n" + "\n".join(epoch_rows)
        + "\n\nWall per epoch inside the matrix (includes the fold models and the refit, per-epoch CLID and "
        "out-of-fold scoring; confident learning includes its cross-validation folds):\n\n" + "\n".join(cost_rows) + "\n"
    )
    if args.no_write:
        print(body)
    else:
        write_section("methods-quick" if args.quick else "methods", body, module="methods")


if __name__ == "__main__":
    main()
