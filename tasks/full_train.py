"""Stage full_train: a fresh network on gold + weak + pseudo labels, cross-fitted, by one of four strategies.

Each fold model trains on the gold rows outside its fold, on the weak rows through their votes' evidence
(measured without that fold's gold rows), and on the pseudo set its own fold's weak model kept; the refit
on all gold and the refit's pseudo set. Where a weak row was kept as a pseudo label, the pseudo label
(the weak model's calibrated, confident belief) replaces its votes. The loss is tasks.core.methods.
EvidenceLoss (``full_train.loss``: gce bounds what a wrong vote or pseudo label can do; the gold rows are
learnt with plain CE either way).

- ``augment``: one fit on all of that, pseudo rows weighted by their calibrated confidence;
- ``pretrain_finetune``: pseudo (and weak) rows first, then gold only (CE) at a tenth of the learning rate;
- ``self_train``: rounds of augment -> relabel the candidates with the new models -> expand, until the
  pseudo set stops growing or the out-of-fold gold accuracy falls (tasks/core/selftrain.py); each round
  a nested MLflow run under the stage's (logged by the recording half once training ends, or once a
  round's check failed); every relabelled set goes through the same pseudo_near_test check and policy;
- ``distill``: gold one-hot + the kept rows' full calibrated probability vectors as soft targets.

Every strategy stops at the epoch best on the out-of-fold gold predictions.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import mlflow
import numpy as np
import pandas as pd

from weakflow.tasks.core.methods import NEVER, EvidenceLoss, as_evidence, log_one_hot
from weakflow.tasks.core.models import LogitEnsemble
from weakflow.tasks.core.selftrain import Round, self_train
from weakflow.tasks.core.training import EpochStats
from weakflow.tasks.lib import tracking
from weakflow.tasks.lib.check_records import log_findings
from weakflow.tasks.lib.checks import Findings, GovernanceError, check_all_pseudo
from weakflow.tasks.lib.config import (
    FullTrainConfig, GovernanceConfig, ParallelConfig, PseudoLabelConfig, SelectionConfig,
)
from weakflow.tasks.lib.data import ROW_ID, SPLIT, PipelineData
from weakflow.tasks.lib.modeling import TrainedModel, crossfit, gold_first, settings
from weakflow.tasks.lib.pool import SOURCE
from weakflow.tasks.lib.pseudo_labels import CrossPseudo, label_all
from weakflow.tasks.lib.pseudo_records import log_pseudo_labels
from weakflow.tasks.lib.recording import log_candidate
from weakflow.tasks.lib.results import FullModel, WeakLabels, WeakModel
from weakflow.tasks.lib.steps import RunContext, Stage

OnEpoch = Callable[[EpochStats], None] | None


@dataclass(frozen=True)
class FinalSetup:
    """What the final trainers read: the run, the stage's own section, the selection section (bagged
    refits, temperature prior) and, for self-training's relabelling, the pseudo-label, parallel and
    governance sections (every relabelled set is labelled and checked as the weak models' sets were)."""

    ctx: RunContext
    section: FullTrainConfig
    selection: SelectionConfig
    pseudo_label: PseudoLabelConfig
    parallel: ParallelConfig
    governance: GovernanceConfig


class RoundCheckFailed(GovernanceError):
    """A self-training round's relabelled set failed its pseudo_near_test check (policy ``fail``): the
    check's message and findings, and every round done so far (the failing one last, its model carrying
    the findings), so the stage's record of the failure can log each round's run."""

    def __init__(self, message: str, findings: Findings | None = None,
                 rounds: list[Round[FullModel, CrossPseudo]] | None = None) -> None:
        super().__init__(message, findings)
        self.rounds = rounds or []


@dataclass
class FinalTable:
    """The rows every final trainer draws from (gold first, then weak rows, then pseudo rows any set kept),
    and per trainer its evidence targets and weights (0 = not in that trainer's set)."""

    frame: pd.DataFrame
    targets: dict[int | None, np.ndarray]
    weights: dict[int | None, np.ndarray]
    counts: dict[str, int]  # the refit's rows by origin
    provenance: pd.DataFrame  # the refit's rows: row_id, label (its most likely class), label_source


def final_table(data: PipelineData, labels: WeakLabels, weak: WeakModel, pseudo: CrossPseudo,
                section: FullTrainConfig, soft_pseudo: bool = False) -> FinalTable:
    """Gold rows (their label); the weak rows the weak model trained on (their votes' evidence, measured
    without the trainer's own gold fold, refined as the weak model's was); every row any pseudo set kept
    (its pseudo label, or with ``soft_pseudo`` its calibrated probabilities, weighted by confidence per
    ``full_train.pseudo_weight``).
    Where a trainer's pseudo set kept a weak row, the pseudo label replaces its votes there."""
    classes = np.asarray(data.classes)
    num_classes = len(classes)
    gold = data.rows("gold")
    trainers: list[int | None] = [*range(len(pseudo.folds)), None]
    sets = {t: pseudo.of(t).kept for t in trainers}
    union = pd.concat(sets.values(), ignore_index=True).drop_duplicates([SOURCE, ROW_ID], ignore_index=True)
    weak_ids = weak.row_ids if weak.row_ids is not None else np.zeros(0, np.int64)
    weak_frame = data.train.set_index(ROW_ID).loc[weak_ids].reset_index()
    position = pd.Series(np.arange(len(labels.row_ids)), index=labels.row_ids).loc[weak_ids].to_numpy()
    frame = pd.concat([gold, weak_frame, union[[*data.inputs, ROW_ID, SPLIT]].assign(fold=-1)], ignore_index=True)
    n_gold, n_weak = len(gold), len(weak_frame)
    union_index = pd.MultiIndex.from_frame(union[[SOURCE, ROW_ID]])
    targets: dict[int | None, np.ndarray] = {}
    weights: dict[int | None, np.ndarray] = {}
    counts: dict[str, int] = {}
    for t in trainers:
        y = np.full((len(frame), num_classes), NEVER, dtype=np.float32)
        w = np.zeros(len(frame), dtype=np.float32)
        y[:n_gold], w[:n_gold] = log_one_hot(data.y(gold), num_classes), 1.0
        kept = sets[t]
        own = ~np.isin(weak_ids, kept.loc[kept[SOURCE] == "train", ROW_ID].to_numpy())
        # the votes as the weak model learnt them (refined on the weak rows where it refined them)
        evidence = as_evidence((weak.evidence[t] if weak.evidence else labels.evidence(t, num_classes))[position])
        y[n_gold:n_gold + n_weak][own] = evidence[own]
        w[n_gold:n_gold + n_weak][own] = 1.0
        at = union_index.get_indexer(pd.MultiIndex.from_frame(kept[[SOURCE, ROW_ID]])) + n_gold + n_weak
        if soft_pseudo:
            y[at] = np.log(np.clip(kept[[f"soft_{c}" for c in classes]].to_numpy(np.float32), 1e-4, None))
        else:
            y[at] = log_one_hot(data.y(kept.rename(columns={"pseudo_label": data.label})), num_classes)
        w[at] = kept["confidence"].to_numpy(np.float32) if section.pseudo_weight == "confidence" else 1.0
        targets[t], weights[t] = y, w
        if t is None:
            counts = {"gold": n_gold, "weak": int(own.sum()), "pseudo": len(kept)}
            used = w > 0
            source = np.array(["gold"] * n_gold + ["weak:votes"] * n_weak
                              + [f"pseudo:round{pseudo.refit.round}:{s}" for s in union[SPLIT]], dtype=object)
            provenance = pd.DataFrame({ROW_ID: frame[ROW_ID].to_numpy()[used], "label": classes[y[used].argmax(1)],
                                       "label_source": source[used]})
    return FinalTable(frame, targets, weights, counts, provenance)


def _fit(data: PipelineData, table: FinalTable, setup: FinalSetup, on_epoch: OnEpoch, weights=None,
         **kwargs) -> TrainedModel:
    stage = setup.section
    gold_rows = len(data.rows("gold"))  # first in the table (gold_first); learnt with CE
    return crossfit(data, table.frame, lambda t: table.targets[t], stage, setup.ctx, setup.selection,
                    weights=weights or (lambda t: table.weights[t]), on_epoch=on_epoch,
                    rule=lambda _t: EvidenceLoss(stage.loss, stage.gce_q, gold_rows=gold_rows), **kwargs)


def _full(trained: TrainedModel, pseudo: CrossPseudo, table: FinalTable) -> FullModel:
    return FullModel(trained.model, trained.spec, trained.history, trained.best_epoch, trained.folds,
                     trained.oof_logits, trained.temperature, pseudo.refit, train_rows=table.counts,
                     provenance=table.provenance, folds_sampled=trained.folds_sampled)


def warm_start(weak: WeakModel, section: FullTrainConfig):  # -> Callable[[int | None], nn.Module] | None
    """``full_train.init: weak``: each final trainer starts from a copy of its own fold's weak model (the
    refit from the weak refit, member i of a bagged refit from its member i), so the final stage refines
    rather than relearns. Not from CLID-MU's snapshot ensembles (every fold model is one)."""
    import copy

    if section.init != "weak" or any(isinstance(m, LogitEnsemble) for m in weak.folds):
        return None
    start = {**dict(enumerate(weak.folds)), None: weak.model}
    return lambda t: copy.deepcopy(start[t]).train()


def augment(data: PipelineData, labels: WeakLabels, weak: WeakModel, pseudo: CrossPseudo, setup: FinalSetup,
            on_epoch: OnEpoch = None) -> FullModel:
    table = final_table(data, labels, weak, pseudo, setup.section)
    start = warm_start(weak, setup.section)
    return _full(_fit(data, table, setup, on_epoch, build=start, spec=weak.spec if start else None), pseudo, table)


def distill(data: PipelineData, labels: WeakLabels, weak: WeakModel, pseudo: CrossPseudo, setup: FinalSetup,
            on_epoch: OnEpoch = None) -> FullModel:
    soft = [f"soft_{c}" for c in data.classes]
    if not set(soft) <= set(pseudo.refit.kept.columns):
        raise ValueError("full_train: distill needs the pseudo set's soft labels; it was written without them "
                         "(make_pseudo_labels writes them when full_train.strategy is distill)")
    table = final_table(data, labels, weak, pseudo, setup.section, soft_pseudo=True)
    return _full(_fit(data, table, setup, on_epoch), pseudo, table)


def pretrain_finetune(data: PipelineData, labels: WeakLabels, weak: WeakModel, pseudo: CrossPseudo,
                      setup: FinalSetup, on_epoch: OnEpoch = None) -> FullModel:
    stage, ctx = setup.section, setup.ctx
    if pseudo.refit.kept_count == 0:
        raise ValueError("full_train: pretrain_finetune needs pseudo labels, but none was kept")
    table = final_table(data, labels, weak, pseudo, stage)
    n_gold = len(data.rows("gold"))

    def without_gold(t: int | None) -> np.ndarray:
        w = table.weights[t].copy()
        w[:n_gold] = 0.0
        return w

    pre = _fit(data, table, setup, on_epoch, weights=without_gold)
    pretrained = {**dict(enumerate(pre.folds)), None: pre.model}
    gold = gold_first(data)
    fine = crossfit(data, gold, data.y(gold), stage, ctx, setup.selection, on_epoch=on_epoch,
                    train=replace(settings(stage, ctx, epochs=stage.finetune_epochs, lr=stage.lr / 10), loss="ce"),
                    build=lambda t: pretrained[t].train(), spec=pre.spec)
    history = pre.history + [replace(h, epoch=h.epoch + len(pre.history)) for h in fine.history]
    return FullModel(fine.model, fine.spec, history, fine.best_epoch + len(pre.history), fine.folds, fine.oof_logits,
                     fine.temperature, pseudo.refit, train_rows=table.counts, provenance=table.provenance,
                     folds_sampled=pre.folds_sampled)


def self_training(data: PipelineData, labels: WeakLabels, weak: WeakModel, pseudo: CrossPseudo, setup: FinalSetup,
                  on_epoch: OnEpoch = None,
                  on_round: Callable[[Round[FullModel, CrossPseudo]], None] | None = None) -> FullModel:
    """Rounds of augment -> relabel -> check (tasks/core/selftrain.py); ``on_round`` sees each finished round.
    A relabelled set that fails its check raises :class:`RoundCheckFailed` once its round is done, before
    any round trains on it."""
    rules = setup.section.self_train
    out_dir = pseudo.refit.path.parent.parent

    def train_round(i: int, current: CrossPseudo) -> tuple[FullModel, float]:
        model = augment(data, labels, weak, current, setup, on_epoch)
        return model, model.best_dev_accuracy or 0.0

    failed: dict[int, GovernanceError] = {}
    done: list[Round[FullModel, CrossPseudo]] = []

    def relabel(i: int, model: FullModel) -> CrossPseudo:
        # every student relabels for its own fold (the refit for the refit), judged on its out-of-fold gold;
        # hard labels (the self_train strategy never distils)
        relabelled = label_all(data, model_as_labeller(model), setup.pseudo_label, setup.parallel, setup.ctx.device,
                               out_dir / f"round{i}", soft=False, round_=i)
        # the same pseudo_near_test check and policy as the weak models' sets: without it a row dropped as
        # near a test row would come back in the next round
        try:
            relabelled, model.relabel_findings = check_all_pseudo(data, relabelled, setup.governance)
        except GovernanceError as exc:  # raised once the round is done, findings included (notify)
            model.relabel_findings, failed[i] = exc.findings, exc
        return relabelled

    def notify(rnd: Round[FullModel, CrossPseudo]) -> None:
        done.append(rnd)
        if on_round is not None:
            on_round(rnd)
        if rnd.index in failed:  # policy fail: stop before any round trains on the contaminated set
            error = failed[rnd.index]
            raise RoundCheckFailed(str(error), error.findings, list(done))

    result = self_train(pseudo, lambda p: p.refit.kept_count, train_round, relabel, rules.max_rounds, rules.min_growth,
                        rules.dev_tolerance, notify)
    chosen = result.model
    chosen.rounds = result
    return chosen


def model_as_labeller(model: FullModel) -> TrainedModel:
    return TrainedModel(model.model, model.spec, model.history, model.best_epoch, model.folds, model.oof_logits,
                        model.temperature, folds_sampled=model.folds_sampled)


STRATEGIES = {"augment": augment, "pretrain_finetune": pretrain_finetune, "distill": distill}


def train_full(data: PipelineData, labels: WeakLabels, weak: WeakModel, pseudo: CrossPseudo, setup: FinalSetup,
               on_epoch: OnEpoch = None, on_round: Callable[[Round], None] | None = None) -> FullModel:
    strategy = setup.section.strategy
    if strategy == "self_train":
        trained = self_training(data, labels, weak, pseudo, setup, on_epoch, on_round)
    else:
        trained = STRATEGIES[strategy](data, labels, weak, pseudo, setup, on_epoch)
    trained.strategy = strategy  # this stage's own, new result (a self-training round's model is the same object)
    return trained


def log_round(rnd: Round[FullModel, CrossPseudo], data: PipelineData, parent_run_id: str, experiment_id: str) -> None:
    """One nested run per self-training round: its training curve, the set its refit relabelled (after
    the pseudo_near_test policy) and that check's findings."""
    with tracking.stage_run(f"self_train_round_{rnd.index}", parent_run_id, experiment_id):
        tracking.log_history(rnd.model.history)
        mlflow.log_metrics({"round": rnd.index, "oof_gold_accuracy": rnd.dev_accuracy,
                            "trained_on_pseudo": rnd.trained_on,
                            **({"relabelled": rnd.relabelled} if rnd.relabelled is not None else {})})
        if rnd.model.relabel_findings is not None:
            log_findings(rnd.model.relabel_findings)
        if rnd.pseudo is not None:
            log_pseudo_labels(rnd.pseudo.refit, data, prefix=f"relabelled_round_{rnd.index}")


def _log_rounds(rounds: list[Round[FullModel, CrossPseudo]], data: PipelineData) -> None:
    """Each round's nested run, under the full_train stage run (the active run)."""
    run = mlflow.active_run()
    if run is None:
        raise RuntimeError("full_train's recording half runs inside its stage run")
    for rnd in rounds:
        log_round(rnd, data, run.info.run_id, run.info.experiment_id)


# --- the stage ---------------------------------------------------------------------------------------------

def compute(ctx: RunContext, data: PipelineData, labels: WeakLabels, weak: WeakModel, pseudo: CrossPseudo,
            section: FullTrainConfig, selection: SelectionConfig, pseudo_label: PseudoLabelConfig,
            parallel: ParallelConfig, governance: GovernanceConfig, on_epoch: OnEpoch = None) -> FullModel:
    """The final model by ``section.strategy``; self-training relabels under ``pseudo_label``/``parallel``
    and checks each relabelled set under ``governance``."""
    setup = FinalSetup(ctx, section, selection, pseudo_label, parallel, governance)
    return train_full(data, labels, weak, pseudo, setup, on_epoch)


def record(trained: FullModel, ctx: RunContext, data: PipelineData, labels: WeakLabels, weak: WeakModel,
           pseudo: CrossPseudo, section: FullTrainConfig, selection: SelectionConfig, pseudo_label: PseudoLabelConfig,
           parallel: ParallelConfig, governance: GovernanceConfig) -> None:
    if trained.rounds is not None:
        _log_rounds(trained.rounds.rounds, data)
    log_candidate(trained, data)
    if trained.provenance is not None:
        tracking.log_provenance(trained.provenance, "full_training_set")
    metrics = {f"train_rows_{k}": v for k, v in (trained.train_rows or {}).items()}
    if trained.rounds is not None:
        metrics |= {"rounds": len(trained.rounds.rounds), "chosen_round": trained.rounds.chosen + 1}
        mlflow.set_tag("self_train.stop_reason", trained.rounds.stop_reason)
    mlflow.log_metrics(metrics)


def record_error(error: Exception, ctx: RunContext, data: PipelineData, labels: WeakLabels, weak: WeakModel,
                 pseudo: CrossPseudo, section: FullTrainConfig, selection: SelectionConfig,
                 pseudo_label: PseudoLabelConfig, parallel: ParallelConfig, governance: GovernanceConfig) -> None:
    """When a round's relabelled set failed its check, every round done so far (the failing round's run
    holds the findings)."""
    if isinstance(error, RoundCheckFailed):
        _log_rounds(error.rounds, data)


def progress(ctx: RunContext, data: PipelineData, labels: WeakLabels, weak: WeakModel, pseudo: CrossPseudo,
             section: FullTrainConfig, selection: SelectionConfig, pseudo_label: PseudoLabelConfig,
             parallel: ParallelConfig, governance: GovernanceConfig) -> tuple[str, int]:
    per_fit = section.epochs + (section.finetune_epochs if section.strategy == "pretrain_finetune" else 0)
    total = per_fit * (section.self_train.max_rounds if section.strategy == "self_train" else 1)
    return f"full_train ({section.strategy}, cross-fitted)", total


def log_settings(ctx: RunContext, data: PipelineData, labels: WeakLabels, weak: WeakModel, pseudo: CrossPseudo,
             section: FullTrainConfig, *others: object) -> None:
    tracking.log_section(section, "full_train")


STAGE = Stage("full_train", compute, record, record_error=record_error, progress=progress, settings=log_settings)
