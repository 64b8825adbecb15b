"""Sharded pseudo-labelling of a Parquet pool: in shards (tasks, run one after another outside a flow,
or on a real local Dask cluster through prefect-dask) it writes exactly what the single-process stream
writes: the same rows in the same order, labels, thresholds, counts; confidences to float tolerance."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from weakflow.tasks.lib.config import Config, ParallelConfig, parse_config
from weakflow.tasks.lib.data import ROW_ID
from weakflow.tasks.lib.pseudo_labels import PseudoLabels, calibration_of, judges, make_pseudo_labels
from weakflow.tasks.validate import load_and_validate
from weakflow.tasks.weak_labels import make_weak_labels
from weakflow.tasks import weak_train
from weakflow.tasks.lib.steps import RunContext
from tests.conftest import fast_config

POOL_ROWS = 50_000
ROW_GROUP = 4_000  # 13 row groups


def write_pool(train_path: Path, features: list[str], path: Path) -> Path:
    base = pd.read_parquet(train_path)[features].to_numpy(np.float32)
    rng = np.random.default_rng(0)
    x = np.clip(base[rng.integers(0, len(base), POOL_ROWS)] + rng.normal(0, 0.6, (POOL_ROWS, len(features))), 0, 16)
    table = pa.Table.from_arrays([pa.array(x[:, i].astype(np.float32)) for i in range(len(features))], names=features)
    pq.write_table(table, path, row_group_size=ROW_GROUP)
    return path


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """The demo MLP trained briefly, and the demo's data plus a 50k-row pool (not re-validated: the
    pool is clean by construction)."""
    ws = tmp_path_factory.mktemp("ws")
    demo = fast_config(ws, "data.image=false", "weak_train.epochs=5")
    data, _ = load_and_validate(demo)
    weak = weak_train.compute(RunContext.of(demo), data, make_weak_labels(data, demo), None, demo.weak_train,
                              demo.selection, demo.weak_labels.confusion_strength)
    pool = write_pool(data.spec.train_path, data.features, ws / "pool.parquet")
    data = replace(data, spec=data.spec.model_copy(update={"unlabeled_path": pool}))
    base = {"data": data.spec.model_dump(mode="json"), "tracking": {"workspace": str(ws)},
            "pseudo_label": {"chunk_rows": 3_000}}
    return base, data, weak


def label(data, weak, cfg: Config, out: Path) -> PseudoLabels:
    """The refit weak model's pseudo set (judged on every gold row's out-of-fold prediction)."""
    return make_pseudo_labels(data, weak.model, cfg.pseudo_label, cfg.parallel, cfg.device, judges(data, weak)[0],
                              calibration_of(data, weak), out, soft=cfg.full_train.strategy == "distill", spec=weak.spec)


def config(base: dict, parallel: dict | None = None, **pseudo) -> Config:
    raw = {**base, "pseudo_label": {**base["pseudo_label"], **pseudo}}
    return parse_config({**raw, "parallel": parallel} if parallel else raw)


def assert_same(a: PseudoLabels, b: PseudoLabels) -> None:
    ka, kb = pd.read_parquet(a.path), pd.read_parquet(b.path)
    assert len(ka) == a.kept_count > 0
    assert ka[ROW_ID].tolist() == kb[ROW_ID].tolist()  # the same rows, in the same order
    assert ka.drop(columns=["confidence"]).equals(kb.drop(columns=["confidence"]))
    assert np.allclose(ka["confidence"], kb["confidence"], atol=1e-6)
    assert np.array_equal(a.stream.thresholds, b.stream.thresholds)
    for name in ("candidates", "kept", "histogram"):
        assert np.array_equal(getattr(a.stream, name), getattr(b.stream, name)), name
    assert a.stream.rows == b.stream.rows == 1293 + POOL_ROWS
    pd.testing.assert_frame_equal(a.per_class, b.per_class)


@pytest.mark.parametrize("pseudo", [{"policy": "target_precision", "target_precision": 0.8},
                                    {"policy": "per_class", "threshold": 0.95, "max_per_class": 3_000}])
def test_shards_without_dask_equal_the_single_stream(setup, pseudo, tmp_path):
    """Outside a flow the shard tasks run one after another here: the runner=local fallback."""
    base, data, weak = setup
    one = label(data, weak, config(base, **pseudo), tmp_path / "one")
    sharded = label(data, weak, config(base, {"shards": 5}, **pseudo), tmp_path / "five")
    assert_same(sharded, one)
    assert not list((tmp_path / "five").glob("shards-*"))  # part files are cleaned up


@pytest.fixture(scope="module")
def cluster():
    """A real distributed.LocalCluster: 2 worker processes, 1 thread each (not daemonic, as
    make_task_runner's: confident learning's cleanlab starts processes of its own)."""
    import dask
    from distributed import LocalCluster

    with dask.config.set({"distributed.worker.daemon": False}), \
            LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as c:
        yield c


def ran_on_workers(cluster, name: str) -> int:
    """How many tasks whose key starts with ``name`` finished on the cluster's workers."""
    return sum(tp.state_counts["memory"] for prefix, tp in cluster.scheduler.task_prefixes.items() if prefix == name)


@pytest.mark.slow
def test_sharded_pseudo_labelling_on_a_local_dask_cluster_equals_single_process(prefect_harness, setup, cluster,
                                                                                 tmp_path):
    """8 shards (1 of the in-memory rows, 7 of the pool's row groups), each scored and written by a
    Prefect task on a Dask worker process; soft probabilities (distill) included."""
    from prefect import flow

    from weakflow.tasks.lib.parallel import with_runner

    base, data, weak = setup
    distill = {"full_train": {"strategy": "distill"}}
    cfg = parse_config({**base, **distill, "parallel": {"runner": "dask", "address": cluster.scheduler_address,
                                                         "shards": 8}})

    @flow(name="dask-pseudo-label-test")
    def label_on_dask(out: Path) -> PseudoLabels:
        return label(data, weak, cfg, out)

    on_dask = with_runner(label_on_dask, cfg.parallel)
    assert type(on_dask.task_runner).__name__ == "DaskTaskRunner"
    dask = on_dask(tmp_path / "dask")
    assert ran_on_workers(cluster, "score_shard_task") == ran_on_workers(cluster, "write_shard_task") == 8
    single = label(data, weak, parse_config({**base, **distill}), tmp_path / "single")
    assert single.stream.rows == dask.stream.rows
    assert_same(dask, single)
    a, b = pd.read_parquet(dask.path), pd.read_parquet(single.path)
    soft = [c for c in a.columns if c.startswith("soft_")]
    assert len(soft) == 10 and np.allclose(a[soft], b[soft], atol=1e-6)


@pytest.mark.slow
def test_methods_matrix_cells_on_dask_equal_the_serial_run(prefect_harness, cluster):
    """bench.methods' cells as Prefect tasks on the cluster give the serial run's accuracies (one
    torch thread both ways, as on a worker)."""
    import torch

    from bench.methods import run_matrix

    cells = [("generated", 0, "symmetric", 0.4, "ce"), ("generated", 0, "symmetric", 0.4, "gce"),
             ("generated", 1, "pairflip", 0.4, "confident_learning")]
    before = ran_on_workers(cluster, "cell_task")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        serial = run_matrix(cells, epochs=3)
    finally:
        torch.set_num_threads(threads)
    dask = run_matrix(cells, epochs=3, parallel=ParallelConfig(runner="dask", address=cluster.scheduler_address))
    assert ran_on_workers(cluster, "cell_task") - before == len(cells)
    assert [a for a, _, _ in dask] == [a for a, _, _ in serial]


def test_dask_config_needs_a_cluster_and_builds_the_runner_lazily():
    import sys

    from weakflow.tasks.lib.config import ConfigError, load_config
    from weakflow.tasks.lib.parallel import make_task_runner, with_runner

    with pytest.raises(ConfigError, match="needs address"):
        load_config(None, ["parallel.runner=dask"])
    with pytest.raises(ConfigError, match="not both"):
        load_config(None, ["parallel.runner=dask", "parallel.n_workers=2", "parallel.address=tcp://h:8786"])
    with pytest.raises(ConfigError, match="set parallel.runner=dask"):
        load_config(None, ["parallel.n_workers=2"])
    local = load_config(None).parallel
    assert local.resolved_shards == 1 and type(make_task_runner(local)).__name__ == "ThreadPoolTaskRunner"
    sentinel = object()
    assert with_runner(sentinel, local) is sentinel  # runner=local: the flow as it is
    cfg = load_config(None, ["parallel.runner=dask", "parallel.n_workers=3"]).parallel
    assert cfg.resolved_shards == 6
    runner = make_task_runner(cfg)  # nothing starts until a flow enters it
    assert runner.cluster_kwargs == {"n_workers": 3, "threads_per_worker": 1, "processes": True,
                                     "dashboard_address": None}
    assert "distributed" in sys.modules  # imported now, by prefect_dask


@pytest.mark.slow
def test_fold_models_train_as_tasks_on_a_local_dask_cluster(prefect_harness, cluster):
    """Cross-fitting with ``parallel.training`` in a flow on the Dask runner: each fold model is one task on a
    worker process (one torch thread there), and the epoch chosen and the out-of-fold logits are those of the
    same cross-fitting in this process with one torch thread."""
    import torch
    from prefect import flow

    from tests.code.test_crossfit import MEMORISING, problem, wide
    from weakflow.tasks.core.crossfit import fit_folds
    from weakflow.tasks.core.training import WeightedLoss
    from weakflow.tasks.lib.parallel import with_runner
    from weakflow.tasks.lib.spread_training import on_task_runner

    x, y, gold = problem(noise=1.0)
    before = ran_on_workers(cluster, "train_span_task")

    @flow(name="dask-crossfit-test")
    def crossfit():
        return fit_folds(wide, x, y, gold, MEMORISING, rule=lambda _f: WeightedLoss(), spread=on_task_runner)

    on_dask = with_runner(crossfit, ParallelConfig(runner="dask", address=cluster.scheduler_address))()
    assert ran_on_workers(cluster, "train_span_task") - before == gold.k
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        here = fit_folds(wide, x, y, gold, MEMORISING, rule=lambda _f: WeightedLoss())
    finally:
        torch.set_num_threads(threads)
    assert on_dask.best_epoch == here.best_epoch < MEMORISING.epochs - 1
    np.testing.assert_allclose(on_dask.oof_logits, here.oof_logits, atol=1e-5)
    for a, b in zip(on_dask.folds, here.folds, strict=True):
        for (name, p), q in zip(a.state_dict().items(), b.state_dict().values()):
            torch.testing.assert_close(p, q, atol=1e-5, rtol=1e-4, msg=name)


def test_tasks_a_stage_sends_to_dask_leave_the_stage_inputs_behind(prefect_harness):
    """Prefect ships the submitting task run's context, its parameters included, with every task it sends to a
    Dask worker: from inside a stage, that was the stage's whole input (the table, the pictures' cache) once
    per task. The sent tasks must carry only their own arguments (Dask warns past 10 MB a graph)."""
    import warnings

    from prefect import flow, task
    from prefect_dask import DaskTaskRunner

    from weakflow.tasks.lib.parallel import run_tasks

    @task
    def child(i: int) -> int:
        return i * 2

    @task
    def stage(table: np.ndarray) -> list[int]:  # a stage holding 24 MB of input
        return run_tasks(child, [(i,) for i in range(3)])

    @flow(task_runner=DaskTaskRunner(cluster_kwargs={"processes": False, "n_workers": 1, "threads_per_worker": 2,
                                                     "dashboard_address": None}))
    def pipeline() -> list[int]:
        return stage(np.ones((3_000_000, 2), np.float32))

    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        assert pipeline() == [0, 2, 4]
    large = [str(w.message).splitlines()[0] for w in seen if "large graph" in str(w.message)]
    assert large == []
