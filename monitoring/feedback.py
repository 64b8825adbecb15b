"""Delayed gold labels for served rows (``weakflow feedback FILE``): read and check the whole file before
anything is stored.

A file is refused, with one line naming the column, the rows and the bad values, when a column is
missing, it has no rows, a CSV row has more or fewer fields than the header, a ``request_id`` is empty,
a ``row_index`` is not a non-negative integer, a (request_id, row_index) was never served, or a label is
empty, not an integer, or not a class of the model version that answered that row. Each bad row is
reported once, with its first problem: a label is judged against the class set of the version that
answered its row, so a row whose key is bad or unknown gets no label verdict. Rows are **data rows
counted from 1** (row 1 is the first row after the header; in a CSV without blank lines, row N is on
line N + 1).

The class set comes from the model version each row's log entry names (``model_name``,
``model_version``), read from that version's registered artifact, rather than from whatever version is
champion now: the label has to fit the model that made the prediction, which after a hot reload or a
rollback need not be the current champion (and a retrained champion may have another class set).
"""

from __future__ import annotations

import csv
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

COLUMNS = ("request_id", "row_index", "label")
SHOWN = 10  # problems listed in the message; the rest are counted
ROWS_NOTE = "rows are data rows counted from 1, the header not counted"
FIELD_PROBLEMS = "field_problems"  # DataFrame.attrs key: {data row: what is wrong with its field count}
_INT = re.compile(r"[+-]?\d+(\.0*)?")

ClassesOf = Callable[[str, str], Sequence[Any]]  # (model name, version) -> that version's classes


class FeedbackError(ValueError):
    """A feedback file that cannot be stored; one line, and nothing was stored."""


def _count(n: int, what: str) -> str:
    return f"{'one' if n == 1 else n} {what}{'' if n == 1 else 's'}"


def read_csv_strict(path: Path) -> pd.DataFrame:
    """A CSV read as text, row by row, strictly: a row with more or fewer fields than the header is not
    shifted or padded into other columns (as pandas does with an extra field in the first row: it becomes
    the index) but kept empty and named in ``attrs[FIELD_PROBLEMS]`` for :func:`check_feedback` to report.
    Blank lines are skipped and not counted."""
    with path.open(newline="", encoding="utf-8-sig") as handle:
        rows = [r for r in csv.reader(handle) if r]
    if not rows:
        raise FeedbackError(f"is empty; expected a header {','.join(COLUMNS)} and one row per label")
    header, data = rows[0], rows[1:]
    repeated = sorted({c for c in header if header.count(c) > 1})
    if repeated:
        raise FeedbackError(f"the header repeats column(s) {', '.join(map(repr, repeated))}: expected the columns "
                            f"{','.join(COLUMNS)} once each")
    problems: dict[int, str] = {}
    kept = []
    for row, fields in enumerate(data, start=1):
        extra = len(fields) - len(header)
        if extra:
            more, n = ("too many", extra) if extra > 0 else ("too few", -extra)
            problems[row] = (f"{_count(n, 'field')} {more}: {len(fields)} fields, the header has {len(header)} "
                             f"({','.join(header)})")
            fields = [""] * len(header)
        kept.append(fields)
    frame = pd.DataFrame(kept, columns=header, dtype=str) if kept else pd.DataFrame(columns=header, dtype=str)
    frame.attrs[FIELD_PROBLEMS] = problems
    return frame


def read_feedback(path: Path) -> pd.DataFrame:
    """The file as written: a CSV is read as text (no "2.5" turned into 2.5 or a request id into a number)
    and strictly (:func:`read_csv_strict`), a Parquet file keeps its types. Any failure is a
    :class:`FeedbackError`."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".csv", ".parquet", ".pq"):
        raise FeedbackError(f"has suffix {suffix!r}; expected .csv, .parquet or .pq")
    if not path.is_file():
        raise FeedbackError("does not exist or is not a file")
    try:
        if suffix == ".csv":
            return read_csv_strict(path)
        return pd.read_parquet(path)
    except FeedbackError:
        raise
    except Exception as exc:  # the CSV reader, the decoder and pyarrow raise many types; all mean "unreadable"
        raise FeedbackError(f"cannot be read as {suffix.lstrip('.')}: {type(exc).__name__}: {exc}") from exc


def _show(value: Any) -> str:
    return repr(value.item() if isinstance(value, np.generic) else value)


def _is_empty(value: Any) -> bool:
    return value is None or (isinstance(value, str) and not value.strip()) or \
        (isinstance(value, (float, np.floating)) and math.isnan(value))


def _integer(value: Any) -> int | None:
    """``value`` as an int when it is one (3, 3.0, "3", " 3 ", "3.0"); None otherwise (2.5, "cat", True)."""
    if isinstance(value, (bool, np.bool_)):
        return None
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return int(value) if math.isfinite(value) and float(value).is_integer() else None
    if isinstance(value, str) and _INT.fullmatch(value.strip()):
        return int(float(value.strip())) if "." in value else int(value.strip())
    return None


def describe_classes(classes: Sequence[Any]) -> str:
    ints = all(isinstance(c, (int, np.integer)) for c in classes)
    if ints and len(classes) > 3 and list(classes) == list(range(int(classes[0]), int(classes[0]) + len(classes))):
        return f"{classes[0]}-{classes[-1]}"
    return ", ".join(str(c) for c in classes)


def check_label(value: Any, classes: Sequence[Any] | None, model: str = "") -> tuple[Any, str | None]:
    """The one place a label is judged: ``(label, None)`` when ``value`` is a label of ``classes`` (the
    class set of the version that answered the row; ``None``: the format only), else ``(None, why)``.
    A model with named classes ("spam", "ham") takes the names, matched exactly after trimming spaces."""
    if _is_empty(value):
        return None, "empty; expected a class label"
    if classes is not None and any(isinstance(c, str) for c in classes):
        name = str(value).strip()
        if name not in set(map(str, classes)):
            return None, f"{_show(value)} is not a class of {model} (its classes: {describe_classes(classes)})"
        return name, None
    label = _integer(value)
    if label is None:
        return None, f"{_show(value)} is not an integer class label"
    if classes is not None and label not in {int(c) for c in classes}:
        return None, f"{label} is not a class of {model} (its classes: {describe_classes(classes)})"
    return label, None


@dataclass
class Problem:
    column: str  # "": the whole row (e.g. its field count)
    row: int | None  # data row from 1; None: the whole file
    text: str

    def __str__(self) -> str:
        if not self.column:
            return f"row {self.row}: {self.text}"
        where = f"column {self.column!r}" if self.row is None else f"column {self.column!r} row {self.row}"
        return f"{where}: {self.text}"


def refuse(problems: list[Problem]) -> FeedbackError:
    shown = "; ".join(str(p) for p in problems[:SHOWN])
    more = f"; and {len(problems) - SHOWN} more" if len(problems) > SHOWN else ""
    noun = "problem" if len(problems) == 1 else "problems"
    return FeedbackError(f"{len(problems)} {noun}, nothing stored ({ROWS_NOTE}): {shown}{more}")


def check_feedback(labels: pd.DataFrame, served: Callable[[list[str]], dict[tuple[str, int], tuple[str, str]]],
                   classes_of: ClassesOf) -> list[tuple[str, int, Any]]:
    """Every row checked (see the module docstring) before anything is stored: the ``(request_id,
    row_index, label)`` rows to store, or :class:`FeedbackError` listing what is wrong.

    ``served(request_ids)`` maps each logged ``(request_id, row_index)`` of those requests to the
    ``(model_name, model_version)`` that answered it; ``classes_of(name, version)`` is that version's
    class set."""
    missing = [c for c in COLUMNS if c not in labels.columns]
    if missing:
        raise FeedbackError(f"missing column(s) {', '.join(map(repr, missing))}: expected the columns "
                            f"{','.join(COLUMNS)}; got {','.join(map(str, labels.columns)) or 'none'}")
    if labels.empty:
        raise FeedbackError(f"no rows: only a header; expected one row per label ({','.join(COLUMNS)}); "
                            "nothing stored")
    problems: list[Problem] = []
    keys: list[tuple[str, int] | None] = []  # None: the row already has its problem, its label is not judged
    fields = labels.attrs.get(FIELD_PROBLEMS, {})
    for row, (rid, idx) in enumerate(zip(labels["request_id"], labels["row_index"]), start=1):
        if row in fields:
            problems.append(Problem("", row, fields[row]))
            keys.append(None)
            continue
        rid_ok = not _is_empty(rid)
        index = None if _is_empty(idx) else _integer(idx)
        index_ok = index is not None and index >= 0
        bad_index = f"{'empty' if _is_empty(idx) else _show(idx)}; expected an integer >= 0 (the record's " \
                    "position in its request)"
        if not rid_ok and not index_ok:
            problems.append(Problem("request_id,row_index", row, f"request_id empty; row_index {bad_index}"))
        elif not rid_ok:
            problems.append(Problem("request_id", row, "empty"))
        elif not index_ok:
            problems.append(Problem("row_index", row, bad_index))
        keys.append((str(rid).strip(), index) if rid_ok and index_ok else None)  # type: ignore[misc]
    answered = served(sorted({k[0] for k in keys if k is not None}))
    for row, key in enumerate(keys, start=1):
        if key is not None and key not in answered:
            problems.append(Problem("request_id,row_index", row, f"no logged prediction for ({key[0]!r}, {key[1]})"))
            keys[row - 1] = None  # no version answered it: its label cannot be judged
    class_sets: dict[tuple[str, str], Sequence[Any] | None] = {}
    for model in sorted({answered[k] for k in keys if k in answered}):
        try:
            class_sets[model] = classes_of(*model)
        except Exception as exc:  # noqa: BLE001 - a deleted version or an unreachable registry: refuse, say why
            class_sets[model] = None
            rows = [row for row, k in enumerate(keys, start=1) if answered.get(k) == model]
            problems.append(Problem("label", None, f"cannot read the class set of {model[0]} v{model[1]} (which "
                                                   f"answered rows {_rows(rows)}): {type(exc).__name__}: "
                                                   f"{str(exc).splitlines()[0] if str(exc) else ''}"))
    out = []
    for row, (key, value) in enumerate(zip(keys, labels["label"]), start=1):
        if key is None:
            continue  # reported above: one problem per row
        model = answered[key]
        if class_sets.get(model) is None:
            continue  # its class set could not be read: reported above for the whole file
        label, why = check_label(value, class_sets[model], f"{model[0]} v{model[1]}")
        if why:
            problems.append(Problem("label", row, why))
        else:
            out.append((key[0], key[1], label))
    if problems:
        problems.sort(key=lambda p: (p.row or 0))
        raise refuse(problems)
    return out


def _rows(rows: list[int]) -> str:
    return ", ".join(map(str, rows[:5])) + (f" and {len(rows) - 5} more" if len(rows) > 5 else "")
