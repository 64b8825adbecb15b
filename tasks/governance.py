"""Governance stages: contamination and leakage checks before training and on the pseudo labels. Each
applies the configured policy and logs a finding table per check.

Before training (``governance``): exact and near-duplicates between the gold test split and every
training source (gold, weak, unlabeled), and single-feature label leakage on the gold rows. Rows that
carry a picture are compared by their pictures (same pixels; perceptual hash within a few bits). On pseudo
labels (``pseudo_governance``, and again on every self-training round's relabelled set, by the full
training): kept rows that equal or are near test rows (tasks/lib/checks.py). After deployment
(monitoring): served rows equal or near to test rows (evaluation contamination) or training rows
(memorisation exposure).
"""

from __future__ import annotations

import numpy as np

from weakflow.data_checks.contamination import label_leakage, picture_copies, picture_examples, repeats
from weakflow.tasks.lib import tracking
from weakflow.tasks.lib.check_records import log_failure, log_findings
from weakflow.tasks.lib.checks import (
    Findings, GovernanceError, apply_policy, check_all_pseudo, copies, pairs_with_rows, stop_if_failed,
)
from weakflow.tasks.lib.config import GovernanceConfig
from weakflow.tasks.lib.data import PROVENANCE, ROW_ID, PipelineData
from weakflow.tasks.lib.pseudo_labels import CrossPseudo
from weakflow.tasks.lib.steps import RunContext, Stage


def check_training(data: PipelineData, section: GovernanceConfig, seed: int) -> tuple[PipelineData, Findings]:
    """Run the pre-training checks and apply their policies; raise GovernanceError on a ``fail``. ``seed``:
    the leakage check's cross-validation."""
    g = section
    findings, failures = Findings(), []
    train = data.train
    pictures = data.schema.images is not None  # the picture decides: same pixels, or perceptual hashes close
    find = picture_copies if pictures else copies
    exact_found, near_found, near_what, keys = find(data, data.test, train, g.near_factor)
    exact_what = "training row(s) equal a test row"
    if pictures:
        exact_what = ("training row(s) whose picture equals a test picture (same pixels)"
                      + picture_examples(exact_found, data.schema.images.paths(data.test),
                                         data.schema.images.paths(train)))
    exact = pairs_with_rows(exact_found, train)
    rates = repeats(*keys)
    natural = g.repeated_rows == "auto" and rates.natural and not pictures  # a test picture in training is a leak
    near = pairs_with_rows(near_found, train)
    drop = apply_policy("exact_duplicates", "warn" if natural else g.exact_duplicates, exact, findings, failures,
                        exact_what)
    if natural:  # recorded, not acted on: the rows repeat as often as training rows repeat among themselves
        findings.actions["exact_duplicates"] = f"natural repeats: {rates.text()} (governance.repeated_rows)"
    drop |= apply_policy("near_duplicates", g.near_duplicates, near, findings, failures, near_what)
    gold = data.rows("gold")
    numeric = data.schema.numeric  # input columns: a text feature that separates classes is the point, not a leak
    leak = label_leakage(gold[numeric].to_numpy(np.float32), data.y(gold), numeric, g.leakage_accuracy,
                         seed=seed, lower_bound=g.leakage_lower_bound)
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
    stop_if_failed(findings, failures)
    if drop:
        gone = train[train[ROW_ID].isin(drop)]
        findings.dropped = {k: int(v) for k, v in gone[PROVENANCE].value_counts().items()}
        data = PipelineData(train=train[~train[ROW_ID].isin(drop)].reset_index(drop=True), test=data.test,
                            spec=data.spec, classes=data.classes, schema=data.schema)  # gold rows keep their folds
    return data, findings


# --- governance: before training -------------------------------------------------------------------------

def compute(ctx: RunContext, data: PipelineData, section: GovernanceConfig) -> tuple[PipelineData, Findings]:
    """The training rows with what the checks' policies dropped removed, and every check's findings."""
    return check_training(data, section, ctx.seed)


def log_settings(ctx: RunContext, data: PipelineData, section: GovernanceConfig) -> None:
    tracking.log_section(section, "governance")


def record(result: tuple[PipelineData, Findings], ctx: RunContext, data: PipelineData,
           section: GovernanceConfig) -> None:
    log_findings(result[1])


def record_error(error: Exception, ctx: RunContext, data: PipelineData, section: GovernanceConfig) -> None:
    """A failed check's findings and reason (the error then stops the run)."""
    if isinstance(error, GovernanceError):
        log_failure(error)


STAGE = Stage("governance", compute, record, record_error=record_error, settings=log_settings)


# --- pseudo_governance: on every weak model's pseudo set -------------------------------------------------

def compute_pseudo(ctx: RunContext, data: PipelineData, pseudo: CrossPseudo, section: GovernanceConfig
                   ) -> tuple[CrossPseudo, Findings]:
    """The sets without what ``pseudo_near_test: drop`` removed, and the refit set's findings."""
    return check_all_pseudo(data, pseudo, section)


def record_pseudo(result: tuple[CrossPseudo, Findings], ctx: RunContext, data: PipelineData, pseudo: CrossPseudo,
                  section: GovernanceConfig) -> None:
    log_findings(result[1])


def record_pseudo_error(error: Exception, ctx: RunContext, data: PipelineData, pseudo: CrossPseudo,
                        section: GovernanceConfig) -> None:
    if isinstance(error, GovernanceError):
        log_failure(error)


PSEUDO_STAGE = Stage("pseudo_governance", compute_pseudo, record_pseudo, record_error=record_pseudo_error)
