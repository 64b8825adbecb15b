"""Stage 5, full training: a fresh network on gold + pseudo labels, by one of four strategies.

- ``augment``: one run on gold + pseudo rows, pseudo rows weighted by their calibrated confidence;
- ``pretrain_finetune``: pseudo rows first, then gold only at a tenth of the learning rate;
- ``self_train``: rounds of augment -> relabel the pool with the new model -> expand, until the pseudo
  set stops growing or gold-dev accuracy falls (tasks/core/selftrain.py); each round a nested MLflow run;
  every relabelled set goes through the same pseudo_near_test check and policy as the weak model's;
- ``distill``: gold one-hot + the kept rows' full calibrated probability vectors as soft targets.

Every strategy keeps the best gold-dev epoch of its (last) fit.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import mlflow
import numpy as np
import pandas as pd

from tasks.stage import stage_task
from tasks import tracking
from tasks.config import Config
from tasks.core.selftrain import Round, SelfTrainResult, self_train
from tasks.core.training import EpochStats, fit
from tasks.data import ROW_ID, SPLIT, PipelineData
from tasks.governance import Findings, GovernanceError, check_pseudo, log_findings
from tasks.modeling import TrainedModel, new_model, settings
from tasks.progress import epoch_bar
from tasks.pseudo_label import PseudoLabels, log_pseudo_labels, make_pseudo_labels

OnEpoch = Callable[[EpochStats], None] | None


@dataclass
class FullModel(TrainedModel):
    pseudo: PseudoLabels | None = None  # the pseudo set the returned model trained on
    rounds: SelfTrainResult | None = None  # self_train only
    # self_train only: the pseudo_near_test check on the set this model relabelled (logged in its round's run)
    relabel_findings: Findings | None = None


def _pseudo_part(data: PipelineData, pseudo: PseudoLabels, cfg: Config) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    kept = pseudo.kept
    x = kept[data.features].to_numpy(dtype=np.float32)
    y = np.searchsorted(np.asarray(data.classes), kept["pseudo_label"].to_numpy())
    w = kept["confidence"].to_numpy(np.float32) if cfg.full_train.pseudo_weight == "confidence" else np.ones(len(kept))
    return x, y, w


def _dev(data: PipelineData) -> dict[str, np.ndarray]:
    dev = data.rows("gold_dev")
    return {"x_dev": data.x(dev), "y_dev": data.y(dev)}


def augment(data: PipelineData, pseudo: PseudoLabels, cfg: Config, on_epoch: OnEpoch = None) -> FullModel:
    gold = data.rows("gold_train")
    xp, yp, wp = _pseudo_part(data, pseudo, cfg)
    model, spec = new_model(data, cfg.full_train, cfg.seed)
    result = fit(model, np.concatenate([data.x(gold), xp]), np.concatenate([data.y(gold), yp]),
                 settings(cfg.full_train, cfg), weights=np.concatenate([np.ones(len(gold)), wp]),
                 on_epoch=on_epoch, **_dev(data))
    return FullModel(result.model, spec, result.history, result.best_epoch, pseudo)


def pretrain_finetune(data: PipelineData, pseudo: PseudoLabels, cfg: Config, on_epoch: OnEpoch = None) -> FullModel:
    stage = cfg.full_train
    xp, yp, wp = _pseudo_part(data, pseudo, cfg)
    if len(xp) == 0:
        raise ValueError("full_train: pretrain_finetune needs pseudo labels, but none cleared the threshold")
    gold = data.rows("gold_train")
    model, spec = new_model(data, stage, cfg.seed)
    pre = fit(model, xp, yp, settings(stage, cfg), weights=wp, on_epoch=on_epoch, **_dev(data))
    fine = fit(pre.model, data.x(gold), data.y(gold), settings(stage, cfg, epochs=stage.finetune_epochs, lr=stage.lr / 10),
               on_epoch=on_epoch, **_dev(data))
    history = pre.history + [EpochStats(h.epoch + len(pre.history), h.train_loss, h.dev_accuracy, h.dev_loss)
                             for h in fine.history]
    return FullModel(fine.model, spec, history, fine.best_epoch + len(pre.history), pseudo)


def distill(data: PipelineData, pseudo: PseudoLabels, cfg: Config, on_epoch: OnEpoch = None) -> FullModel:
    kept = pseudo.kept
    soft_cols = [f"soft_{c}" for c in data.classes]
    if not set(soft_cols) <= set(kept.columns):
        raise ValueError("full_train: distill needs the pseudo set's soft labels; it was written without them "
                         "(make_pseudo_labels writes them when full_train.strategy is distill)")
    gold = data.rows("gold_train")
    xp, _, wp = _pseudo_part(data, pseudo, cfg)
    targets = np.concatenate([np.eye(len(data.classes), dtype=np.float32)[data.y(gold)],
                              kept[soft_cols].to_numpy(np.float32)])
    model, spec = new_model(data, cfg.full_train, cfg.seed)
    result = fit(model, np.concatenate([data.x(gold), xp]), targets, settings(cfg.full_train, cfg),
                 weights=np.concatenate([np.ones(len(gold)), wp]), on_epoch=on_epoch, **_dev(data))
    return FullModel(result.model, spec, result.history, result.best_epoch, pseudo)


def self_training(data: PipelineData, pseudo: PseudoLabels, cfg: Config, on_epoch: OnEpoch = None,
                  on_round: Callable[[Round[FullModel, PseudoLabels]], None] | None = None) -> FullModel:
    rules = cfg.full_train.self_train
    out_dir = pseudo.path.parent

    def train_round(i: int, current: PseudoLabels) -> tuple[FullModel, float]:
        model = augment(data, current, cfg, on_epoch)
        return model, model.best_dev_accuracy or 0.0

    failed: dict[int, GovernanceError] = {}

    def relabel(i: int, model: FullModel) -> PseudoLabels:
        # the student trained on gold_train, so precision measured there would be in-sample: not reported
        relabelled = make_pseudo_labels(data, model.model, cfg, out_dir, round_=i, held_out=False, spec=model.spec)
        # the same pseudo_near_test check and policy as the weak model's set: without it a row dropped as
        # near a test row would come back in the next round
        try:
            relabelled, model.relabel_findings = check_pseudo(data, relabelled, cfg)
        except GovernanceError as exc:  # raised once the round is logged, findings included (notify)
            model.relabel_findings, failed[i] = exc.findings, exc
        return relabelled

    def notify(rnd: Round[FullModel, PseudoLabels]) -> None:
        if on_round is not None:
            on_round(rnd)
        if rnd.index in failed:  # policy fail: stop before any round trains on the contaminated set
            raise failed[rnd.index]

    result = self_train(pseudo, lambda p: p.kept_count, train_round, relabel, rules.max_rounds, rules.min_growth,
                        rules.dev_tolerance, notify)
    chosen = result.model
    chosen.rounds = result
    return chosen


def training_provenance(data: PipelineData, trained: FullModel) -> pd.DataFrame:
    """Every row the final model trained on: gold rows, and pseudo rows with their round and origin."""
    gold = data.rows("gold_train")
    parts = [pd.DataFrame({ROW_ID: gold[ROW_ID].to_numpy(), "label": gold[data.label].astype(int).to_numpy(),
                           "label_source": "gold"})]
    if trained.pseudo is not None and trained.pseudo.kept_count:
        kept = trained.pseudo.kept
        parts.append(pd.DataFrame({ROW_ID: kept[ROW_ID].to_numpy(), "label": kept["pseudo_label"].to_numpy(),
                                   "label_source": [f"pseudo:round{trained.pseudo.round}:{s}" for s in kept[SPLIT]]}))
    return pd.concat(parts, ignore_index=True)


STRATEGIES = {"augment": augment, "pretrain_finetune": pretrain_finetune, "distill": distill}


def train_full(data: PipelineData, pseudo: PseudoLabels, cfg: Config, on_epoch: OnEpoch = None,
               on_round: Callable[[Round], None] | None = None) -> FullModel:
    if cfg.full_train.strategy == "self_train":
        return self_training(data, pseudo, cfg, on_epoch, on_round)
    return STRATEGIES[cfg.full_train.strategy](data, pseudo, cfg, on_epoch)


def log_round(rnd: Round[FullModel, PseudoLabels], data: PipelineData, parent_run_id: str, experiment_id: str) -> None:
    """One nested run per self-training round: its training curve, the set its model relabelled (after
    the pseudo_near_test policy) and that check's findings."""
    with tracking.stage_run(f"self_train_round_{rnd.index}", parent_run_id, experiment_id):
        tracking.log_history(rnd.model.history)
        mlflow.log_metrics({"round": rnd.index, "dev_accuracy": rnd.dev_accuracy, "trained_on_pseudo": rnd.trained_on,
                            **({"relabelled": rnd.relabelled} if rnd.relabelled is not None else {})})
        if rnd.model.relabel_findings is not None:
            log_findings(rnd.model.relabel_findings)
        if rnd.pseudo is not None:
            log_pseudo_labels(rnd.pseudo, data, prefix=f"relabelled_round_{rnd.index}")


@stage_task("full_train")
def full_train(data: PipelineData, pseudo: PseudoLabels, cfg: Config, parent_run_id: str, experiment_id: str) -> FullModel:
    stage = cfg.full_train
    with tracking.stage_run("full_train", parent_run_id, experiment_id) as run:
        mlflow.log_params({f"full_train.{k}": v for k, v in stage.model_dump().items() if k != "self_train"})
        if stage.strategy == "self_train":
            mlflow.log_params({f"full_train.self_train.{k}": v for k, v in stage.self_train.model_dump().items()})
        per_fit = stage.epochs + (stage.finetune_epochs if stage.strategy == "pretrain_finetune" else 0)
        total = per_fit * (stage.self_train.max_rounds if stage.strategy == "self_train" else 1)
        with epoch_bar("full_train", total) as bar:
            trained = train_full(data, pseudo, cfg, on_epoch=bar,
                                 on_round=lambda r: log_round(r, data, run.info.run_id, experiment_id))
        tracking.log_history(trained.history)
        tracking.log_provenance(training_provenance(data, trained), "full_training_set")
        metrics = {"best_epoch": trained.best_epoch, "best_dev_accuracy": trained.best_dev_accuracy or 0.0,
                   "train_rows_gold": len(data.rows("gold_train")),
                   "train_rows_pseudo": trained.pseudo.kept_count if trained.pseudo else 0}
        if trained.rounds is not None:
            metrics |= {"rounds": len(trained.rounds.rounds), "chosen_round": trained.rounds.chosen + 1}
            mlflow.set_tag("self_train.stop_reason", trained.rounds.stop_reason)
        mlflow.log_metrics(metrics)
        mlflow.log_dict(trained.spec.to_dict(), "model_spec.json")
        return trained
