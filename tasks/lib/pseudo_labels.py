"""The pseudo-label sets (what the pseudo_label stage makes, the governance checks filter and the full
training learns from): the typed results, and the scoring both the pseudo_label stage and every
self-training round (tasks/full_train.py) run, below the stages so neither imports the other.

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
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from weakflow.tasks.core.calibration import softmax_t
from weakflow.tasks.core.metrics import expected_calibration_error
from weakflow.tasks.core.pseudo import DevSet, StreamResult, ThresholdPolicy, per_class_precision
from weakflow.tasks.core.trusted import wilson_interval
from weakflow.tasks.lib.data import FOLD, ROW_ID, PipelineData

if TYPE_CHECKING:
    from torch import nn

    from weakflow.tasks.core.models import ModelSpec
    from weakflow.tasks.lib.config import ParallelConfig, PseudoLabelConfig
    from weakflow.tasks.lib.modeling import TrainedModel

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

    def summary(self) -> str:
        """The run summary's line: the policy's thresholds after calibration, what was kept, how precise."""
        interval = self.precision_interval
        precision = (f"{self.holdout_precision:.3f} [{interval[0]:.3f}, {interval[1]:.3f}]"
                     if self.holdout_precision is not None and interval else "n/a")
        return (f"{self.policy.kind} thresholds {self.threshold_text()} after temperature "
                f"{self.calibration.temperature:.2f}: kept {self.kept_count} of {self.candidates}; precision on "
                f"held-out gold {precision}")

    def threshold_text(self) -> str:
        """The certified classes' thresholds, as one value or a range (2 decimals)."""
        t = np.minimum(self.stream.thresholds.astype(float), 1.0)
        if self.stream.uncertified.all():
            return "none certified"
        lo, hi = float(t[~self.stream.uncertified].min()), float(t[~self.stream.uncertified].max())
        return f"{lo:.2f}" if round(lo, 2) == round(hi, 2) else f"{lo:.2f}-{hi:.2f}"

    def without(self, drop: np.ndarray, classes: list, path: Path) -> PseudoLabels:
        """A new set without the rows marked in ``drop`` (positions in :attr:`kept`), written to ``path``;
        counts and the per-class table follow. This set is left as it was."""
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


def policy_of(section: PseudoLabelConfig) -> ThresholdPolicy:
    p = section
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


def make_pseudo_labels(data: PipelineData, model: nn.Module, section: PseudoLabelConfig, parallel: ParallelConfig,
                       device: str, judge: Judge, calibration: Calibration, out_dir: Path, *, soft: bool,
                       round_: int = 0, spec: ModelSpec | None = None) -> PseudoLabels:
    """Label every candidate with ``model`` (logits / ``judge.temperature``) under ``section``'s policy;
    write the kept rows under ``out_dir`` (with ``soft``, also each row's calibrated probabilities: what
    ``full_train.strategy: distill`` learns); measure their precision on ``judge.holdout``.

    With ``parallel.shards`` > 1 the candidates are labelled in shards, each a task on the flow's task
    runner (tasks/lib/pseudo_shards.py), with the same result; ``spec`` lets a worker rebuild the network
    from its weights (without it the module itself is shipped)."""
    from weakflow.tasks.core.pseudo_stream import label_stream
    from weakflow.tasks.core.training import predict_logits
    from weakflow.tasks.lib.pool import KeptWriter, chain, frame_chunks, parquet_chunks, score_batch_for
    from weakflow.tasks.lib.pseudo_shards import ShardModel, plan_sources, sharded_label

    p = section
    t = judge.temperature
    policy = policy_of(p)
    batch = score_batch_for(data.schema)  # pictures: a few hundred per forward pass (flat memory)

    def score(x: np.ndarray) -> np.ndarray:
        return softmax_t(predict_logits(model, x, device=device, batch_size=batch), t)

    splits = ["unlabeled", "weak"] if p.include_weak_rows else ["unlabeled"]
    candidates = data.rows(*splits)
    pool = data.spec.unlabeled_path
    id_offset = int(data.train[ROW_ID].max()) + 1 if len(data.train) else 0
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    writer = KeptWriter(out_dir / f"pseudo-{uuid.uuid4().hex[:12]}-round{round_}.parquet", data.schema,
                        data.classes, soft=soft)
    shards = parallel.resolved_shards
    if shards > 1:  # the same two passes, one task per shard (on threads or Dask workers)
        sources = plan_sources(candidates, data.schema, p.chunk_rows, shards, pool, id_offset)
        stream = sharded_label(sources, ShardModel.of(model, spec, t, device, batch), policy, data.classes,
                               writer, judge.dev, out_dir)
    else:
        parts = [frame_chunks(candidates, data.schema, p.chunk_rows)]
        if pool is not None:
            parts.append(parquet_chunks(pool, data.schema, p.chunk_rows, id_offset=id_offset))
        try:
            stream = label_stream(chain(*parts), score, policy, len(data.classes), writer, dev=judge.dev,
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
    return PseudoLabels(writer.path, policy, stream, calibration, pd.DataFrame(table),
                        right / kept if kept else None, kept / judged if judged else None, round_, right, kept, judged)


def pooled(refit: PseudoLabels, folds: list[PseudoLabels]) -> PseudoLabels:
    """The refit's set with its precision measured as the folds' pooled: each fold set judged on its own
    fold's gold rows (the refit itself has no held-out gold)."""
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


def label_all(data: PipelineData, weak: TrainedModel, section: PseudoLabelConfig, parallel: ParallelConfig,
              device: str, out_dir: Path, *, soft: bool, round_: int = 0) -> CrossPseudo:
    """Every weak model's pseudo set: the refit's (precision pooled from the folds') and each fold model's,
    under ``out_dir``/refit and ``out_dir``/fold<k>."""
    calibrate = section.calibrate
    calibration = calibration_of(data, weak, calibrate)
    refit_judge, fold_judges = judges(data, weak, calibrate)
    folds = [make_pseudo_labels(data.fold_view(f), model, section, parallel, device, judge, calibration,
                                out_dir / f"fold{f}", soft=soft, round_=round_, spec=weak.spec)
             for f, (model, judge) in enumerate(zip(weak.folds, fold_judges))]
    refit = make_pseudo_labels(data, weak.model, section, parallel, device, refit_judge, calibration,
                               out_dir / "refit", soft=soft, round_=round_, spec=weak.spec)
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
