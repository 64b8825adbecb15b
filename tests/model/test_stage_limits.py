"""A run never hangs: no stage forks the pipeline process, and a stage past its time limit fails the run
with a message (real Prefect flow under the test harness, real MLflow store, real cleanlab and torch)."""

from __future__ import annotations

import os
import threading
import time

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient
from prefect import flow

from weakflow.tasks.lib import tracking
from weakflow.tasks.lib.config import Config, FilesData
from weakflow.tasks.core.methods import ConfidentLearningSettings, confident_learning_keep
from weakflow.tasks.core.models import ModelSpec, build_model
from weakflow.tasks.core.training import TrainSettings
from weakflow.tasks.lib.data import PipelineData
from weakflow.tasks.report.build import label_issues
from weakflow.tasks.lib.stage import StageTimeout, stage_task
from weakflow.tasks.weak_labels import WeakLabels
from tests.conftest import fast_config

_FORKS: list[str] = []
_COUNTING = threading.Event()


def _count_fork() -> None:
    if _COUNTING.is_set():
        _FORKS.append(threading.current_thread().name)


_REGISTERED = False


def _watch_forks() -> None:
    global _REGISTERED
    if not _REGISTERED:  # at-fork hooks cannot be removed; one hook, switched by the event
        os.register_at_fork(before=_count_fork)
        _REGISTERED = True


def _noisy_problem(seed: int = 0) -> tuple[PipelineData, WeakLabels, ModelSpec]:
    """Three Gaussian blobs, 20% of the weak labels flipped: cleanlab has real issues to find."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, 600)
    x = (rng.normal(size=(600, 4)) + 2.5 * np.eye(3, 4)[y]).astype(np.float32)
    weak = np.where(rng.random(600) < 0.2, (y + 1) % 3, y)
    frame = pd.DataFrame(x, columns=[f"f{i}" for i in range(4)])
    frame["label"], frame["w"] = pd.array([pd.NA] * 600, dtype="Int64"), weak
    frame["provenance"], frame["split"], frame["row_id"] = "weak", "weak", np.arange(600)
    spec = FilesData(train_path="t.csv", test_path="s.csv", feature_columns=list(frame.columns[:4]),
                     weak_label_columns=["w"])
    data = PipelineData(train=frame, test=frame.head(0), spec=spec, classes=[0, 1, 2])
    labels = WeakLabels(row_ids=np.arange(600), hard=weak, soft=None, stats=pd.DataFrame())
    return data, labels, ModelSpec("mlp", 4, 3, hidden=(16,))


@flow(name="label-issue-step-repeated")
def _repeat_label_issues(times: int) -> list[int]:
    data, labels, spec = _noisy_problem()
    model = build_model(spec)
    model.scale.fit(data.x(data.train))
    found = [len(label_issues(data, labels, model, "cpu")[0]) for _ in range(times)]
    # the confident_learning weak-training method calls the same cleanlab filter (twice per fit)
    x, y = data.x(data.train), labels.hard
    _, figures = confident_learning_keep(lambda: build_model(spec), x, y, TrainSettings(epochs=2),
                                         ConfidentLearningSettings(folds=2))
    found.append(int(figures["cl_removed"]))
    return found


@pytest.mark.timeout(300)  # the bug was a hang: without the fix this test fails here, or on the fork count
def test_label_issue_step_never_forks_inside_a_flow(prefect_harness):
    _watch_forks()
    _FORKS.clear()
    _COUNTING.set()
    try:
        found = _repeat_label_issues(25)
    finally:
        _COUNTING.clear()
    assert _FORKS == [], f"the pipeline process forked {len(_FORKS)} time(s) (threads: {_FORKS[:3]})"
    assert len(found) == 26 and all(n > 0 for n in found[:25]), found  # issues were really computed


AFTER_RELEASE: list[str] = []


@stage_task("blocks_in_c")
def _blocking_stage(cfg: Config, parent_run_id: str, experiment_id: str, release: threading.Event) -> str:
    with tracking.stage_run("blocks_in_c", parent_run_id, experiment_id):
        release.wait()  # a wait inside C: an exception raised into this thread is only seen once it wakes
        AFTER_RELEASE.append("went on")  # e.g. registering a model: an abandoned stage must never get here
    return "released"


@flow(name="limited-stage")
def _limited_flow(cfg: Config, release: threading.Event) -> str:
    experiment_id = tracking.configure(cfg.tracking)
    with mlflow.start_run(run_name="pipeline", experiment_id=experiment_id) as parent:
        return _blocking_stage(cfg, parent.info.run_id, experiment_id, release)


@pytest.mark.timeout(120)  # without the limit the stage would wait forever
def test_stage_past_its_time_limit_fails_the_run_with_its_name(prefect_harness, tmp_path):
    cfg = fast_config(tmp_path, "limits.stage_seconds=1.5")
    release = threading.Event()
    start = time.perf_counter()
    try:
        with pytest.raises(StageTimeout, match=r"stage blocks_in_c ran past its time limit of 1.5 s "
                                               r"\(setting limits.stage_seconds\)"):
            _limited_flow(cfg, release)
        elapsed = time.perf_counter() - start
    finally:
        release.set()  # wake the abandoned thread: it must stop, not go on
    assert elapsed < 60
    time.sleep(1.0)
    assert AFTER_RELEASE == []
    client = MlflowClient(cfg.tracking.resolved_uri)
    runs = client.search_runs([client.get_experiment_by_name(cfg.tracking.experiment).experiment_id])
    by_name = {r.info.run_name: r for r in runs}
    assert by_name["blocks_in_c"].info.status == "FAILED"
    assert "time limit" in by_name["blocks_in_c"].data.tags["weakflow.failure"]
    assert by_name["pipeline"].info.status == "FAILED"


def test_stage_within_its_limit_returns_its_value(prefect_harness, tmp_path):
    cfg = fast_config(tmp_path)
    release = threading.Event()
    release.set()
    AFTER_RELEASE.clear()
    assert _limited_flow(cfg, release) == "released"
    assert AFTER_RELEASE == ["went on"]
