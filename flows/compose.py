"""The pipeline, composed once: validate -> governance -> weak_labels -> text_features -> gold_only -> weak_train ->
pseudo_label -> pseudo_governance -> full_train -> select -> evaluate -> register -> publish.

Each stage gets the run context, the results it needs and its own section of the config; ``steps``
decides what happens around it: the Prefect flow (``flows/pipeline.py``) runs every step as a task inside
its MLflow stage run and records it; the benchmarks and in-memory tests run the very same sequence with
:class:`tasks.lib.steps.PlainSteps`, which records nothing. Without a text column there is no text_features
stage. When no row outside the gold set carries a weak vote, the weak side is skipped and the gold-only
model is the one candidate (the select stage says so).
"""

from __future__ import annotations

from weakflow.tasks import evaluate, full_train, gold_only, governance, publish, pseudo_label, register, select
from weakflow.tasks import text_features, validate, weak_labels, weak_train
from weakflow.tasks.lib.config import Config
from weakflow.tasks.lib.modeling import TrainedModel
from weakflow.tasks.lib.results import FullModel, Published, RunOutcome
from weakflow.tasks.lib.rules import configured_rules
from weakflow.tasks.lib.steps import RunContext, Steps


def compose(cfg: Config, ctx: RunContext, steps: Steps) -> tuple[Published, RunOutcome]:
    validated = steps.run(validate.STAGE, ctx, cfg.data, cfg.validation, validate.InputChecks.of(cfg))
    data, checks = steps.run(governance.STAGE, ctx, validated.data, cfg.governance)
    data, labels = steps.run(weak_labels.STAGE, ctx, data, cfg.weak_labels, configured_rules(cfg))
    gold_training = cfg.gold_only.resolved(cfg.weak_train)
    text = (steps.run(text_features.STAGE, ctx, data, cfg.text, gold_training, cfg.selection)
            if data.schema.text else None)
    data = text.data if text is not None else data
    baseline = steps.run(gold_only.STAGE, ctx, data, gold_training, cfg.selection, text.gold_only if text else None)
    candidates: dict[str, TrainedModel] = {"gold_only": baseline}
    missing = labels.missing()
    weak = pseudo = final = pseudo_checks = None
    if not missing:
        weak = steps.run(weak_train.STAGE, ctx, data, labels, baseline, cfg.weak_train, cfg.selection,
                         cfg.weak_labels.confusion_strength)
        pseudo = steps.run(pseudo_label.STAGE, ctx, data, weak, cfg.pseudo_label, cfg.parallel,
                           cfg.full_train.strategy == "distill")
        pseudo, pseudo_checks = steps.run(governance.PSEUDO_STAGE, ctx, data, pseudo, cfg.governance)
        final = steps.run(full_train.STAGE, ctx, data, labels, weak, pseudo, cfg.full_train, cfg.selection,
                          cfg.pseudo_label, cfg.parallel, cfg.governance)
        candidates |= {"weak": weak, "final": final}
    selection = steps.run(select.STAGE, ctx, data, candidates, cfg.selection, missing)
    champion = steps.champion(data)
    shipped_pseudo = selection.model.pseudo if isinstance(selection.model, FullModel) else None
    evaluation = steps.run(evaluate.STAGE, ctx, data, candidates, selection, cfg.report, champion, labels,
                           shipped_pseudo)
    release = steps.run(register.STAGE, ctx, data, selection, evaluation, cfg.gates, champion, validated,
                        cfg.governance.exact_duplicates, register.Methods.of(cfg), labels, checks, pseudo_checks)
    outcome = RunOutcome(validated, data, labels, weak, pseudo.refit if pseudo else None, final, selection, evaluation,
                         release.registration, checks, pseudo_checks, text)
    return steps.run(publish.STAGE, ctx, outcome), outcome
