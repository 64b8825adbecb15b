"""Governance stages: contamination and leakage checks before training, on the pseudo labels, and after
deployment on served rows. Each applies the configured policy and logs a finding table per check.

Before training (``governance``): exact and near-duplicates between the gold test split and every
training source (gold, weak, unlabeled), and single-feature label leakage on the gold rows. On pseudo
labels (``pseudo_governance``, and again on every self-training round's relabelled set): kept rows that
equal or are near test rows. After deployment (monitoring):
served rows equal or near to test rows (evaluation contamination) or training rows (memorisation
exposure).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import mlflow
import numpy as np
import pandas as pd

from weakflow.data_checks.contamination import (
    TEXT_NEAR, NearDuplicateIndex, exact_pairs, exact_text_pairs, joined_text, label_leakage, near_text_pairs, repeats,
    text_keys,
)
from weakflow.tasks.lib.stage import stage_task
from weakflow.tasks.lib import tracking
from weakflow.tasks.lib.config import Config
from weakflow.tasks.lib.data import PROVENANCE, ROW_ID, SPLIT, DataError, PipelineData, hash_rows
from weakflow.tasks.pseudo_label import CrossPseudo, PseudoLabels

T = TypeVar("T")


class GovernanceError(DataError):
    """A governance check failed under policy ``fail``; the message names the check and the counts.

    ``findings`` carries every check's table (not only the failed one), so the stage can log them all
    before the run stops: a reviewer of a failed run needs the pairs most."""

    def __init__(self, message: str, findings: Findings | None = None) -> None:
        super().__init__(message)
        self.findings = findings


@dataclass(frozen=True)
class CheckResult:
    """One check's outcome: how many findings and what its policy did ("none", "warned", "dropped N row(s)",
    "failed", ...)."""

    found: int
    action: str

    def __str__(self) -> str:
        return f"{self.found} found; {self.action}"


@dataclass
class Findings:
    """Every check's finding table, what its policy did, and the rows dropped per provenance."""

    tables: dict[str, pd.DataFrame] = field(default_factory=dict)  # check -> finding table
    actions: dict[str, str] = field(default_factory=dict)  # check -> "failed" | "dropped N" | "warned" | "none"
    dropped: dict[str, int] = field(default_factory=dict)  # provenance/source -> rows dropped

    def count(self, check: str) -> int:
        t = self.tables.get(check)
        return 0 if t is None else int(len(t))

    def summary(self) -> dict[str, CheckResult]:
        return {check: CheckResult(self.count(check), self.actions.get(check, "none")) for check in self.tables
                if not check.endswith("_all")}


def _pairs_with_rows(pairs: pd.DataFrame, rows: pd.DataFrame) -> pd.DataFrame:
    """Finding table: which test row, which training row (id, split, provenance), how far."""
    out = pd.DataFrame({
        "test_index": pairs["reference_index"].to_numpy(),
        ROW_ID: rows[ROW_ID].to_numpy()[pairs["row_index"].to_numpy()] if len(pairs) else np.zeros(0, np.int64),
        SPLIT: rows[SPLIT].to_numpy()[pairs["row_index"].to_numpy()] if len(pairs) else np.zeros(0, object),
    })
    if PROVENANCE in rows:
        out[PROVENANCE] = rows[PROVENANCE].to_numpy()[pairs["row_index"].to_numpy()] if len(pairs) else []
    out["distance"] = pairs["distance"].to_numpy() if "distance" in pairs else 0.0
    return out


def _apply(check: str, policy: str, table: pd.DataFrame, findings: Findings, failures: list[str], what: str) -> set:
    """Record the finding; return the row ids to drop (policy drop)."""
    findings.tables[check] = table
    if table.empty:
        findings.actions[check] = "none"
        return set()
    if policy == "fail":
        findings.actions[check] = "failed"
        failures.append(f"{check}: {len(table)} {what} (policy fail)")
        return set()
    if policy == "drop":
        ids = set(table[ROW_ID].tolist())
        findings.actions[check] = f"dropped {len(ids)} row(s)"
        return ids
    findings.actions[check] = "warned"
    return set()


def _stop_if_failed(findings: Findings, failures: list[str]) -> None:
    """Raise GovernanceError carrying the findings if any check failed. A ``drop`` decided beside a
    failure is not applied (the run stops), so its action says so instead of claiming rows were dropped."""
    if not failures:
        return
    for check, action in findings.actions.items():
        if action.startswith("dropped "):
            findings.actions[check] = "would drop " + action.removeprefix("dropped ") + "; run stopped"
    raise GovernanceError("governance checks failed: " + "; ".join(failures), findings)


def check_training(data: PipelineData, cfg: Config) -> tuple[PipelineData, Findings]:
    """Run the pre-training checks and apply their policies; raise GovernanceError on a ``fail``."""
    g = cfg.governance
    findings, failures = Findings(), []
    train = data.train
    exact_found, near_found, near_what, keys = copies(data, data.test, train, g.near_factor)
    exact = _pairs_with_rows(exact_found, train)
    rates = repeats(*keys)
    natural = g.repeated_rows == "auto" and rates.natural
    near = _pairs_with_rows(near_found, train)
    drop = _apply("exact_duplicates", "warn" if natural else g.exact_duplicates, exact, findings, failures,
                  "training row(s) equal a test row")
    if natural:  # recorded, not acted on: the rows repeat as often as training rows repeat among themselves
        findings.actions["exact_duplicates"] = f"natural repeats: {rates.text()} (governance.repeated_rows)"
    drop |= _apply("near_duplicates", g.near_duplicates, near, findings, failures, near_what)
    gold = data.rows("gold")
    numeric = data.schema.numeric  # input columns: a text feature that separates classes is the point, not a leak
    leak = label_leakage(gold[numeric].to_numpy(np.float32), data.y(gold), numeric, g.leakage_accuracy,
                         seed=cfg.seed, lower_bound=g.leakage_lower_bound)
    leaking = leak[leak["leaks"]]
    findings.tables["label_leakage"] = leaking.reset_index(drop=True)
    findings.tables["label_leakage_all"] = leak
    if len(leaking):
        names = ", ".join(f"{r.feature} ({r.accuracy:.3f})" for r in leaking.itertuples())
        findings.actions["label_leakage"] = "failed" if g.label_leakage == "fail" else "warned"
        if g.label_leakage == "fail":
            failures.append(f"label_leakage: feature(s) {names} predict the gold label alone (>= {g.leakage_accuracy:g} "
                            "cross-validated accuracy; policy fail)")
    else:
        findings.actions["label_leakage"] = "none"
    _stop_if_failed(findings, failures)
    if drop:
        gone = train[train[ROW_ID].isin(drop)]
        findings.dropped = {k: int(v) for k, v in gone[PROVENANCE].value_counts().items()}
        data = PipelineData(train=train[~train[ROW_ID].isin(drop)].reset_index(drop=True), test=data.test,
                            spec=data.spec, classes=data.classes, schema=data.schema)  # gold rows keep their folds
    return data, findings


def copies(data: PipelineData, reference: pd.DataFrame, rows: pd.DataFrame, near_factor: float
           ) -> tuple[pd.DataFrame, pd.DataFrame, str, tuple[np.ndarray, np.ndarray]]:
    """Rows of ``rows`` equal to or near a row of ``reference`` (the test split): (exact pairs, near pairs,
    what "near" meant, the two tables' row keys). With text columns: equal once text is normalised, and near
    as near copies of the text (character n-gram cosine); without: equal numbers, and near in standardised
    feature space within ``near_factor`` x the test rows' median nearest-neighbour distance."""
    schema = data.schema
    if schema.text:
        exact = exact_text_pairs(reference, rows, schema.numeric, schema.text)
        near = near_text_pairs(joined_text(reference, schema.text), joined_text(rows, schema.text))
        keys = (text_keys(reference, schema.numeric, schema.text), text_keys(rows, schema.numeric, schema.text))
        return exact, near, f"training row(s) whose text is a near copy of a test row's (cosine >= {TEXT_NEAR:g})", keys
    ref_x, rows_x = data.x(reference), data.x(rows)
    index = NearDuplicateIndex(ref_x, near_factor)
    what = (f"training row(s) within {index.threshold:.3g} of a test row ({near_factor:g} x median test NN "
            f"distance {index.median_nn:.3g})")
    return exact_pairs(ref_x, rows_x), index.near_pairs(rows_x), what, (hash_rows(ref_x), hash_rows(rows_x))


def check_pseudo(data: PipelineData, pseudo: PseudoLabels, cfg: Config) -> tuple[PseudoLabels, Findings]:
    """Pseudo labels placed on rows that equal or are near test rows, under ``governance.pseudo_near_test``.

    A plain function, run on every weak model's set (``pseudo_governance``) and on every set a
    self-training student relabels (tasks/full_train.py), so no round brings a dropped row back.
    Under ``drop`` a new set without those rows is returned (written beside the old file); the set passed
    in is left as it was."""
    g = cfg.governance
    findings, failures = Findings(), []
    kept = pseudo.kept
    exact, near, _, _ = copies(data, data.test, kept, g.near_factor)
    pairs = pd.concat([exact.assign(distance=0.0), near], ignore_index=True)
    table = _pairs_with_rows(pairs, kept)
    table["source"] = kept["source"].to_numpy()[pairs["row_index"].to_numpy()] if len(pairs) else []
    _apply("pseudo_near_test", g.pseudo_near_test, table, findings, failures,
           "pseudo-labelled row(s) equal or near a test row")
    _stop_if_failed(findings, failures)
    if len(pairs) and g.pseudo_near_test == "drop":
        bad = np.zeros(len(kept), bool)
        bad[pairs["row_index"].to_numpy()] = True
        findings.dropped = {"pseudo": int(bad.sum())}
        findings.actions["pseudo_near_test"] = f"dropped {int(bad.sum())} row(s)"  # rows, not distinct ids
        pseudo = pseudo.without(bad, data.classes, pseudo.path.with_name(pseudo.path.stem + "-governed.parquet"))
    return pseudo, findings


def check_all_pseudo(data: PipelineData, pseudo: CrossPseudo, cfg: Config) -> tuple[CrossPseudo, Findings]:
    """:func:`check_pseudo` on the refit's set and on every fold model's; the findings are the refit's, with
    the rows dropped from the fold sets counted apart (``pseudo_fold<k>``)."""
    folds = []
    dropped: dict[str, int] = {}
    for f, fold_set in enumerate(pseudo.folds):
        checked, found = check_pseudo(data, fold_set, cfg)
        folds.append(checked)
        dropped |= {f"pseudo_fold{f}": n for n in found.dropped.values()}
    refit, findings = check_pseudo(data, pseudo.refit, cfg)
    findings.dropped |= dropped
    return CrossPseudo(refit, folds), findings


def verdict(findings: Findings) -> str:
    """``failed`` (a ``fail`` policy stopped the run), ``warned`` (something found and only recorded) or
    ``passed`` (nothing found, or every finding dropped): the stage run's ``governance`` tag."""
    actions = findings.actions.values()
    if any(a == "failed" for a in actions):
        return "failed"
    return "warned" if any(a == "warned" for a in actions) else "passed"


def log_findings(findings: Findings, prefix: str = "governance") -> None:
    """Tables, counts, drops and actions into the active run (also when a check failed)."""
    mlflow.set_tag("governance", verdict(findings))
    for check, table in findings.tables.items():
        tracking.log_frame(table, prefix, check)
    metrics = {f"{check}_found": findings.count(check) for check in findings.tables if not check.endswith("_all")}
    metrics |= {f"dropped_{k}": v for k, v in findings.dropped.items()}
    mlflow.log_metrics(metrics)
    mlflow.set_tags({f"governance.{k}": v for k, v in findings.actions.items()})
    tracking.log_json({"actions": findings.actions, "dropped": findings.dropped,
                       "counts": {c: findings.count(c) for c in findings.tables}}, f"{prefix}/summary.json")


def run_logged(check: Callable[..., tuple[T, Findings]], *args: Any, prefix: str = "governance") -> tuple[T, Findings]:
    """Run a check in the active run and log its findings whether it passes or fails; on a failure
    the reason goes to ``<prefix>/summary.txt`` and the error is raised after everything is logged."""
    try:
        out, findings = check(*args)
    except GovernanceError as exc:
        if exc.findings is not None:
            log_findings(exc.findings, prefix)
        mlflow.set_tag("governance", "failed")
        mlflow.log_text(f"{exc}\n", f"{prefix}/summary.txt")
        raise
    log_findings(findings, prefix)
    return out, findings


@stage_task("governance")
def governance(data: PipelineData, cfg: Config, parent_run_id: str, experiment_id: str) -> tuple[PipelineData, Findings]:
    with tracking.stage_run("governance", parent_run_id, experiment_id):
        tracking.log_section(cfg.governance, "governance")
        return run_logged(check_training, data, cfg)


@stage_task("pseudo_governance")
def pseudo_governance(data: PipelineData, pseudo: CrossPseudo, cfg: Config, parent_run_id: str,
                      experiment_id: str) -> tuple[CrossPseudo, Findings]:
    with tracking.stage_run("pseudo_governance", parent_run_id, experiment_id):
        return run_logged(check_all_pseudo, data, pseudo, cfg)
