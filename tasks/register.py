"""Stage register: log the shipped model, register a version, decide the gates, write the model card.

The alias is not moved here: the publish stage moves it as the run's very last step, so a failure in
anything before it (tags, card, report, summary) leaves the champion where it was."""

from __future__ import annotations

import getpass
import tempfile
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
from mlflow.models import infer_signature

from weakflow.deploy.gates import GateDecision, GateInput, decide
from weakflow.deploy import model_code
from weakflow.deploy.model import output_frame, save_weights
from weakflow.deploy.registry import CHALLENGER, CHAMPION, champion_version
from weakflow.monitoring.reference import reference_sample
from weakflow.tasks.lib.stage import stage_task
from weakflow.tasks.lib import tracking
from weakflow.tasks.lib.config import Config
from weakflow.tasks.core.models import calibrated
from weakflow.tasks.core.training import predict_proba
from weakflow.tasks.lib.data import PipelineData, dataset_digest
from weakflow.tasks.evaluate import Evaluation
from weakflow.tasks.governance import CheckResult, Findings
from weakflow.tasks.select import Selection
from weakflow.tasks.lib.modeling import TrainedModel
from weakflow.tasks.report.build import after_register

# The model ships the code it needs (torch core + wrapper), so it loads where weakflow is not installed.
MODEL_ENTRY = model_code.ROOT / "deploy" / "pyfunc_entry.py"  # the model's code: deploy/model_code.py


def model_requirements() -> list[str]:
    """Pinned from this environment. Explicit, because MLflow's inference spawns a process (~4 s)."""
    import pandas
    import torch

    return [f"torch=={torch.__version__.split('+')[0]}", f"numpy=={np.__version__}", f"pandas=={pandas.__version__}",
            f"mlflow=={mlflow.__version__}"]


@dataclass(frozen=True)
class Registration:
    model_name: str
    version: str
    alias: str  # the alias the gates give it (champion or challenger); publish moves it
    decision: GateDecision
    champion_before: str | None
    # for the pipeline run: the evaluate run's review tags, the gate verdict, where the report is
    review_tags: dict[str, str] = field(default_factory=dict)


def input_example(data: PipelineData, rows: int = 5):  # -> pd.DataFrame
    """The model's raw input as a client sends it: numbers as float64, text as strings."""
    example = data.train[data.inputs].head(rows).copy()
    example[data.schema.numeric] = example[data.schema.numeric].astype(np.float64)
    for column in data.schema.text:
        example[column] = example[column].fillna("").astype(str)
    return example.reset_index(drop=True)


def score_version(name: str, version: str, data: PipelineData) -> float:
    """Accuracy of a registered version on ``data``'s frozen gold test split, through its pyfunc."""
    model = model_code.load_pyfunc(f"models:/{name}/{version}")
    test = data.test[data.inputs].copy()
    test[data.schema.numeric] = test[data.schema.numeric].astype(np.float64)
    pred = model.predict(test)["prediction"].to_numpy()
    return float((pred == data.test[data.label].to_numpy()).mean())


def score_champion(client: mlflow.MlflowClient, name: str, data: PipelineData) -> tuple[str | None, float | None, str | None]:
    """(version, accuracy on this run's test split, error) of the current champion, if there is one."""
    version = champion_version(client, name)
    if version is None:
        return None, None, None
    try:
        return version, score_version(name, version, data), None
    except Exception as exc:  # a champion with another feature schema, or unloadable: the gate says so
        return version, None, f"{type(exc).__name__}: {exc}"


@dataclass
class Provenance:
    """What the model card needs from the earlier stages. ``pseudo_kept``/``pseudo_precision`` are the weak
    model's pseudo set (after pseudo_governance); the card prefers the set the final model trained on."""

    sources: list[dict]  # weak_labels' per-source table as records
    pseudo_kept: int
    pseudo_precision: float | None
    governance: dict[str, CheckResult]  # check -> findings and what its policy did
    dropped: dict[str, int]


def governance_verdict(summary: dict[str, CheckResult]) -> str:
    """``warned`` if any "N found; action" entry was only warned about, else ``passed``. Never ``failed``
    here: a ``fail`` finding raises in its stage, before anything is registered; a version tagged
    ``governance=failed`` (by hand) is refused by ``weakflow promote`` (deploy/registry.py)."""
    return "warned" if any(v.action == "warned" for v in summary.values()) else "passed"


@dataclass
class ValidationResult:
    """The validate stage's recorded outcome (its tag and counts), for the gate and the model card."""

    passed: bool
    text: str


def validation_result(client: mlflow.MlflowClient, experiment_id: str, parent_run_id: str, cfg: Config) -> ValidationResult:
    """Read the validate stage run of this pipeline run; say whether the test-overlap expectation ran
    (it does only under ``governance.exact_duplicates = fail``; otherwise the governance stage's
    exact_duplicates check handles test copies by its policy)."""
    runs = client.search_runs([experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent_run_id}' and "
                                                             "tags.`weakflow.stage` = 'validate'", max_results=1)
    policy = cfg.governance.exact_duplicates
    overlap = ("test rows copied into training: expectation ran" if policy == "fail" else
               f"test rows copied into training: expectation off (governance.exact_duplicates = {policy}); "
               "the governance stage's exact_duplicates check applied its policy instead")
    if not runs:
        return ValidationResult(True, f"not recorded: no validate stage run under pipeline run {parent_run_id}. {overlap}.")
    run = runs[0]
    status = run.data.tags.get("validation", "not recorded")
    evaluated = run.data.metrics.get("expectations_evaluated")
    failed = run.data.metrics.get("expectations_failed")
    counts = (f"{int(evaluated)} expectations evaluated, {int(failed or 0)} failed" if evaluated is not None
              else "expectation counts not recorded")
    return ValidationResult(status != "failed",
                            f"{status}: Great Expectations suite before any training ({counts}; validate run "
                            f"{run.info.run_id}): columns, types, finite features, label sets, gold rows per "
                            f"class; {overlap}.")


def trained_pseudo(final: TrainedModel | None, prov: Provenance) -> tuple[int, float | None, str]:
    """(kept rows, held-out precision, which set) of the pseudo set the shipped model trained on: a later
    self-training round's set when it used one, else the weak model's set; none for a gold-only or weak model."""
    pseudo = getattr(final, "pseudo", None)
    if pseudo is None:
        return 0, None, "none (the shipped model trained on no pseudo label)"
    which = ("the weak model's pseudo set" if pseudo.round == 0
             else f"the set relabelled by self-training round {pseudo.round}'s student")
    return pseudo.kept_count, pseudo.holdout_precision, which


def round_governance(final: TrainedModel | None) -> tuple[dict[str, CheckResult], dict[str, int]]:
    """pseudo_near_test findings and drops on each self-training round's relabelled set."""
    rounds = getattr(final, "rounds", None)
    summary: dict[str, CheckResult] = {}
    dropped: dict[str, int] = {}
    for rnd in rounds.rounds if rounds is not None else []:
        findings = getattr(rnd.model, "relabel_findings", None)
        if findings is None:
            continue
        summary |= {f"{k} (round {rnd.index} relabel)": v for k, v in findings.summary().items()}
        dropped |= {f"{k}_round_{rnd.index}": v for k, v in findings.dropped.items()}
    return summary, dropped


def model_card(data: PipelineData, evaluation: Evaluation, cfg: Config, prov: Provenance, version: str, alias: str,
               gate_reason: str, validation: ValidationResult | None = None, final: TrainedModel | None = None,
               shipped_reason: str = "") -> str:
    from weakflow.deploy.model_card import CardInputs, render

    e = evaluation
    kept, precision, which = trained_pseudo(final, prov)
    rounds, round_drops = round_governance(final)
    governance = prov.governance | rounds
    return render(CardInputs(
        model_name=cfg.tracking.model_name, version=version, alias=alias, gate_reason=gate_reason,
        provenance=data.provenance_counts(), pseudo_kept=kept, pseudo_policy=cfg.pseudo_label.policy,
        pseudo_precision=precision, pseudo_set=which, sources=prov.sources,
        validation=validation.text if validation is not None else "not recorded",
        governance=governance, governance_verdict=governance_verdict(governance),
        dropped=prov.dropped | round_drops,
        metrics={"accuracy": e.shipped.accuracy, "macro_f1": e.shipped.macro_f1, "ece": e.shipped.ece,
                 "gold_only_accuracy": e.gold_only.accuracy, "gold_only_macro_f1": e.gold_only.macro_f1,
                 "weak_accuracy": e.weak.accuracy if e.weak is not None else float("nan")},
        weak_method=cfg.weak_train.method, strategy=cfg.full_train.strategy, test_rows=len(data.test),
        shipped=e.shipped_name, shipped_reason=shipped_reason))


def provenance_of(labels: Any, shipped: TrainedModel, checks: Findings | None,
                  pseudo_checks: Findings | None) -> Provenance:
    """What the model card needs from the stages before: the sources' table, the shipped model's pseudo set,
    every check's result and the rows dropped."""
    pseudo = getattr(shipped, "pseudo", None)
    found = [f for f in (checks, pseudo_checks) if f is not None]
    governance = {k: v for f in found for k, v in f.summary().items()}
    dropped = {k: v for f in found for k, v in f.dropped.items()}
    sources = labels.stats.to_dict("records") if labels is not None and not labels.stats.empty else []
    return Provenance(sources, pseudo.kept_count if pseudo else 0, pseudo.holdout_precision if pseudo else None,
                      governance, dropped)


@stage_task("register")
def register(data: PipelineData, selection: Selection, evaluation: Evaluation, cfg: Config, parent_run_id: str,
             experiment_id: str, labels: Any = None, checks: Findings | None = None,
             pseudo_checks: Findings | None = None) -> Registration:
    """Log the shipped model (its temperature inside it, so every consumer gets calibrated confidences),
    register a version, decide the gates and tag the version with the verdict: everything but the alias."""
    shipped, shipped_reason = selection.model, selection.reason
    provenance = provenance_of(labels, shipped, checks, pseudo_checks)
    name = cfg.tracking.model_name
    client = mlflow.MlflowClient()
    with tracking.stage_run("register", parent_run_id, experiment_id):
        champ_version, champ_acc, champ_error = score_champion(client, name, data)
        validation = validation_result(client, experiment_id, parent_run_id, cfg)
        # governance_passed keeps its default: a `fail` finding raised in its stage, before registration.
        # The gate matters for `weakflow promote`, which refuses a version tagged governance=failed.
        decision = decide(
            GateInput(evaluation.shipped.accuracy, validation_passed=validation.passed, champion_version=champ_version,
                      champion_accuracy=champ_acc, champion_error=champ_error, vs_gold_only=evaluation.vs_gold_only),
            cfg.gates.min_accuracy, cfg.gates.max_regression,
        )
        network, spec = calibrated(shipped.model, shipped.spec, shipped.temperature)
        network = network.cpu().eval()
        example = input_example(data)  # training rows: no test data in artifacts
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*integer column.*")
            signature = infer_signature(example, output_frame(predict_proba(network, data.x(example)), data.classes))
        with tempfile.TemporaryDirectory() as tmp:
            code = model_code.stage(Path(tmp) / "code")  # weakflow/, only what loading the model imports
            weights = Path(tmp) / "model.pt"
            save_weights(weights, network, spec, data.schema, data.classes)
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=".*integer column.*")  # our int output never has NaN
                info = mlflow.pyfunc.log_model(name="model", python_model=str(MODEL_ENTRY),
                                               artifacts={"weights": str(weights)}, signature=signature,
                                               input_example=example, pip_requirements=model_requirements(),
                                               code_paths=[str(code)])
        tracking.log_frame(reference_sample(data, network, seed=cfg.seed, device=cfg.device), "reference", "reference")
        version = str(mlflow.register_model(info.model_uri, name).version)
        alias = CHAMPION if decision.passed else CHALLENGER
        tags = {
            "gate_verdict": "passed" if decision.passed else "failed",
            "gate_reason": decision.reason,
            "test_accuracy": f"{evaluation.shipped.accuracy:.4f}",
            "gold_only_accuracy": f"{evaluation.gold_only.accuracy:.4f}",
            "shipped": evaluation.shipped_name,
            "champion_before": champ_version or "none",
            "champion_before_accuracy_same_split": f"{champ_acc:.4f}" if champ_acc is not None else "n/a",
            "test_set_digest": dataset_digest(data.test),
            "pipeline_run_id": parent_run_id,
            "registered_by": getpass.getuser(),
            "validation": "passed" if validation.passed else "failed",
        }
        if provenance is not None:  # passed or warned (a failed check never gets here)
            tags["governance"] = governance_verdict(provenance.governance | round_governance(shipped)[0])
        for key, value in tags.items():
            client.set_model_version_tag(name, version, key, value)
        if provenance is not None:  # the card: an artifact of the run and the version's description
            card = model_card(data, evaluation, cfg, provenance, version, alias, decision.reason, validation, shipped,
                              shipped_reason)
            mlflow.log_text(card, "model_card.md")
            client.update_model_version(name, version, description=card)
        mlflow.set_tags({"gate_verdict": tags["gate_verdict"], "model_version": version, "model_alias": alias})
        mlflow.log_metrics({"gate_passed": float(decision.passed)} |
                           ({"champion_before_test_accuracy": champ_acc} if champ_acc is not None else {}))
        tracking.log_json({"passed": decision.passed, "checked": decision.checked,
                           "failures": [{"gate": f.gate, "reason": f.reason} for f in decision.failures]},
                          "gates/decision.json")
        registration = Registration(name, version, alias, decision, champ_version)
        # the verdict into the review report
        return replace(registration, review_tags=after_register(evaluation, registration))
