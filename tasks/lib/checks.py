"""What a governance check found and did (typed results shared by the governance stages, the full
training and the register stage's card), and the checks two stages run: the pseudo-label check
(``pseudo_governance`` on every weak model's set, the full training on every set a self-training student
relabels, so no round brings a dropped row back) and the pieces the pre-training check shares with it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from weakflow.data_checks.contamination import (
    TEXT_NEAR, NearDuplicateIndex, exact_pairs, exact_text_pairs, joined_text, near_text_pairs, picture_copies,
    text_keys,
)
from weakflow.tasks.lib.data import PROVENANCE, ROW_ID, SPLIT, DataError, PipelineData, hash_rows
from weakflow.tasks.lib.pseudo_labels import CrossPseudo, PseudoLabels

if TYPE_CHECKING:
    from weakflow.tasks.lib.config import GovernanceConfig


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


def pairs_with_rows(pairs: pd.DataFrame, rows: pd.DataFrame) -> pd.DataFrame:
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


def apply_policy(check: str, policy: str, table: pd.DataFrame, findings: Findings, failures: list[str],
                 what: str) -> set:
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


def stop_if_failed(findings: Findings, failures: list[str]) -> None:
    """Raise GovernanceError carrying the findings if any check failed. A ``drop`` decided beside a
    failure is not applied (the run stops), so its action says so instead of claiming rows were dropped."""
    if not failures:
        return
    for check, action in findings.actions.items():
        if action.startswith("dropped "):
            findings.actions[check] = "would drop " + action.removeprefix("dropped ") + "; run stopped"
    raise GovernanceError("governance checks failed: " + "; ".join(failures), findings)


def copies(data: PipelineData, reference: pd.DataFrame, rows: pd.DataFrame, near_factor: float
           ) -> tuple[pd.DataFrame, pd.DataFrame, str, tuple[np.ndarray, np.ndarray]]:
    """Rows of ``rows`` equal to or near a row of ``reference`` (the test split): (exact pairs, near pairs,
    what "near" meant, the two tables' row keys). With text columns: equal once text is normalised, and near
    as near copies of the text (character n-gram cosine); without: equal numbers, and near in standardised
    feature space within ``near_factor`` x the test rows' median nearest-neighbour distance. With pictures: the
    picture decides (:func:`weakflow.data_checks.contamination.picture_copies`)."""
    schema = data.schema
    if schema.images is not None:
        return picture_copies(data, reference, rows, near_factor)
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


def check_pseudo(data: PipelineData, pseudo: PseudoLabels, section: GovernanceConfig) -> tuple[PseudoLabels, Findings]:
    """Pseudo labels placed on rows that equal or are near test rows, under ``section.pseudo_near_test``.

    Under ``drop`` a new set without those rows is returned (written beside the old file); the set passed
    in is left as it was."""
    g = section
    findings, failures = Findings(), []
    kept = pseudo.kept
    exact, near, _, _ = copies(data, data.test, kept, g.near_factor)
    pairs = pd.concat([exact.assign(distance=0.0), near], ignore_index=True)
    table = pairs_with_rows(pairs, kept)
    table["source"] = kept["source"].to_numpy()[pairs["row_index"].to_numpy()] if len(pairs) else []
    apply_policy("pseudo_near_test", g.pseudo_near_test, table, findings, failures,
                 "pseudo-labelled row(s) equal or near a test row")
    stop_if_failed(findings, failures)
    if len(pairs) and g.pseudo_near_test == "drop":
        bad = np.zeros(len(kept), bool)
        bad[pairs["row_index"].to_numpy()] = True
        findings.dropped = {"pseudo": int(bad.sum())}
        findings.actions["pseudo_near_test"] = f"dropped {int(bad.sum())} row(s)"  # rows, not distinct ids
        pseudo = pseudo.without(bad, data.classes, pseudo.path.with_name(pseudo.path.stem + "-governed.parquet"))
    return pseudo, findings


def check_all_pseudo(data: PipelineData, pseudo: CrossPseudo, section: GovernanceConfig
                     ) -> tuple[CrossPseudo, Findings]:
    """:func:`check_pseudo` on the refit's set and on every fold model's; the findings are the refit's, with
    the rows dropped from the fold sets counted apart (``pseudo_fold<k>``)."""
    folds = []
    dropped: dict[str, int] = {}
    for f, fold_set in enumerate(pseudo.folds):
        checked, found = check_pseudo(data, fold_set, section)
        folds.append(checked)
        dropped |= {f"pseudo_fold{f}": n for n in found.dropped.values()}
    refit, findings = check_pseudo(data, pseudo.refit, section)
    findings.dropped |= dropped
    return CrossPseudo(refit, folds), findings


def verdict(findings: Findings) -> str:
    """``failed`` (a ``fail`` policy stopped the run), ``warned`` (something found and only recorded) or
    ``passed`` (nothing found, or every finding dropped): the stage run's ``governance`` tag."""
    actions = findings.actions.values()
    if any(a == "failed" for a in actions):
        return "failed"
    return "warned" if any(a == "warned" for a in actions) else "passed"
