"""Stage 4, pseudo-labelling: the weak model's calibrated, confident predictions become labels.

Temperature scaling is fitted on the gold dev split, then the configured threshold policy picks one
threshold per class, the candidates (unlabeled rows, weak rows, and any ``data.unlabeled_path`` pool)
are streamed in chunks and the kept rows written to Parquet as they come. Precision is estimated on
gold dev and measured on gold_train rows, which the weak model never trained on.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
from torch import nn

from tasks.stage import stage_task
from tasks import tracking
from tasks.config import Config
from tasks.core.calibration import fit_temperature, softmax_t
from tasks.core.metrics import expected_calibration_error
from tasks.core.models import ModelSpec
from tasks.core.pseudo import HIST_BINS, DevSet, StreamResult, ThresholdPolicy, per_class_precision
from tasks.core.pseudo_stream import label_stream
from tasks.core.training import predict_logits
from tasks.data import ROW_ID, PipelineData
from tasks.modeling import TrainedModel
from tasks.pool import KeptWriter, chain, frame_chunks, parquet_chunks
from tasks.pseudo_shards import ShardModel, plan_sources, sharded_label

SMALL_ENOUGH_TO_LOG = 200_000  # kept sets up to this size are logged to MLflow whole; larger ones as a sample


@dataclass
class Calibration:
    temperature: float
    ece: dict[str, float]  # {dev,holdout}_{before,after}
    nll: dict[str, float]  # the same for negative log-likelihood, which T minimises on dev


@dataclass
class PseudoLabels:
    path: Path  # Parquet: row_id, split, source, features, pseudo_label, confidence[, soft_<class>]
    policy: ThresholdPolicy
    stream: StreamResult
    calibration: Calibration
    per_class: pd.DataFrame
    holdout_precision: float | None  # on gold rows the labelling model never trained on (None: none kept/in-sample)
    holdout_coverage: float | None
    round: int = 0
    _kept: pd.DataFrame | None = field(default=None, repr=False)

    @property
    def candidates(self) -> int:
        return self.stream.rows

    @property
    def kept_count(self) -> int:
        return int(self.stream.kept.sum())

    @property
    def kept(self) -> pd.DataFrame:
        """The kept rows (read once from :attr:`path`; large pools should read it in batches instead)."""
        if self._kept is None:
            self._kept = pd.read_parquet(self.path)
        return self._kept


def policy_of(cfg: Config) -> ThresholdPolicy:
    p = cfg.pseudo_label
    return ThresholdPolicy(p.policy, p.threshold, p.floor, p.target_precision, p.min_support, p.max_per_class)


def calibrate(model: nn.Module, data: PipelineData, cfg: Config) -> Calibration:
    """Temperature on gold dev; ECE before/after on dev (fitted on) and on gold_train (held out)."""
    dev, holdout = data.rows("gold_dev"), data.rows("gold_train")
    dev_logits = predict_logits(model, data.x(dev), device=cfg.device)
    temperature = fit_temperature(dev_logits, data.y(dev)) if cfg.pseudo_label.calibrate and len(dev) else 1.0
    ece: dict[str, float] = {}
    nll: dict[str, float] = {}
    for name, frame, logits in (("dev", dev, dev_logits),
                                ("holdout", holdout, predict_logits(model, data.x(holdout), device=cfg.device))):
        if len(frame):
            y = data.y(frame)
            for when, t in (("before", 1.0), ("after", temperature)):
                probs = softmax_t(logits, t)
                ece[f"{name}_{when}"] = expected_calibration_error(probs, y)
                nll[f"{name}_{when}"] = float(-np.log(probs[np.arange(len(y)), y] + 1e-12).mean())
    return Calibration(temperature, ece, nll)


def make_pseudo_labels(data: PipelineData, model: nn.Module, cfg: Config, out_dir: Path | None = None,
                       round_: int = 0, held_out: bool = True, spec: ModelSpec | None = None) -> PseudoLabels:
    """Label every candidate with ``model`` (calibrated) under the configured policy; write kept rows.

    ``held_out``: gold_train rows were not trained on by ``model`` (true for the weak model, false for
    self-training students), so precision measured on them is an honest estimate.

    With ``parallel.shards`` > 1 the candidates are labelled in shards, each a task on the flow's task
    runner (tasks/pseudo_shards.py), with the same result; ``spec`` lets a worker rebuild the network
    from its weights (without it the module itself is shipped)."""
    p = cfg.pseudo_label
    calibration = calibrate(model, data, cfg)
    t = calibration.temperature

    def score(x: np.ndarray) -> np.ndarray:
        return softmax_t(predict_logits(model, x, device=cfg.device), t)

    splits = ["unlabeled", "weak"] if p.include_weak_rows else ["unlabeled"]
    candidates = data.rows(*splits)
    pool = data.spec.unlabeled_path
    id_offset = int(data.train[ROW_ID].max()) + 1 if len(data.train) else 0
    dev, holdout = data.rows("gold_dev"), data.rows("gold_train")
    dev_probs = score(data.x(dev))
    dev_set = DevSet(dev_probs.argmax(1), dev_probs.max(1), data.y(dev))
    out_dir = Path(out_dir) if out_dir is not None else cfg.tracking.workspace / "pseudo"
    out_dir.mkdir(parents=True, exist_ok=True)
    writer = KeptWriter(out_dir / f"pseudo-{uuid.uuid4().hex[:12]}-round{round_}.parquet", data.features,
                        data.classes, soft=cfg.full_train.strategy == "distill")
    shards = cfg.parallel.resolved_shards
    if shards > 1:  # the same two passes, one task per shard (on threads or Dask workers)
        sources = plan_sources(candidates, data.features, p.chunk_rows, shards, pool, id_offset)
        stream = sharded_label(sources, ShardModel.of(model, spec, t, cfg.device), policy_of(cfg), data.classes,
                               writer, dev_set, out_dir)
    else:
        parts = [frame_chunks(candidates, data.features, p.chunk_rows)]
        if pool is not None:
            parts.append(parquet_chunks(pool, data.features, p.chunk_rows, id_offset=id_offset))
        try:
            stream = label_stream(chain(*parts), score, policy_of(cfg), len(data.classes), writer, dev=dev_set,
                                  workdir=out_dir, soft=writer.soft)
        finally:
            writer.close()
    est, est_n = per_class_precision(dev_set.labels, dev_set.confidence, dev_set.true, stream.thresholds)
    hold_probs = score(data.x(holdout))
    hold_labels, hold_conf = hold_probs.argmax(1), hold_probs.max(1)
    meas, meas_n = per_class_precision(hold_labels, hold_conf, data.y(holdout), stream.thresholds)
    per_class = pd.DataFrame({
        "class": data.classes, "candidates": stream.candidates, "kept": stream.kept,
        "threshold": stream.thresholds.astype(float), "fell_back_to_base": stream.fell_back,
        "estimated_precision_dev": est, "dev_rows": est_n,
        "measured_precision_holdout": meas if held_out else np.nan, "holdout_rows": meas_n if held_out else 0,
        "cap_cutoff": np.where(np.isfinite(stream.cap_cutoff), stream.cap_cutoff, np.nan),
    })
    kept_holdout = int(meas_n.sum())
    precision = float(np.nansum(meas * meas_n) / kept_holdout) if held_out and kept_holdout else None
    coverage = kept_holdout / len(holdout) if held_out and len(holdout) else None
    return PseudoLabels(writer.path, policy_of(cfg), stream, calibration, per_class, precision, coverage, round_)


def pseudo_metrics(pseudo: PseudoLabels, data: PipelineData) -> dict[str, float]:
    """The figures a reviewer compares across runs (also logged per self-training round)."""
    m: dict[str, float] = {"candidates": pseudo.candidates, "kept": pseudo.kept_count,
                           "kept_share": pseudo.kept_count / pseudo.candidates if pseudo.candidates else 0.0,
                           "temperature": pseudo.calibration.temperature,
                           **{f"ece_{k}": v for k, v in pseudo.calibration.ece.items()},
                           **{f"nll_{k}": v for k, v in pseudo.calibration.nll.items()}}
    if pseudo.holdout_precision is not None:
        m["holdout_precision"] = pseudo.holdout_precision
    if pseudo.holdout_coverage is not None:
        m["holdout_coverage"] = pseudo.holdout_coverage
    if pseudo.kept_count <= SMALL_ENOUGH_TO_LOG:
        kept = pseudo.kept
        train_rows = kept[kept["source"] == "train"].merge(data.train[[ROW_ID, *data.spec.weak_label_columns]], on=ROW_ID)
        for col in data.spec.weak_label_columns:
            voted = train_rows[train_rows[col] != data.spec.abstain]
            if len(voted):
                m[f"agreement_with_{col}"] = float((voted["pseudo_label"] == voted[col]).mean())
    return m


def log_pseudo_labels(pseudo: PseudoLabels, data: PipelineData, prefix: str = "pseudo_labels") -> None:
    """Metrics, the per-class table, the kept set (or a sample of a huge one) and the confidence histogram."""
    import matplotlib.pyplot as plt

    mlflow.log_metrics(pseudo_metrics(pseudo, data))
    mlflow.log_table(pseudo.per_class, f"{prefix}/per_class.json")
    tracking.log_frame(pseudo.per_class, prefix, "per_class")
    if pseudo.kept_count <= SMALL_ENOUGH_TO_LOG:
        tracking.log_frame(pseudo.kept, prefix, "kept")
    else:  # the full set stays in the workspace; MLflow gets its location and a sample to look at
        mlflow.set_tag("pseudo_labels.path", str(pseudo.path.resolve()))
        import pyarrow.parquet as pq

        sample = next(pq.ParquetFile(pseudo.path).iter_batches(batch_size=10_000)).to_pandas()
        tracking.log_frame(sample, prefix, "kept_sample")
    fig = confidence_histogram(pseudo)
    mlflow.log_figure(fig, f"{prefix}/confidence_histogram.png")
    plt.close(fig)


def confidence_histogram(pseudo: PseudoLabels):  # -> matplotlib Figure
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    edges = np.linspace(0, 1, HIST_BINS + 1)
    ax.bar(edges[:-1], pseudo.stream.histogram, width=1 / HIST_BINS, align="edge", color="#4c72b0")
    lo, hi = float(pseudo.stream.thresholds.min()), float(pseudo.stream.thresholds.max())
    ax.axvline(lo, color="#c44e52", linestyle="--", label=f"threshold {lo:.3g}" if lo == hi else f"thresholds {lo:.3g}-{hi:.3g}")
    if hi != lo:
        ax.axvline(hi, color="#c44e52", linestyle="--")
    ax.set_xlabel(f"calibrated confidence (T = {pseudo.calibration.temperature:.2f})")
    ax.set_ylabel("rows")
    ax.set_title(f"{pseudo.policy.kind}: {pseudo.kept_count} of {pseudo.candidates} kept")
    ax.legend()
    fig.tight_layout()
    return fig


@stage_task("pseudo_label")
def pseudo_label(data: PipelineData, weak: TrainedModel, cfg: Config, parent_run_id: str, experiment_id: str) -> PseudoLabels:
    with tracking.stage_run("pseudo_label", parent_run_id, experiment_id):
        mlflow.log_params({f"pseudo_label.{k}": v for k, v in cfg.pseudo_label.model_dump().items()}
                          | {"parallel.runner": cfg.parallel.runner, "parallel.shards": cfg.parallel.resolved_shards})
        pseudo = make_pseudo_labels(data, weak.model, cfg, cfg.tracking.workspace / "pseudo" / parent_run_id,
                                    spec=weak.spec)
        log_pseudo_labels(pseudo, data)
        return pseudo
