"""Thin MLflow helpers shared by the stage tasks: where runs go, one nested run per stage."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd

from weakflow.tasks.lib.config import TrackingConfig
from weakflow.tasks.lib.data import file_sha256
from weakflow.tasks.lib.stage import record_stage_run


def configure(cfg: TrackingConfig) -> str:
    """Point MLflow at the configured store and return the experiment id.

    Called at run time (never at import). With the embedded default the SQLite file and the artifact
    folder live in the workspace, so a run needs no server.
    """
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    if cfg.tracking_uri is None:
        cfg.workspace.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(cfg.resolved_uri)
    experiment = mlflow.get_experiment_by_name(cfg.experiment)
    if experiment is not None:
        return experiment.experiment_id
    location = cfg.artifact_root.as_uri() if cfg.tracking_uri is None else None
    return mlflow.create_experiment(cfg.experiment, artifact_location=location)


@contextlib.contextmanager
def stage_run(stage: str, parent_run_id: str, experiment_id: str) -> Iterator[mlflow.ActiveRun]:
    """A nested run for one stage. Explicit ids, so it works from any thread Prefect runs a task in. It
    carries the pipeline run's model and data tags (:data:`INHERITED_TAGS`), so a stage run found by a
    search still says whose run it is; outside a terminal the stage says it is still running when silent."""
    from weakflow.tasks.lib.progress import stage_progress

    parent_tags = mlflow.MlflowClient().get_run(parent_run_id).data.tags
    inherited = {k: parent_tags[k] for k in INHERITED_TAGS if k in parent_tags}
    with stage_progress(stage), mlflow.start_run(
        run_name=stage, experiment_id=experiment_id, parent_run_id=parent_run_id, nested=True,
        tags={"weakflow.stage": stage} | inherited,
    ) as run:
        record_stage_run(run.info.run_id)  # closed as FAILED if the stage runs past its time limit
        yield run


INHERITED_TAGS = ("weakflow.model_name", "weakflow.data_source")  # copied from the pipeline run to its stages


def pipeline_run_name(model_name: str, started: datetime, rows: int | None = None) -> str:
    """What the MLflow run list shows for a pipeline run: model, rows (once validate read them), start time,
    e.g. ``weakflow-sms-classifier · 5,574 rows · 2026-12-06 21:40``."""
    parts = [model_name, *([f"{rows:,} rows"] if rows is not None else []), f"{started:%Y-%m-%d %H:%M}"]
    return " · ".join(parts)


def pipeline_tags(cfg: Any) -> dict[str, str]:
    """The pipeline run's tags known before any data is read: the model it registers and the data source
    (``demo``, ``demo_text`` or ``files``: a user's own files)."""
    return {"weakflow.stage": "pipeline", "weakflow.model_name": cfg.tracking.model_name,
            "weakflow.data_source": cfg.data.source}


# An unlabeled pool is the input meant to be huge (streamed by row group): above this size the run records its
# path and size, not a hash (reading it all again, outside any stage's limit, would cost every run minutes).
HASHED_POOL_BYTES = 256 << 20


def name_pipeline_run(run_id: str, model_name: str, started: datetime, data: Any) -> None:
    """Once validate has read the data: the run's name gets its row count (training and test rows), and
    the run is tagged with each data file's resolved path and SHA-256, so runs on different data (or on
    a changed file at the same path) can be told apart and filtered in the run list."""
    spec = data.spec
    rows = len(data.train) + len(data.test)
    tags = {"weakflow.rows": str(rows)}
    for role, path in (("train", spec.train_path), ("test", spec.test_path), ("unlabeled", spec.unlabeled_path)):
        if path is not None:
            path = Path(path)
            tags[f"weakflow.{role}_path"] = str(path.resolve())
            tags[f"weakflow.{role}_bytes"] = str(path.stat().st_size)
            if role != "unlabeled" or path.stat().st_size <= HASHED_POOL_BYTES:
                tags[f"weakflow.{role}_sha256"] = file_sha256(path)
    from mlflow.entities import RunTag

    client = mlflow.MlflowClient()
    client.log_batch(run_id, tags=[RunTag(key, value) for key, value in tags.items()])
    client.update_run(run_id, name=pipeline_run_name(model_name, started, rows))


def flatten(section: Any, prefix: str) -> dict[str, Any]:
    """A config section (pydantic model or dict) as ``prefix.key.sub`` -> value, nested sections included."""
    raw = section.model_dump(mode="json") if hasattr(section, "model_dump") else dict(section)
    out: dict[str, Any] = {}
    for key, value in raw.items():
        if isinstance(value, dict):
            out |= flatten(value, f"{prefix}.{key}")
        else:
            out[f"{prefix}.{key}"] = value
    return out


def log_section(section: Any, prefix: str, exclude: set[str] | None = None, extra: dict[str, Any] | None = None) -> None:
    """Log one config section as MLflow params (the one way every stage records its settings); ``exclude``:
    top-level keys left out (e.g. a list logged as an artifact instead), ``extra``: params added beside."""
    raw = section.model_dump(mode="json", exclude=exclude) if hasattr(section, "model_dump") else section
    mlflow.log_params(flatten(raw, prefix) | (extra or {}))


def log_headline_params(cfg: Any) -> None:
    """The settings a reviewer filters pipeline runs by (the whole config is the run's config.yaml)."""
    mlflow.log_params({"data.source": cfg.data.source, "seed": cfg.seed, "weak_train.method": cfg.weak_train.method,
                       "weak_labels.aggregation": cfg.weak_labels.aggregation,
                       "pseudo_label.policy": cfg.pseudo_label.policy, "full_train.strategy": cfg.full_train.strategy,
                       "selection.folds": cfg.selection.folds, "selection.ship": cfg.selection.ship})


def log_json(obj: Any, artifact_file: str) -> None:
    mlflow.log_text(json.dumps(obj, indent=2, default=str), artifact_file)


def log_frame(frame: pd.DataFrame, artifact_path: str, name: str) -> None:
    """A DataFrame as Parquet (exact) and, when small, CSV (readable in the UI)."""
    with tempfile.TemporaryDirectory() as tmp:
        frame.to_parquet(Path(tmp) / f"{name}.parquet", index=False)
        if len(frame) <= 20_000:
            frame.to_csv(Path(tmp) / f"{name}.csv", index=False)
        mlflow.log_artifacts(tmp, artifact_path)


def log_history(history: list) -> None:
    """Per-epoch metrics with their step, in one batch call (one SQLite write, not hundreds)."""
    from mlflow.entities import Metric

    run_id = mlflow.active_run().info.run_id
    now = int(time.time() * 1000)
    metrics = []
    for h in history:
        values = {"train_loss": h.train_loss, "dev_accuracy": h.dev_accuracy, "dev_loss": h.dev_loss, **h.extra}
        for key, value in values.items():
            if value is not None:
                metrics.append(Metric(key, float(value), now, h.epoch))
    for start in range(0, len(metrics), 900):
        mlflow.MlflowClient().log_batch(run_id, metrics=metrics[start : start + 900])


def log_provenance(frame: pd.DataFrame, name: str) -> None:
    """A training set's rows with their label and its source, as an MLflow dataset input (and a file),
    so a reviewer can see where every training label came from."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dataset = mlflow.data.from_pandas(frame, name=name, targets="label")
        mlflow.log_input(dataset, context="training")
    log_frame(frame, "provenance", name)
    counts = frame["label_source"].map(lambda s: s.split(":")[0] + (":" + s.split(":")[1] if s.startswith("pseudo") else ""))
    log_json(counts.value_counts().to_dict(), f"provenance/{name}_counts.json")
