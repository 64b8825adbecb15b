"""What each weak source does on the data: the per-source table and example rows of ``weakflow lfs``.

Pure functions of the votes (class indices, -1 = abstain) and the gold labels, so the command, its MLflow
run and a test all see the same numbers.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from weakflow.tasks.lib.config import FilesData

WIDTH = 80  # characters of an example row's text


def source_table(votes: np.ndarray, names: list[str], gold: np.ndarray, classes: list) -> pd.DataFrame:
    """Per source: the class(es) it votes, coverage / overlap / conflict (shares of all rows), votes, and its
    accuracy on the gold rows it voted on with a 95% Wilson interval (NaN where it voted on none)."""
    from weakflow.tasks.core.aggregate import source_statistics
    from weakflow.tasks.core.trusted import wilson_interval

    stats = pd.DataFrame(source_statistics(votes, names, gold))
    judged = (votes >= 0) & (gold >= 0)[:, None]
    correct = (judged & (votes == gold[:, None])).sum(axis=0)
    trials = judged.sum(axis=0)
    low, high = wilson_interval(correct, trials)
    stats.insert(1, "polarity", [", ".join(str(classes[c]) for c in np.unique(col[col >= 0])) for col in votes.T])
    stats["gold_correct"] = correct.astype(int)
    stats["accuracy"] = np.where(trials > 0, correct / np.maximum(trials, 1), np.nan)
    stats["accuracy_low"], stats["accuracy_high"] = low, high
    return stats[["source", "polarity", "coverage", "overlap", "conflict", "votes", "gold_rows", "gold_correct",
                  "accuracy", "accuracy_low", "accuracy_high"]]


def example_rows(frame: pd.DataFrame, spec: FilesData, votes: np.ndarray, names: list[str], gold: np.ndarray,
                 classes: list, per_source: int, seed: int = 0, columns: dict[str, str] | None = None) -> pd.DataFrame:
    """Up to ``per_source`` rows per source where it fires, and as many gold rows where its vote is wrong
    (a seeded sample, in row order; rows count from 0 in the file read). ``columns``: a rule's own column,
    shown first when it is not a text column (a threshold's number)."""
    rng = np.random.default_rng(seed)
    out: list[dict[str, Any]] = []
    for j, name in enumerate(names):
        fired = votes[:, j] >= 0
        for kind, mask in (("fires", fired), ("wrong", fired & (gold >= 0) & (votes[:, j] != gold))):
            rows = np.flatnonzero(mask)
            if len(rows) > per_source:
                rows = np.sort(rng.choice(rows, size=per_source, replace=False))
            for row in rows[:per_source].tolist():
                out.append({"source": name, "kind": kind, "row": row, "vote": str(classes[votes[row, j]]),
                            "gold": str(classes[gold[row]]) if gold[row] >= 0 else "",
                            "text": row_text(frame, row, spec, (columns or {}).get(name))})
    return pd.DataFrame(out, columns=["source", "kind", "row", "vote", "gold", "text"])


def row_text(frame: pd.DataFrame, row: int, spec: FilesData, column: str | None = None) -> str:
    """Row ``row`` (a position) as one short line: its text columns (or, with none, its numbers and its picture's
    path), a rule's number first. Read column by column: a row Series would turn the integers of a mixed row into
    floats."""
    def value(c: str) -> Any:
        return frame[c].iloc[row]

    parts = [f"{column}={value(column)}"] if column and column not in spec.text_columns else []
    if spec.text_columns:
        parts += ["" if pd.isna(value(c)) else str(value(c)) for c in spec.text_columns]
    else:
        parts += [f"{c}={value(c)}" for c in [*spec.feature_columns, *spec.image_columns] if c != column]
    return shorten(" | ".join(parts))


def shorten(text: str, width: int = WIDTH) -> str:
    """One line (whitespace runs become one space), at most ``width`` characters, ``…`` where cut."""
    flat = " ".join(str(text).split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"
