"""Stage pseudo_label: the weak model's calibrated, confident predictions become labels, once per model.

Every weak model labels the candidates (unlabeled rows, weak rows, and any ``data.unlabeled_path`` pool):
each fold model for the fold model of the final stage, the refit for the final refit, so a fold's final
model never learns its own held-out gold rows through a pseudo label. The temperature is the one fitted on
the weak model's out-of-fold gold logits. ``target_precision`` thresholds come from held-out gold
predictions (for fold f, those of the other folds) and respect the Wilson lower bound of precision; a fold
set's precision is then measured on fold f's own gold rows, which neither its model nor its thresholds
saw; the refit's measured precision is those folds' pooled (a cross-fitted estimate, with its interval).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
from torch import nn

from weakflow.tasks.lib import tracking
from weakflow.tasks.lib.config import Config
from weakflow.tasks.core.calibration import softmax_t
from weakflow.tasks.core.metrics import expected_calibration_error
from weakflow.tasks.core.models import ModelSpec
from weakflow.tasks.core.pseudo import HIST_BINS, DevSet, StreamResult, ThresholdPolicy, per_class_precision
from weakflow.tasks.core.pseudo_stream import label_stream
from weakflow.tasks.core.training import predict_logits
from weakflow.tasks.core.trusted import wilson_interval
from weakflow.tasks.lib.data import FOLD, ROW_ID, PipelineData
from weakflow.tasks.lib.modeling import TrainedModel
from weakflow.tasks.lib.pool import KeptWriter, chain, frame_chunks, parquet_chunks
from weakflow.tasks.pseudo_shards import ShardModel, plan_sources, sharded_label
from weakflow.tasks.lib.stage import stage_task

SMALL_ENOUGH_TO_LOG = 200_000  # kept sets up to this size are logged to MLflow whole; larger ones as a sample


@dataclass
class Calibration:
    temperature: float
    ece: dict[str, float]  # oof_{before,after}: on the out-of-fold gold predictions
    nll: dict[str, float]  # the same for negative log-likelihood, which T minimises (with its prior)


@dataclass(frozen=True)
class Judge:
    """What one labelling model is judged on: its temperature, the held-out gold predictions that set the
    target_precision thresholds (``dev``) and the gold predictions its kept labels' precision is measured on
    (``holdout``: gold rows neither the model nor ``dev`` used; None when there are none)."""

    temperature: float
    dev: DevSet | None
    holdout: DevSet | None


@dataclass
class PseudoLabels:
    path: Path  # Parquet: row_id, split, source, features, pseudo_label, confidence[, soft_<class>]
    policy: ThresholdPolicy
    stream: StreamResult
    calibration: Calibration
    per_class: pd.DataFrame
    holdout_precision: float | None  # measured on held-out gold (None: nothing kept there, or no held-out gold)
    holdout_coverage: float | None
    round: int = 0
    holdout_right: int = 0  # the counts behind holdout_precision and holdout_coverage
    holdout_kept: int = 0
    holdout_rows: int = 0
    _kept: pd.DataFrame | None = field(default=None, repr=False)

    @property
    def candidates(self) -> int:
        return self.stream.rows

    @property
    def kept_count(self) -> int:
        return int(self.stream.kept.sum())

    @property
    def precision_interval(self) -> tuple[float, float] | None:
        """95% Wilson interval of :attr:`holdout_precision`."""
        if not self.holdout_kept:
            return None
        low, high = wilson_interval(self.holdout_right, self.holdout_kept)
        return float(low), float(high)

    @property
    def kept(self) -> pd.DataFrame:
        """The kept rows (read once from :attr:`path`; large pools should read it in batches instead)."""
        if self._kept is None:
            self._kept = pd.read_parquet(self.path)
        return self._kept

    def without(self, drop: np.ndarray, classes: list, path: Path) -> PseudoLabels:
        """A new set without the rows marked in ``drop`` (positions in :attr:`kept`), written to ``path``;
        counts and the per-class table follow. This set is left as it was."""
        from dataclasses import replace

        kept = self.kept[~np.asarray(drop, bool)].reset_index(drop=True)
        kept.to_parquet(path, index=False)
        counts = np.array([(kept["pseudo_label"] == c).sum() for c in classes])
        per_class = self.per_class.assign(kept=counts)
        return replace(self, path=path, stream=replace(self.stream, kept=counts), per_class=per_class, _kept=kept)


@dataclass
class CrossPseudo:
    """The refit's pseudo set (the final refit trains on it) and each fold model's (its fold's final model)."""

    refit: PseudoLabels
    folds: list[PseudoLabels]

    def of(self, fold: int | None) -> PseudoLabels:
        return self.refit if fold is None else self.folds[fold]


def policy_of(cfg: Config) -> ThresholdPolicy:
    p = cfg.pseudo_label
    return ThresholdPolicy(p.policy, p.threshold, p.floor, p.target_precision, p.min_support, p.max_per_class)


def judges(data: PipelineData, trained: TrainedModel, calibrate: bool = True) -> tuple[Judge, list[Judge]]:
    """The refit's judge and each fold model's, from ``trained``'s out-of-fold gold predictions."""
    temperature = trained.temperature if calibrate else 1.0
    probs = softmax_t(trained.oof_logits, temperature)
    labels, conf, true = probs.argmax(1), probs.max(1), data.y(data.rows("gold"))
    fold = data.rows("gold")[FOLD].to_numpy()

    def dev(mask: np.ndarray) -> DevSet:
        return DevSet(labels[mask], conf[mask], true[mask])

    everyone = np.ones(len(fold), bool)
    return (Judge(temperature, dev(everyone), None),
            [Judge(temperature, dev(fold != f), dev(fold == f)) for f in range(len(trained.folds))])


def calibration_of(data: PipelineData, trained: TrainedModel, calibrate: bool = True) -> Calibration:
    """ECE and NLL of the out-of-fold gold predictions before and after the temperature."""
    y = data.y(data.rows("gold"))
    temperature = trained.temperature if calibrate else 1.0
    ece, nll = {}, {}
    for when, t in (("before", 1.0), ("after", temperature)):
        probs = softmax_t(trained.oof_logits, t)
        ece[f"oof_{when}"] = expected_calibration_error(probs, y)
        nll[f"oof_{when}"] = float(-np.log(probs[np.arange(len(y)), y] + 1e-12).mean())
    return Calibration(temperature, ece, nll)


def make_pseudo_labels(data: PipelineData, model: nn.Module, cfg: Config, judge: Judge, calibration: Calibration,
                       out_dir: Path | None = None, round_: int = 0, spec: ModelSpec | None = None) -> PseudoLabels:
    """Label every candidate with ``model`` (logits / ``judge.temperature``) under the configured policy;
    write the kept rows; measure their precision on ``judge.holdout``.

    With ``parallel.shards`` > 1 the candidates are labelled in shards, each a task on the flow's task
    runner (tasks/pseudo_shards.py), with the same result; ``spec`` lets a worker rebuild the network
    from its weights (without it the module itself is shipped)."""
    p = cfg.pseudo_label
    t = judge.temperature

    def score(x: np.ndarray) -> np.ndarray:
        return softmax_t(predict_logits(model, x, device=cfg.device), t)

    splits = ["unlabeled", "weak"] if p.include_weak_rows else ["unlabeled"]
    candidates = data.rows(*splits)
    pool = data.spec.unlabeled_path
    id_offset = int(data.train[ROW_ID].max()) + 1 if len(data.train) else 0
    out_dir = Path(out_dir) if out_dir is not None else cfg.tracking.workspace / "pseudo"
    out_dir.mkdir(parents=True, exist_ok=True)
    writer = KeptWriter(out_dir / f"pseudo-{uuid.uuid4().hex[:12]}-round{round_}.parquet", data.schema,
                        data.classes, soft=cfg.full_train.strategy == "distill")
    shards = cfg.parallel.resolved_shards
    if shards > 1:  # the same two passes, one task per shard (on threads or Dask workers)
        sources = plan_sources(candidates, data.schema, p.chunk_rows, shards, pool, id_offset)
        stream = sharded_label(sources, ShardModel.of(model, spec, t, cfg.device), policy_of(cfg), data.classes,
                               writer, judge.dev, out_dir)
    else:
        parts = [frame_chunks(candidates, data.schema, p.chunk_rows)]
        if pool is not None:
            parts.append(parquet_chunks(pool, data.schema, p.chunk_rows, id_offset=id_offset))
        try:
            stream = label_stream(chain(*parts), score, policy_of(cfg), len(data.classes), writer, dev=judge.dev,
                                  workdir=out_dir, soft=writer.soft)
        finally:
            writer.close()
    table = {"class": data.classes, "candidates": stream.candidates, "kept": stream.kept,
             "threshold": np.minimum(stream.thresholds.astype(float), 1.0), "uncertified": stream.uncertified}
    right = kept = 0
    for name, judged in (("estimated_precision", judge.dev), ("measured_precision", judge.holdout)):
        if judged is None:
            continue
        prec, n = per_class_precision(judged.labels, judged.confidence, judged.true, stream.thresholds)
        hits = np.nan_to_num(prec * n).round().astype(int)
        low, high = wilson_interval(hits, n)
        table |= {name: prec, f"{name}_low": low, f"{name}_high": high, f"{name}_rows": n}
        if name == "measured_precision":
            right, kept = int(hits.sum()), int(n.sum())
    judged = len(judge.holdout.labels) if judge.holdout is not None else 0
    return PseudoLabels(writer.path, policy_of(cfg), stream, calibration, pd.DataFrame(table),
                        right / kept if kept else None, kept / judged if judged else None, round_, right, kept, judged)


def pooled(refit: PseudoLabels, folds: list[PseudoLabels]) -> PseudoLabels:
    """The refit's set with its precision measured as the folds' pooled: each fold set judged on its own
    fold's gold rows (the refit itself has no held-out gold)."""
    from dataclasses import replace

    right, kept = sum(f.holdout_right for f in folds), sum(f.holdout_kept for f in folds)
    judged = sum(f.holdout_rows for f in folds)
    per_class = refit.per_class.copy()
    if folds and "measured_precision_rows" in folds[0].per_class:
        n = sum(f.per_class["measured_precision_rows"].to_numpy() for f in folds)
        hits = sum(np.nan_to_num(f.per_class["measured_precision"].to_numpy() * f.per_class["measured_precision_rows"]
                                 .to_numpy()).round() for f in folds)
        low, high = wilson_interval(hits, n)
        with np.errstate(invalid="ignore", divide="ignore"):
            per_class["measured_precision"] = np.where(n > 0, hits / np.maximum(n, 1), np.nan)
        per_class["measured_precision_low"], per_class["measured_precision_high"] = low, high
        per_class["measured_precision_rows"] = n
    return replace(refit, per_class=per_class, holdout_precision=right / kept if kept else None,
                   holdout_coverage=kept / judged if judged else None, holdout_right=right, holdout_kept=kept,
                   holdout_rows=judged)


def label_all(data: PipelineData, weak: TrainedModel, cfg: Config, out_dir: Path, round_: int = 0) -> CrossPseudo:
    """Every weak model's pseudo set: the refit's (precision pooled from the folds') and each fold model's."""
    calibrate = cfg.pseudo_label.calibrate
    calibration = calibration_of(data, weak, calibrate)
    refit_judge, fold_judges = judges(data, weak, calibrate)
    folds = [make_pseudo_labels(data.fold_view(f), model, cfg, judge, calibration, out_dir / f"fold{f}", round_,
                                weak.spec)
             for f, (model, judge) in enumerate(zip(weak.folds, fold_judges))]
    refit = make_pseudo_labels(data, weak.model, cfg, refit_judge, calibration, out_dir / "refit", round_, weak.spec)
    return CrossPseudo(pooled(refit, folds), folds)


def pseudo_metrics(pseudo: PseudoLabels, data: PipelineData) -> dict[str, float]:
    """The figures a reviewer compares across runs (also logged per self-training round)."""
    m: dict[str, float] = {"candidates": pseudo.candidates, "kept": pseudo.kept_count,
                           "kept_share": pseudo.kept_count / pseudo.candidates if pseudo.candidates else 0.0,
                           "temperature": pseudo.calibration.temperature,
                           **{f"ece_{k}": v for k, v in pseudo.calibration.ece.items()},
                           **{f"nll_{k}": v for k, v in pseudo.calibration.nll.items()}}
    if pseudo.holdout_precision is not None:
        m["holdout_precision"] = pseudo.holdout_precision
        low, high = pseudo.precision_interval or (np.nan, np.nan)
        m |= {"holdout_precision_low": low, "holdout_precision_high": high}
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
def pseudo_label(data: PipelineData, weak: TrainedModel, cfg: Config, parent_run_id: str, experiment_id: str) -> CrossPseudo:
    with tracking.stage_run("pseudo_label", parent_run_id, experiment_id):
        tracking.log_section(cfg.pseudo_label, "pseudo_label")
        mlflow.log_params({"parallel.runner": cfg.parallel.runner, "parallel.shards": cfg.parallel.resolved_shards})
        pseudo = label_all(data, weak, cfg, cfg.tracking.workspace / "pseudo" / parent_run_id)
        log_pseudo_labels(pseudo.refit, data)
        mlflow.log_metrics({f"fold{f}_kept": p.kept_count for f, p in enumerate(pseudo.folds)})
        return pseudo
