"""Weak-training methods matrix: datasets x noise x methods (+ clean oracle and gold-only), seeds.

Each cell trains the weak model only (the stage the methods differ in) on the demo's splits: 20% test,
10% gold (a third of it dev), the rest 70% weak / 30% unlabeled; test accuracy of the weak model.
All cells are logged to one MLflow experiment (bench/results/mlflow.db) and summarised in
docs/benchmarks.md.

    python -m bench.methods            # full matrix, 3 seeds (~20 min on 2 cores)
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
from dataclasses import dataclass, replace

import numpy as np
import torch

from prefect import flow

from bench.common import ROOT, mean_std, write_section
from weakflow.tasks.core.clid import ClidMonitor, ClidMu, ClidMuSettings
from weakflow.tasks.core.methods import METHODS, train_weak_model
from weakflow.tasks.core.models import ModelSpec, build_model
from weakflow.tasks.core.noise import corrupt_labels
from weakflow.tasks.core.training import TrainSettings, fit, predict_proba
from weakflow.tasks.lib.stage import stage_task

NOISES = [("symmetric", 0.2), ("symmetric", 0.4), ("symmetric", 0.6), ("pairflip", 0.4), ("instance", 0.4)]
# CLID-MU beside its default: the other virtual-step scope ("full": the look-ahead moves every parameter;
# "head": the classifier head only, a cheap meta step), meta step every step.
CLID_ALT_SCOPE = "full" if ClidMuSettings().virtual_scope == "head" else "head"
CLID_ALT = f"clid_mu_{CLID_ALT_SCOPE}"


@dataclass
class Split:
    x_weak: np.ndarray
    y_weak_true: np.ndarray
    x_unlabeled: np.ndarray
    x_gold: np.ndarray
    y_gold: np.ndarray
    x_dev: np.ndarray
    y_dev: np.ndarray
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
    gold_train, dev = train_test_split(gold, test_size=1 / 3, stratify=y[gold], random_state=seed)
    weak, unlabeled = train_test_split(other, test_size=0.3, stratify=y[other], random_state=seed)
    return Split(x[weak], y[weak], x[unlabeled], x[gold_train], y[gold_train], x[dev], y[dev], x[test], y[test], spec)


def run_cell(split: Split, kind: str, rate: float, method: str, seed: int, epochs: int,
             clid: ClidMuSettings) -> tuple[float, float, dict]:
    """(test accuracy, seconds per epoch, figures) of one method on one noisy split."""
    noisy = corrupt_labels(split.y_weak_true, split.spec.num_classes, rate, kind, seed, features=split.x_weak)
    all_x = np.concatenate([split.x_weak, split.x_unlabeled, split.x_gold, split.x_dev])

    def build():
        model = build_model(split.spec)
        model.scale.fit(all_x)
        return model

    settings = TrainSettings(epochs=epochs, seed=seed)
    meta_x = np.concatenate([split.x_unlabeled, split.x_weak])[:1000]
    dev = {"x_dev": split.x_dev, "y_dev": split.y_dev}
    torch.manual_seed(seed)
    t = time.perf_counter()
    figures: dict = {}
    if method == "ce_last":  # no gold-dev early stopping: the last epoch, after memorising the noise
        model = fit(build(), split.x_weak, noisy, settings).model
    elif method == "oracle":
        model = fit(build(), split.x_weak, split.y_weak_true, settings, **dev).model
    elif method == "gold_only":
        model = fit(build(), split.x_gold, split.y_gold, replace(settings, batch_size=32), **dev).model
    else:
        name = "clid_mu" if method.startswith("clid_mu") else method
        fitted = train_weak_model(name, build, split.x_weak, noisy, settings, meta_x=meta_x, clid=clid, **dev)
        model, figures = fitted.result.model, fitted.figures
    per_epoch = (time.perf_counter() - t) / epochs
    acc = float((predict_proba(model, split.x_test).argmax(1) == split.y_test).mean())
    return acc, per_epoch, figures


Cell = tuple[str, int, str, float, str]  # (dataset, seed, noise kind, rate, method)


def cell_result(cell: Cell, epochs: int, split: Split | None = None) -> tuple[float, float, dict]:
    dataset, seed, kind, rate, method = cell
    clid = ClidMuSettings(seed=seed) if method != CLID_ALT else ClidMuSettings(virtual_scope=CLID_ALT_SCOPE, seed=seed)
    return run_cell(split if split is not None else load(dataset, seed), kind, rate, method, seed, epochs, clid)


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
        "`ce_last` is cross-entropy without gold-dev early stopping (last epoch); every other method keeps its "
        "best gold-dev epoch, except CLID-MU, which selects snapshots by CLID without labels. "
        f"`clid_mu` runs with its default look-ahead (`virtual_scope: {ClidMuSettings().virtual_scope}`), `{CLID_ALT}` "
        f"with the other one (`virtual_scope: {CLID_ALT_SCOPE}`; `full` moves every parameter in the virtual step, "
        "`head` only the classifier head), both with a meta step every step; `oracle` trains on the weak rows' true labels, "
        "`gold_only` on the gold split alone. Best weak method per row in bold. Datasets: scikit-learn digits "
        "(CNN) and a generated 6-class problem (`make_classification`, 3000 rows, MLP).\n\n"
        + "\n".join(lines) + "\n\n### Cost\n\n" + "\n".join(epoch_rows)
        + "\n\nWall per epoch inside the matrix (includes per-epoch CLID and dev scoring; confident learning includes its "
        "cross-validation folds):\n\n" + "\n".join(cost_rows) + "\n"
    )
    if args.no_write:
        print(body)
    else:
        write_section("methods-quick" if args.quick else "methods", body, module="methods")


if __name__ == "__main__":
    main()
