"""Stage select: which model ships, decided on the gold rows and never on the test split.

The candidates (the gold-only model, the weak model and the final, pseudo-labelled model) are each judged
on every gold row by a fold model that never trained on it. Of those whose out-of-fold accuracy is within
one gold row of the best (one row is never evidence), the one with the lowest out-of-fold log-loss ships
(a proper score that uses every probability, so it ranks with less noise than right/wrong on a few rows;
then the simpler model), unless ``selection.ship`` names one. Paired bootstrap intervals over the gold rows say how sure that choice is, and the reason, in
words, goes to the run summary, the pipeline run's tags and the review report. With ``selection.fold_ensemble``
(auto: pictures) the model shipped averages the chosen candidate's refit with its fold models.
"""

from __future__ import annotations

from dataclasses import replace

import mlflow
import numpy as np
import pandas as pd

from weakflow.tasks.lib import tracking
from weakflow.tasks.lib.config import SelectionConfig
from weakflow.tasks.core.bootstrap import BootstrapResult, paired_bootstrap
from weakflow.tasks.core.models import fold_ensemble as fold_ensemble_of, replace_ensemble
from weakflow.tasks.core.selection import best_out_of_fold
from weakflow.tasks.lib.data import PipelineData
from weakflow.tasks.lib.modeling import TrainedModel
from weakflow.tasks.lib.results import Selection
from weakflow.tasks.lib.steps import RunContext, Stage

ORDER = ("gold_only", "weak", "final")  # simplest first: a tie ships the simpler model
LABELS = {"gold_only": "gold-only model", "weak": "weak model", "final": "final (pseudo-labelled) model"}


def choose(candidates: dict[str, TrainedModel], y_gold: np.ndarray, ship: str = "best", samples: int = 1000,
           seed: int = 0, missing: dict[str, str] | None = None, fold_ensemble: bool = False) -> Selection:
    """Pick the candidate to ship from their calibrated out-of-fold gold probabilities. ``missing``: the
    candidates that could not be trained, with why (e.g. no weak vote anywhere). ``fold_ensemble``: ship the
    chosen weak or final candidate's refit averaged with its fold models, where they trained on every row (the
    candidate itself, and every figure judging it, stay as they are); never the gold-only model's, whose fold
    models each miss a third of its rows (on the picture demo's majority-vote and oracle recipes, where every
    row is gold, that average scored 1.1 and 1.5 points under the refit alone: docs/benchmarks.md, images)."""
    missing = missing or {}
    names = [n for n in ORDER if n in candidates]
    if not names:
        raise ValueError("select: no candidate model to choose from")
    probs = {n: candidates[n].oof_probs for n in names}
    best, acc, nll = best_out_of_fold(probs, y_gold)
    chosen = best if ship == "best" else ship
    if chosen not in candidates:
        raise ValueError(f"select: selection.ship = {ship} but that candidate was not trained: {missing.get(ship, '')}")
    boot = paired_bootstrap(y_gold, probs, [(chosen, n) for n in names if n != chosen], samples=samples, seed=seed)
    rows = []
    for n in names:
        iv = boot.intervals[n]["accuracy"]
        d = boot.delta(chosen, n, "accuracy")
        rows.append({"candidate": n, "oof_accuracy": acc[n], "oof_accuracy_low": iv.low, "oof_accuracy_high": iv.high,
                     "oof_log_loss": nll[n], "chosen_minus_this": d.interval.estimate if d else 0.0,
                     "chosen_minus_this_low": d.interval.low if d else 0.0,
                     "chosen_minus_this_high": d.interval.high if d else 0.0})
    table = pd.DataFrame(rows)
    reason = reason_text(chosen, ship, acc, nll, boot, missing, len(y_gold))
    shipped = candidates[chosen]
    # the gold-only model's fold models each miss a third of all its rows: weaker networks than its refit
    if fold_ensemble and chosen != "gold_only" and shipped.folds and not shipped.folds_sampled:
        network = fold_ensemble_of(shipped.model, shipped.folds)
        shipped = replace(shipped, model=network, spec=replace_ensemble(shipped.spec, network))
        reason += (f"; the shipped model averages the logits of its refit and its {len(shipped.folds)} fold models "
                   f"({len(network.members)} networks)")
    elif getattr(shipped.spec, "ensemble", 1) > 1:  # a bagged refit (selection.refits) or CLID-MU's snapshots
        reason += f"; the shipped model averages the logits of {shipped.spec.ensemble} networks"
    return Selection(chosen, reason, table, boot, shipped)


def ships_fold_ensemble(section: SelectionConfig, data: PipelineData) -> bool:
    """``selection.fold_ensemble`` for this data: auto is on for pictures (a picture network's test accuracy
    moves by points from run to run; averaging the fold models steadies it, docs/benchmarks.md)."""
    return data.schema.images is not None if section.fold_ensemble == "auto" else bool(section.fold_ensemble)


def reason_text(chosen: str, ship: str, acc: dict[str, float], nll: dict[str, float], boot: BootstrapResult,
                missing: dict[str, str], rows: int) -> str:
    """One paragraph: what shipped, on which evidence, and how sure."""
    others = ", ".join(f"{LABELS[n]} {acc[n]:.3f}" for n in acc if n != chosen)
    figures = f"cross-fitted gold accuracy {acc[chosen]:.3f}" + (f" vs {others}" if others else "")
    gaps = []
    for n in acc:
        d = boot.delta(chosen, n, "accuracy")
        if d is not None:
            iv = d.interval
            gaps.append(f"{chosen} - {n} {iv.estimate:+.3f} [{iv.low:+.3f}, {iv.high:+.3f}]")
    sure = f" (paired 95% intervals: {'; '.join(gaps)})" if gaps else ""
    absent = "".join(f"; no {LABELS[n]}: {why}" for n, why in missing.items())
    if ship != "best":
        return f"selection.ship = {ship}: shipped the {LABELS[chosen]}; {figures}{sure}{absent}"
    rivals = [n for n in acc if n != chosen]
    close = [n for n in rivals if abs(acc[n] - acc[chosen]) <= 1.0 / rows + 1e-12]
    if chosen == "gold_only":
        lead = "weak labels did not help on this data: shipped the gold-only model"
    elif close:
        lead = (f"shipped the {LABELS[chosen]} (within one gold row of the best accuracy; lowest log-loss "
                f"{nll[chosen]:.3f} vs " + ", ".join(f"{n} {nll[n]:.3f}" for n in close) + ")")
    else:
        lead = f"shipped the {LABELS[chosen]}, the best on the gold rows"
    return f"{lead}; {figures}{sure}{absent}"


def compute(ctx: RunContext, data: PipelineData, candidates: dict[str, TrainedModel], section: SelectionConfig,
            missing: dict[str, str] | None = None) -> Selection:
    return choose(candidates, data.y(data.rows("gold")), section.ship, section.bootstrap_samples, ctx.seed, missing,
                  ships_fold_ensemble(section, data))


def record(selection: Selection, ctx: RunContext, data: PipelineData, candidates: dict[str, TrainedModel],
           section: SelectionConfig, missing: dict[str, str] | None = None) -> None:
    tracking.log_frame(selection.table, "selection", "candidates")
    mlflow.log_metrics({f"oof_accuracy_{r.candidate}": r.oof_accuracy for r in selection.table.itertuples()})
    mlflow.set_tags(selection.tags | {"mlflow.note.content": selection.reason})


def log_settings(ctx: RunContext, data: PipelineData, candidates: dict[str, TrainedModel], section: SelectionConfig,
             missing: dict[str, str] | None = None) -> None:
    tracking.log_section(section, "selection")


STAGE = Stage("select", compute, record, settings=log_settings)
