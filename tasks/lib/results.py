"""The typed results the pipeline's stages hand on (each stage makes one; later stages read them): below
the stages, so no stage imports another."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from weakflow.data_checks.suite import Validated
from weakflow.deploy.gates import GateDecision
from weakflow.tasks.core.bootstrap import BootstrapResult
from weakflow.tasks.core.selftrain import SelfTrainResult
from weakflow.tasks.core.trusted import SourceNoise
from weakflow.tasks.lib.checks import CheckResult, Findings
from weakflow.tasks.lib.data import PipelineData
from weakflow.tasks.lib.modeling import TrainedModel
from weakflow.tasks.lib.pseudo_labels import PseudoLabels
from weakflow.tasks.lib.scores import ModelScores

if TYPE_CHECKING:
    from weakflow.tasks.lib.review import Review


@dataclass
class WeakLabels:
    row_ids: np.ndarray  # the weak training rows
    hard: np.ndarray  # class index per row
    soft: np.ndarray | None  # (rows, classes) when weak_labels.soft_labels
    stats: pd.DataFrame  # one row per source
    figures: dict[str, float] = field(default_factory=dict)
    confusion: dict[str, list] = field(default_factory=dict)  # Dawid-Skene per-source confusion matrices
    label_source: np.ndarray | None = None  # per row: "weak:<the sources whose vote is the row's label>"
    # gold_anchored: each source measured on every gold row, and the rows' vote log-likelihood (rows, C)
    # from those estimates (refit) and, per gold fold, from the gold rows outside it
    sources: list[SourceNoise] = field(default_factory=list)
    log_likelihood: np.ndarray | None = None
    fold_log_likelihood: list[np.ndarray] = field(default_factory=list)
    # gold_anchored: how surely the gold rows pin down what each vote points to (tasks/core/trusted.py)
    stability: float | None = None
    votes: np.ndarray | None = None  # gold_anchored: (weak rows, sources) the votes, -1 = abstain
    fold_sources: list[list[SourceNoise]] = field(default_factory=list)  # gold_anchored: measured without fold f
    aggregation: str = ""  # weak_labels.aggregation

    def summary(self) -> str:
        """The run summary's line."""
        return (f"{len(self.row_ids)} weak rows ({self.aggregation}); source accuracy on gold: "
                f"{source_accuracies(self.stats)}")

    def evidence(self, fold: int | None, num_classes: int) -> np.ndarray:
        """(weak rows, C) what their votes say about each class, as a log-likelihood a model of ``fold`` may
        use (None: the refit on all gold): gold_anchored measures it without that fold's gold rows; the
        other aggregations ignore gold and give the log of their vote shares (or one label)."""
        if self.log_likelihood is not None:
            return self.log_likelihood if fold is None else self.fold_log_likelihood[fold]
        shares = self.soft if self.soft is not None else np.eye(num_classes)[self.hard]
        return np.log(np.clip(shares, 1e-4, None))

    def missing(self) -> dict[str, str]:
        """The candidates weak labels cannot make, and why: empty when there are weak rows to learn from."""
        if len(self.row_ids):
            return {}
        why = ("no weak label column, rule or labelling function is configured" if self.stats.empty else
               "no row outside the gold set carries a weak vote (every source abstains there)")
        return {"weak": why, "final": why}


class NoWeakRows(ValueError):
    """No non-gold row carries a usable weak vote: there is nothing for weak supervision to add."""


@dataclass
class WeakModel(TrainedModel):
    figures: dict[str, float] = field(default_factory=dict)
    rows: int = 0  # weak rows trained on (after confident learning's removals)
    row_ids: np.ndarray | None = None  # the weak rows (ids) the model trained on
    # anchored with anchored_refine: per trainer (fold, None = refit) the votes' refined log-likelihood over
    # the weak rows (what the final stage learns them through), and the refit's refined sources (logged)
    evidence: dict[int | None, np.ndarray] = field(default_factory=dict)
    refined_sources: list[SourceNoise] = field(default_factory=list)
    method: str = ""  # weak_train.method

    def summary(self, oof_accuracy: float) -> str:
        """The run summary's line, with the select stage's cross-fitted gold accuracy of this model."""
        return f"{self.method}: cross-fitted gold accuracy {oof_accuracy:.3f}" + evidence_note(self.figures)


PRIOR_NAMES = {False: "votes", True: "votes + gold-only"}


def evidence_note(figures: dict[str, float]) -> str:
    """Which evidence the anchored weak model learnt from, in words for the run summary ('' for the other
    methods), with both variants' out-of-fold gold accuracy when ``auto`` compared them."""
    if "anchored_prior" not in figures:
        return ""
    kept = PRIOR_NAMES[bool(figures["anchored_prior"])]
    if not figures.get("anchored_prior_compared"):
        return f"; evidence: {kept}"
    return (f"; evidence: {kept}, chosen out of fold after {figures['anchored_prior_probe_epochs']:.0f} epochs "
            f"(gold accuracy: {PRIOR_NAMES[False]} "
            f"{figures['oof_accuracy_votes']:.3f}, {PRIOR_NAMES[True]} {figures['oof_accuracy_with_prior']:.3f})")


@dataclass(frozen=True)
class Selection:
    """The shipped candidate, why, and every candidate's cross-fitted gold figures."""

    chosen: str
    reason: str
    table: pd.DataFrame  # candidate, oof_accuracy (+ interval), oof_log_loss, delta vs chosen (+ interval)
    boot: BootstrapResult | None
    model: TrainedModel

    @property
    def tags(self) -> dict[str, str]:
        return {"weakflow.shipped": self.chosen, "weakflow.shipped_reason": self.reason[:5000]}

    def oof_accuracy(self, candidate: str) -> float:
        """A candidate's cross-fitted gold accuracy."""
        return float(self.table.set_index("candidate")["oof_accuracy"][candidate])


@dataclass
class Evaluation:
    shipped: ModelScores  # the model the select stage chose (what register logs)
    gold_only: ModelScores
    weak: ModelScores | None  # None: no weak model could be trained (no weak vote anywhere)
    final: ModelScores | None
    shipped_name: str = "final"
    # shipped minus gold-only test accuracy on paired bootstrap resamples: (estimate, low, high) (the gate's)
    vs_gold_only: tuple[float, float, float] | None = None
    run_id: str | None = None  # the evaluate stage run
    tags: dict[str, str] = field(default_factory=dict)  # the weakflow.* tags set on that run
    review: Review | None = None  # the review report, when report.enabled

    @property
    def lift_over_gold_only(self) -> float:
        return self.shipped.accuracy - self.gold_only.accuracy

    def summary(self) -> str:
        """The run summary's line."""
        lift = self.vs_gold_only
        return (f"test accuracy {self.shipped.accuracy:.4f} ({self.shipped_name}; gold-only {self.gold_only.accuracy:.4f}"
                + (f", weak {self.weak.accuracy:.4f}" if self.weak else "")
                + (f", final {self.final.accuracy:.4f}" if self.final else "") + ")"
                + (f"; vs gold-only {lift[0]:+.4f} [{lift[1]:+.4f}, {lift[2]:+.4f}]" if lift else "")
                + f"; macro-F1 {self.shipped.macro_f1:.4f}; ECE {self.shipped.ece:.4f}")


@dataclass(frozen=True)
class Registration:
    model_name: str
    version: str | None  # None until recorded (a run that records nothing registers nothing)
    alias: str  # the alias the gates give it (champion or challenger); publish moves it
    decision: GateDecision
    champion_before: str | None
    # for the pipeline run: the evaluate run's review tags, the gate verdict, where the report is
    review_tags: dict[str, str] = field(default_factory=dict)

    def summary(self) -> str:
        """The run summary's line."""
        version = f"v{self.version}" if self.version is not None else "(not registered: nothing recorded)"
        return f"{self.model_name} {version} -> {self.alias} ({self.decision.reason})"


@dataclass
class FullModel(TrainedModel):
    pseudo: PseudoLabels | None = None  # the refit's pseudo set (what the shipped model trained on)
    rounds: SelfTrainResult | None = None  # self_train only
    # self_train only: the pseudo_near_test check on the sets this model relabelled (logged in its round's run)
    relabel_findings: Findings | None = None
    train_rows: dict[str, int] | None = None  # rows the refit trained on, by origin
    provenance: pd.DataFrame | None = None  # those rows: row_id, label, label_source
    strategy: str = ""  # full_train.strategy

    def summary(self, oof_accuracy: float) -> str:
        """The run summary's line, with the select stage's cross-fitted gold accuracy of this model."""
        rounds = (f"; {len(self.rounds.rounds)} self-training round(s), {self.rounds.stop_reason}"
                  if self.rounds is not None else "")
        return f"{self.strategy}: cross-fitted gold accuracy {oof_accuracy:.3f}{rounds}"


@dataclass(frozen=True)
class TextChoice:
    """The text_features stage's result: the data with the chosen text featurisation, and why (both
    encoders' cross-fitted gold-only figures where ``text.encoder`` is auto)."""

    data: PipelineData
    chosen: str  # "hashed", "minilm", or "none" (no text column)
    reason: str
    oof_accuracy: dict[str, float] = field(default_factory=dict)  # per encoder compared
    oof_log_loss: dict[str, float] = field(default_factory=dict)
    encoded: int = 0  # distinct texts the encoder embedded in this stage (the rest came from the cache)
    encode_seconds: float = 0.0
    gold_only: TrainedModel | None = None  # auto: the chosen featurisation's gold-only model, trained already

    def summary(self) -> str:
        return self.reason


SHOWN_SOURCES = 6  # weak sources named in the summary line; the rest are counted


def source_accuracies(stats: pd.DataFrame, shown: int = SHOWN_SOURCES) -> str:
    """Each weak source's accuracy on gold with its interval, the sources that vote on most rows first; past
    ``shown`` sources, "… and N more" and where they all are (a table row per stage stays readable)."""
    records = stats.to_dict("records")
    if "coverage" in stats.columns:  # stable: equal coverage keeps the configured order
        records.sort(key=lambda r: -(r["coverage"] if r["coverage"] == r["coverage"] else 0.0))

    def one(r: dict) -> str:
        a, lo, hi = r.get("accuracy"), r.get("accuracy_low"), r.get("accuracy_high")
        if a is None or a != a:
            return f"{r['source']} n/a"
        return f"{r['source']} {a:.2f}" + (f" [{lo:.2f}, {hi:.2f}]" if lo is not None and lo == lo else "")

    text = ", ".join(one(r) for r in records[:shown])
    if len(records) > shown:
        text += (f" … and {len(records) - shown} more (fewer rows covered; all in the weak_labels run's "
                 "weak_labels/sources.json, or weakflow lfs)")
    return text


@dataclass(frozen=True)
class RunOutcome:
    """What each stage produced, as the summary needs it (any of the weak side may be missing)."""

    validated: Validated
    data: PipelineData  # after governance's drops and weak_labels' weak rows: what the candidates trained on
    labels: WeakLabels | None
    weak: WeakModel | None
    pseudo: PseudoLabels | None
    final: FullModel | None
    selection: Selection
    evaluation: Evaluation
    registration: Registration
    checks: Findings
    pseudo_checks: Findings | None
    text: TextChoice | None = None

    @property
    def governance(self) -> dict[str, CheckResult]:
        return self.checks.summary() | (self.pseudo_checks.summary() if self.pseudo_checks is not None else {})


@dataclass(frozen=True)
class Published:
    registration: Registration
    stages: list[tuple[str, str]]  # the run summary: (stage, one line of figures)
