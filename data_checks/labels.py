"""Checks on the class set and the label columns that run before the validation suite, each one line.

The suite's "a class in [...]" expectation would list ``'Spam'`` or ``' spam '`` as bad values without
saying why; a label that differs from a class only by case or surrounding spaces is a spelling the user
must fix (a vote silently lost or a label silently re-read is worse than a refusal), so it gets its
own message naming the file, the column, example rows and the classes. The class set itself (declared in
``data.classes``, which the configuration checks, or taken from the test file's labels, checked here)
must list every class once and not contain the abstain value.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from weakflow.tasks.lib.config import class_set_problem
from weakflow.tasks.lib.data import DataError, RawTables

SHOWN = 3  # example rows per column


def check_class_set(raw: RawTables, classes: list, voting: bool = True) -> None:
    """The class set taken from the test file: distinct up to case, and without the abstain value where any
    weak source votes (weak columns, rules or labelling functions: ``voting``)."""
    spec = raw.spec
    if spec.classes is not None or not classes:
        return  # declared classes were checked with the configuration; none: the suite says where to get them
    where = f"the labels in column {spec.label_column!r} of data.test_path {Path(spec.test_path).absolute()}"
    problem = class_set_problem(classes, spec.abstain if voting else None, where)
    folded: dict[str, list] = {}
    for c in classes:
        folded.setdefault(str(c).casefold(), []).append(c)
    alike = [names for names in folded.values() if len(names) > 1]
    if problem is None and alike:
        problem = (f"{where} hold {', '.join(' and '.join(repr(n) for n in names) for names in alike)}, which "
                   "differ only by case; write each class one way (or list the classes in data.classes)")
    if problem:
        raise DataError(problem)


def check_label_spelling(raw: RawTables, classes: list) -> None:
    """Labels (gold and weak) that are a class, or the abstain value, but for case or surrounding spaces:
    one DataError naming each such column's file, example rows (counted from 0) and the expected values."""
    if not classes or not all(isinstance(c, str) for c in classes):
        return  # integer classes: text spelling an integer is read as it (tasks.lib.data.read_label_columns)
    spec = raw.spec
    found = []
    for field, path, frame, columns in (
        ("data.train_path", spec.train_path, raw.train, [spec.label_column, *spec.weak_label_columns]),
        ("data.test_path", spec.test_path, raw.test, [spec.label_column]),
    ):
        for column in columns:
            if column not in frame.columns:
                continue  # the suite reports a missing column
            allowed = list(classes)
            if column in spec.weak_label_columns and isinstance(spec.abstain, str) and spec.abstain.strip():
                allowed.append(spec.abstain)
            found += _misspelt(frame[column], allowed, field, path, column)
    if found:
        raise DataError("; ".join(found) + "; write each label exactly as its class")


def _misspelt(column: pd.Series, allowed: list[str], field: str, path: Path, name: str) -> list[str]:
    """The message part for one column, or nothing."""
    folded = {a.casefold() for a in allowed}
    values = pd.unique(column.dropna().to_numpy())  # each distinct label once, not each row
    wrong = [v for v in values if isinstance(v, str) and v not in allowed and v.strip().casefold() in folded]
    if not wrong:
        return []
    bad = column[column.isin(wrong)]
    rows = ", ".join(f"{v!r} at row {i}" for i, v in bad.head(SHOWN).items())
    return [f"{field} {Path(path).absolute()} column {name!r}: {len(bad)} value(s) differ from the expected "
            f"{allowed} only by case or surrounding spaces, e.g. {rows} (rows of the file counted from 0)"]
