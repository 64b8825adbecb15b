"""Stage register: log the shipped model, register a version, decide the gates, write the model card.

The alias is not moved here: the publish stage moves it as the run's very last step, so a failure in
anything before it (tags, card, report, summary) leaves the champion where it was."""

from __future__ import annotations

import getpass
import tempfile
import warnings
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
from torch import nn
from mlflow.models import infer_signature

from weakflow.deploy.gates import GateInput, decide
from weakflow.deploy import model_code
from weakflow.deploy.model import encoder_folder, output_frame, save_weights
from weakflow.deploy.registry import CHALLENGER, CHAMPION
from weakflow.tasks.lib.errors import RegistryError
from weakflow.monitoring.reference import reference_sample
from weakflow.tasks.lib.checks import CheckResult, Findings
from weakflow.data_checks.suite import Validated
from weakflow.tasks.core.images import read_picture
from weakflow.tasks.lib.results import Evaluation, Registration, Selection, WeakLabels
from weakflow.tasks.lib.steps import RunContext, Stage
from weakflow.tasks.lib import tracking
from weakflow.tasks.lib.config import Config, GateConfig
from weakflow.tasks.core.models import ModelSpec, calibrated
from weakflow.tasks.core.training import predict_proba
from weakflow.tasks.lib.data import PipelineData, dataset_digest
from weakflow.tasks.lib.modeling import TrainedModel
from weakflow.tasks.report.build import after_register
from weakflow.tasks.lib.review import Champion

# The model ships the code it needs (torch core + wrapper), so it loads where weakflow is not installed.
MODEL_ENTRY = model_code.ROOT / "deploy" / "pyfunc_entry.py"  # the model's code: deploy/model_code.py


def model_requirements(encoder: bool = False) -> list[str]:
    """Pinned from this environment. Explicit, because MLflow's inference spawns a process (~4 s). With the
    text ``encoder``, what loads it too (its weights travel with the model, not the package)."""
    from importlib.metadata import version

    import pandas
    import torch

    pins = [f"torch=={torch.__version__.split('+')[0]}", f"numpy=={np.__version__}", f"pandas=={pandas.__version__}",
            f"mlflow=={mlflow.__version__}"]
    return pins + ([f"{p}=={version(p)}" for p in ("sentence-transformers", "transformers")] if encoder else [])


def input_example(data: PipelineData, rows: int = 5):  # -> pd.DataFrame
    """The model's raw input as a client sends it: numbers as float64, text as strings, pictures as their bytes
    (a served model never reads a path)."""
    example = data.train[data.inputs].head(rows).copy()
    example[data.schema.numeric] = example[data.schema.numeric].astype(np.float64)
    for column in data.schema.text:
        example[column] = example[column].fillna("").astype(str)
    if data.schema.images is not None:
        example[data.schema.images.column] = [read_picture(p) for p in data.schema.images.paths(example)]
    return example.reset_index(drop=True)


def score_version(name: str, version: str, data: PipelineData) -> float:
    """Accuracy of a registered version on ``data``'s frozen gold test split, through its pyfunc."""
    model = model_code.load_pyfunc(f"models:/{name}/{version}")
    test = data.test[data.inputs].copy()
    test[data.schema.numeric] = test[data.schema.numeric].astype(np.float64)
    if data.schema.images is not None:  # the loaded model's featurizer has no root: absolute paths
        test[data.schema.images.column] = [str(p) for p in data.schema.images.paths(test)]
    pred = model.predict(test)["prediction"].to_numpy()
    return float((pred == data.test[data.label].to_numpy()).mean())


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


def validation_result(validated: Validated, exact_duplicates: str) -> ValidationResult:
    """What the validate stage found, for the gate and the card; says whether the test-overlap expectation
    ran (it does only under ``governance.exact_duplicates = fail``; otherwise the governance stage's
    exact_duplicates check handles test copies by its policy)."""
    overlap = ("test rows copied into training: expectation ran" if exact_duplicates == "fail" else
               f"test rows copied into training: expectation off (governance.exact_duplicates = {exact_duplicates}); "
               "the governance stage's exact_duplicates check applied its policy instead")
    report = validated.report
    where = f"; validate run {validated.run_id}" if validated.run_id else ""
    status = "passed" if report.success else "failed"
    return ValidationResult(report.success,
                            f"{status}: Great Expectations suite before any training ({report.evaluated} expectations "
                            f"evaluated, {len(report.failures)} failed{where}): columns, types, finite features, label "
                            f"sets, gold rows per class; {overlap}.")


def champion_figures(champion: Champion, data: PipelineData) -> tuple[str | None, float | None, str | None]:
    """(version, accuracy on this run's test split, why it could not be scored) of the current champion,
    through its own input schema (its text features are its own)."""
    if champion.version is None:
        return None, None, None
    if champion.model is None:
        return champion.version, None, champion.error or "not loaded"
    try:
        probs = (champion.loaded.predict_proba(data.test) if champion.loaded is not None
                 else predict_proba(champion.model, data.x(data.test)))
    except Exception as exc:  # a champion that cannot read these rows: the gate says so
        return champion.version, None, f"{type(exc).__name__}: {exc}"
    return champion.version, float((probs.argmax(1) == data.y(data.test)).mean()), None


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


@dataclass(frozen=True)
class Methods:
    """How the candidates were made, as the card names it (from the weak_train, full_train and pseudo_label
    sections)."""

    weak_method: str
    strategy: str
    pseudo_policy: str

    @classmethod
    def of(cls, cfg: Config) -> Methods:
        return cls(cfg.weak_train.method, cfg.full_train.strategy, cfg.pseudo_label.policy)


def model_card(data: PipelineData, evaluation: Evaluation, model_name: str, methods: Methods, prov: Provenance,
               version: str, alias: str, gate_reason: str, validation: ValidationResult | None = None,
               final: TrainedModel | None = None, shipped_reason: str = "") -> str:
    from weakflow.deploy.model_card import CardInputs, render

    e = evaluation
    kept, precision, which = trained_pseudo(final, prov)
    rounds, round_drops = round_governance(final)
    governance = prov.governance | rounds
    return render(CardInputs(
        model_name=model_name, version=version, alias=alias, gate_reason=gate_reason,
        provenance=data.provenance_counts(), pseudo_kept=kept, pseudo_policy=methods.pseudo_policy,
        pseudo_precision=precision, pseudo_set=which, sources=prov.sources,
        validation=validation.text if validation is not None else "not recorded",
        governance=governance, governance_verdict=governance_verdict(governance),
        dropped=prov.dropped | round_drops,
        metrics={"accuracy": e.shipped.accuracy, "macro_f1": e.shipped.macro_f1, "ece": e.shipped.ece,
                 "gold_only_accuracy": e.gold_only.accuracy, "gold_only_macro_f1": e.gold_only.macro_f1,
                 "weak_accuracy": e.weak.accuracy if e.weak is not None else float("nan")},
        weak_method=methods.weak_method, strategy=methods.strategy, test_rows=len(data.test),
        shipped=e.shipped_name, shipped_reason=shipped_reason))


def provenance_of(labels: WeakLabels | None, shipped: TrainedModel, checks: Findings | None,
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


@dataclass(frozen=True)
class Release:
    """What the register stage decided and built: the gates' verdict on the shipped model, the calibrated
    network and what goes beside it; ``registration`` gets its version once recorded."""

    registration: Registration
    network: nn.Module  # calibrated (the temperature inside), on the CPU, in eval mode
    spec: ModelSpec
    reference: pd.DataFrame  # the drift reference sample
    validation: ValidationResult
    provenance: Provenance
    card: Callable[[str, str], str]  # (version, alias) -> the model card
    champion_accuracy: float | None


def compute(ctx: RunContext, data: PipelineData, selection: Selection, evaluation: Evaluation, section: GateConfig,
            champion: Champion | None, validated: Validated, exact_duplicates: str, methods: Methods,
            labels: WeakLabels | None = None, checks: Findings | None = None,
            pseudo_checks: Findings | None = None) -> Release:
    """The gates' decision (the champion re-scored on this test split) and the release it is about."""
    shipped = selection.model
    champion = champion or Champion(None)
    if champion.version is None and champion.error:  # no champion to compare with is not "no champion"
        raise RegistryError(f"register: the current champion could not be looked up ({champion.error}); nothing "
                            "was registered")
    provenance = provenance_of(labels, shipped, checks, pseudo_checks)
    champ_version, champ_acc, champ_error = champion_figures(champion, data)
    validation = validation_result(validated, exact_duplicates)
    # governance_passed keeps its default: a `fail` finding raised in its stage, before registration.
    # The gate matters for `weakflow promote`, which refuses a version tagged governance=failed.
    decision = decide(
        GateInput(evaluation.shipped.accuracy, validation_passed=validation.passed, champion_version=champ_version,
                  champion_accuracy=champ_acc, champion_error=champ_error, vs_gold_only=evaluation.vs_gold_only),
        section.min_accuracy, section.max_regression,
    )
    network, spec = calibrated(shipped.model, shipped.spec, shipped.temperature)
    network = network.cpu().eval()
    reference = reference_sample(data, network, seed=ctx.seed, device=ctx.device)

    def card(version: str, alias: str) -> str:
        return model_card(data, evaluation, ctx.model_name, methods, provenance, version, alias, decision.reason,
                          validation, shipped, selection.reason)

    alias = CHAMPION if decision.passed else CHALLENGER
    registration = Registration(ctx.model_name, None, alias, decision, champ_version)
    return Release(registration, network, spec, reference, validation, provenance, card, champ_acc)


def record(release: Release, ctx: RunContext, data: PipelineData, selection: Selection, evaluation: Evaluation,
           section: GateConfig, champion: Champion | None, validated: Validated, exact_duplicates: str,
           methods: Methods, labels: WeakLabels | None = None, checks: Findings | None = None,
           pseudo_checks: Findings | None = None) -> Release:
    """Log the model (its temperature inside it, so every consumer gets calibrated confidences), register a
    version and tag it with the verdict: everything but the alias (the publish stage moves it)."""
    name, network, decision = ctx.model_name, release.network, release.registration.decision
    client = mlflow.MlflowClient()
    example = input_example(data)  # training rows: no test data in artifacts
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*integer column.*")
        signature = infer_signature(example, output_frame(predict_proba(network, data.x(example)), data.classes))
    signature = model_code.picture_signature(signature, data.schema.image_columns)  # pictures: binary, not paths
    with tempfile.TemporaryDirectory() as tmp:
        code = model_code.stage(Path(tmp) / "code")  # weakflow/, only what loading the model imports
        weights = Path(tmp) / "model.pt"
        save_weights(weights, network, release.spec, data.schema, data.classes)
        artifacts = {"weights": str(weights)}
        encoder = encoder_folder(data.schema)
        if encoder is not None:  # the pretrained text encoder is part of the model: offline wherever it goes
            artifacts["text_encoder"] = str(encoder)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*integer column.*")  # our int output never has NaN
            info = mlflow.pyfunc.log_model(name="model", python_model=str(MODEL_ENTRY),
                                           artifacts=artifacts, signature=signature, input_example=example,
                                           pip_requirements=model_requirements(encoder is not None),
                                           code_paths=[str(code)])
    tracking.log_frame(release.reference, "reference", "reference")
    version = str(mlflow.register_model(info.model_uri, name).version)
    alias, champ_version, champ_acc = release.registration.alias, release.registration.champion_before, \
        release.champion_accuracy
    tags = {
        "gate_verdict": "passed" if decision.passed else "failed",
        "gate_reason": decision.reason,
        "test_accuracy": f"{evaluation.shipped.accuracy:.4f}",
        "gold_only_accuracy": f"{evaluation.gold_only.accuracy:.4f}",
        "shipped": evaluation.shipped_name,
        "champion_before": champ_version or "none",
        "champion_before_accuracy_same_split": f"{champ_acc:.4f}" if champ_acc is not None else "n/a",
        "test_set_digest": dataset_digest(data.test),
        "pipeline_run_id": ctx.parent_run_id or "",
        "registered_by": getpass.getuser(),
        "validation": "passed" if release.validation.passed else "failed",
        # passed or warned (a failed check never gets here)
        "governance": governance_verdict(release.provenance.governance | round_governance(selection.model)[0]),
    }
    if encoder is not None:  # where its text embedding's weights came from
        src = data.schema.featurizer.source()  # type: ignore[union-attr]
        tags["text_encoder"] = f"{src['package']} {src['version']}, weights sha256 {src['weights_sha256']}"
    tags["text_features"] = data.schema.featurizer.chosen[:5000] if data.schema.featurizer is not None else "none"
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, value)
    card = release.card(version, alias)  # an artifact of the run and the version's description
    mlflow.log_text(card, "model_card.md")
    client.update_model_version(name, version, description=card)
    mlflow.set_tags({"gate_verdict": tags["gate_verdict"], "model_version": version, "model_alias": alias})
    mlflow.log_metrics({"gate_passed": float(decision.passed)} |
                       ({"champion_before_test_accuracy": champ_acc} if champ_acc is not None else {}))
    tracking.log_json({"passed": decision.passed, "checked": decision.checked,
                       "failures": [{"gate": f.gate, "reason": f.reason} for f in decision.failures]},
                      "gates/decision.json")
    registration = replace(release.registration, version=version)
    # the verdict into the review report
    registration = replace(registration, review_tags=after_register(evaluation, registration))
    return replace(release, registration=registration)


STAGE = Stage("register", compute, record)
