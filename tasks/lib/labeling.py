"""Labelling functions: load them from "module:function" refs, run them (and rules) batchwise, build vote matrices.

An LF takes a DataFrame batch of rows' input columns (numbers, text, picture paths made absolute) and tag
columns (``data.tag_columns``: tags, metadata), never labels, and returns one class *value* (an int or a name)
or the abstain value per row. Its output is checked strictly here, because one
stray NaN or misspelt class would otherwise surface much later as a confusing error inside aggregation.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from weakflow.tasks.lib.config import FilesData, RuleConfig
from weakflow.tasks.lib.data import DataError
from weakflow.tasks.lib.rules import LabelingFunctionError, Rule, from_config  # noqa: F401 (re-exported)

MAX_SHOWN = 5  # distinct offending values quoted in an error message


# What user code may raise that we turn into a LabelingFunctionError naming it: any exception, and SystemExit
# (a module or function calling sys.exit() would otherwise end a run with exit 0 and nothing said).
# KeyboardInterrupt is left alone: it is the user's Ctrl-C, which must stop the command as an interrupt.
USER_CODE_ERRORS = (Exception, SystemExit)


def _raised(exc: BaseException) -> str:
    """``raised ValueError: why`` / ``called sys.exit(0)``, on one line."""
    if isinstance(exc, SystemExit):
        return f"called sys.exit({exc.code!r})"
    text = " ".join(str(exc).split())
    return f"raised {type(exc).__name__}{': ' + text if text else ''}"


def _import_user_module(module_name: str) -> Any:
    """``importlib.import_module``, and where the module is not on the Python path, from the working directory:
    the README's ``my_lfs.py`` beside the config works as written (the console script, like any installed
    script, does not put the working directory on ``sys.path``). Spawned ``--shards`` workers inherit it."""
    import sys

    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        top = module_name.split(".")[0]
        here = Path.cwd()
        if exc.name != top or not ((here / f"{top}.py").is_file() or (here / top / "__init__.py").is_file()):
            raise
    sys.path.append(str(here))  # appended: it never shadows an installed library
    return importlib.import_module(module_name)


def load_labeling_function(ref: str) -> Callable[[pd.DataFrame], Any]:
    """Import the callable named by ``ref`` ("package.module:function"; the function part may be dotted).

    Whatever importing or looking it up raises, SystemExit included, becomes a LabelingFunctionError naming
    ``ref``: user code must not end the run silently."""
    if not isinstance(ref, str) or ref.count(":") != 1:
        raise LabelingFunctionError(f"labelling function ref {ref!r} must look like 'module.path:function'")
    module_name, attr_path = ref.split(":")
    if not module_name or not attr_path:
        raise LabelingFunctionError(f"labelling function ref {ref!r} must look like 'module.path:function'")
    try:
        target: Any = _import_user_module(module_name)
    except ModuleNotFoundError as exc:
        raise LabelingFunctionError(f"labelling function {ref}: module not found ({exc}); it is looked for on the "
                                    f"Python path and in the working directory {Path.cwd()}") from exc
    except USER_CODE_ERRORS as exc:  # any import-time failure of user code, sys.exit() included
        raise LabelingFunctionError(f"labelling function {ref}: importing {module_name} {_raised(exc)}") from exc
    for part in attr_path.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise LabelingFunctionError(
                f"labelling function {ref}: {module_name} has no attribute {attr_path!r}") from None
        except USER_CODE_ERRORS as exc:  # a module __getattr__ or property is user code too
            raise LabelingFunctionError(f"labelling function {ref}: looking up {attr_path} {_raised(exc)}") from exc
    if not callable(target):
        raise LabelingFunctionError(
            f"labelling function {ref}: {attr_path} is not callable (it is a {type(target).__name__})"
        )
    return target


def check_label_set(classes: Sequence[Any], abstain: Any) -> list:
    """The class values as a list (all ints, or all strings), distinct, with ``abstain`` not among them."""
    labels = list(classes)
    ints = all(isinstance(c, (int, np.integer)) and not isinstance(c, (bool, np.bool_)) for c in labels)
    if not labels or not (ints or all(isinstance(c, str) for c in labels)):
        raise ValueError(f"classes must be a non-empty list of ints or of strings, got {labels!r}")
    labels = [int(c) for c in labels] if ints else labels
    if len(set(labels)) != len(labels):
        raise ValueError(f"classes must be distinct, got {labels!r}")
    if abstain is not None and any(type(abstain) is type(c) and abstain == c for c in labels):
        raise ValueError(f"abstain value {abstain!r} is also a class")
    return labels


def _lookup(labels: list, abstain: Any) -> pd.Index:
    """Hash index: positions < len(labels) are classes, later ones the abstain value and its text form
    (``np.where(fired, "spam", -1)`` turns -1 into "-1"; a CSV cell holds text)."""
    extra = [] if abstain is None else [abstain] + ([str(abstain)] if not isinstance(abstain, str) else [])
    return pd.Index(labels + [v for v in extra if v not in labels], dtype=object)


def _codes(raw: np.ndarray, labels: list, abstain: Any, missing_is_abstain: bool) -> tuple[np.ndarray, np.ndarray]:
    """(class index per value, -1 = abstain; bad mask): bad = neither a class nor abstain.

    Vectorised by a hash lookup (integral floats match their int; missing, i.e. None/NaN/"", may mean
    abstain). Bools are never class values, though ``True == 1`` in Python."""
    raw = np.asarray(raw)
    if raw.dtype.kind == "b":
        return np.full(raw.shape, -1, dtype=np.int64), np.ones(raw.shape, dtype=bool)
    lookup = _lookup(labels, abstain)
    try:
        pos = lookup.get_indexer(raw)
    except TypeError:  # unhashable values (lists, dicts): none of them is a class
        pos = np.full(raw.shape, -1, dtype=np.int64)
    bad = pos < 0
    if missing_is_abstain and bad.any():
        missing = pd.isna(raw)
        if raw.dtype.kind in "OUS":
            missing |= raw == ""
        bad &= ~missing
    if raw.dtype.kind == "O" and any(not isinstance(v, str) and v in (0, 1) for v in lookup):
        is_bool = np.frompyfunc(lambda v: isinstance(v, (bool, np.bool_)), 1, 1)(raw).astype(bool)
        bad |= is_bool
    codes = np.where((pos >= 0) & (pos < len(labels)) & ~bad, pos, -1).astype(np.int64)
    return codes, bad


def _values(codes: np.ndarray, labels: list, abstain: Any) -> np.ndarray:
    """Class indices back to class values (int64 when classes and abstain are ints, else object)."""
    if all(isinstance(v, int) for v in [*labels, abstain]):
        return np.where(codes >= 0, np.asarray(labels, dtype=np.int64)[np.maximum(codes, 0)], abstain).astype(np.int64)
    out = np.full(codes.shape, abstain, dtype=object)
    cast = codes >= 0
    out[cast] = np.asarray(labels, dtype=object)[codes[cast]]
    return out


def _expected(labels: list, abstain: Any) -> str:
    return f"expected one of {sorted(labels)!r} or abstain {abstain!r}"


def _shown(values: np.ndarray) -> str:
    distinct: dict[str, None] = {}
    for value in values.tolist():
        distinct.setdefault(repr(value), None)
        if len(distinct) == MAX_SHOWN:
            break
    return ", ".join(distinct)


def _column_names(refs: Sequence[str]) -> list[str]:
    """``lf:<function>``, or ``lf:<full ref>`` where two refs share a function name."""
    if len(set(refs)) != len(refs):
        raise LabelingFunctionError(f"a labelling function is listed twice in {list(refs)!r}")
    short = [ref.rpartition(":")[2] for ref in refs]
    return [f"lf:{name}" if short.count(name) == 1 else f"lf:{ref}" for name, ref in zip(short, refs)]


def apply_labeling_functions(
    frame: pd.DataFrame, refs: list[str], classes: list, abstain: Any, batch_size: int = 100_000
) -> pd.DataFrame:
    """Run each LF over ``frame`` in slices of ``batch_size`` rows; one column of class values per LF
    (int64 when the classes and abstain are ints, else object)."""
    sources = [(name, f"labelling function {ref}", load_labeling_function(ref))
               for name, ref in zip(_column_names(refs), refs)]
    return _run_sources(frame, sources, classes, abstain, batch_size)


def apply_sources(
    frame: pd.DataFrame, spec: FilesData, rules: Sequence[RuleConfig | Callable], labeling_functions: list[str],
    classes: list, abstain: Any, batch_size: int = 100_000,
) -> pd.DataFrame:
    """Every rule (column ``rule:<name>``) and labelling function (``lf:<name>``) over ``frame``'s rows, one
    column of class values each (abstain where a source does not fire).

    Sources see a row's input columns (``spec.input_columns``: numbers, text, pictures) and tag columns
    (``spec.tag_columns``), never its label or weak columns, so no function can peek at gold. Rules read a picture
    column's cells as the file spells them (a rule's votes do not depend on where the folder lies); labelling
    functions get each picture's absolute path, so they can open it whatever the working directory. Rules are
    checked against the data before anything runs."""
    sources = source_functions(frame.columns, spec, rules, labeling_functions, classes, abstain)
    seen = frame[source_columns(spec)]
    if not spec.image_columns:
        return _run_sources(seen, sources, classes, abstain, batch_size)
    own = [s for s in sources if s[0].startswith("rule:")]
    lfs = [s for s in sources if not s[0].startswith("rule:")]
    return pd.concat([_run_sources(seen, own, classes, abstain, batch_size),
                      _run_sources(absolute_paths(seen, spec), lfs, classes, abstain, batch_size)], axis=1)


def source_columns(spec: FilesData) -> list[str]:
    """What rules and labelling functions read: the input columns, then the tag columns (each once)."""
    return list(dict.fromkeys([*spec.input_columns, *spec.tag_columns]))


def absolute_paths(frame: pd.DataFrame, spec: FilesData) -> pd.DataFrame:
    """A copy of ``frame`` whose picture columns hold absolute paths (relative ones start from
    ``data.image_root``, else the working directory); empty cells stay empty."""
    from weakflow.tasks.core.images import resolve

    out = frame.copy()
    for column in spec.image_columns:
        if column in out.columns:
            out[column] = [str(resolve(cell, spec.image_root).absolute()) if isinstance(cell, (str, Path)) and
                           str(cell) else cell for cell in out[column].tolist()]
    return out


def source_functions(
    columns: Sequence[str], spec: FilesData, rules: Sequence[RuleConfig | Callable], labeling_functions: list[str],
    classes: list, abstain: Any,
) -> list[tuple[str, str, Callable]]:
    """(vote column, who, function) per rule and labelling function, checked against the data's ``columns``
    and the class set: a rule reading a missing or non-input column, or voting a non-class, fails here."""

    labels = check_label_set(classes, abstain)
    inputs = spec.input_columns
    present = pd.Index(columns)
    lacking = [c for c in inputs if c not in present]
    if lacking:
        raise LabelingFunctionError(f"the data lacks input column(s) {lacking} (data.feature_columns + "
                                    f"data.text_columns{' + data.image_columns' if spec.image_columns else ''}); "
                                    f"labelling functions read {inputs}")
    _check_tag_columns(spec, present)
    built = [rule if isinstance(rule, Rule) else from_config(rule, abstain) for rule in rules]
    names = [rule.__name__ for rule in built]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise LabelingFunctionError(f"rule name(s) {twice} used more than once; every rule needs its own name")
    for rule in built:
        _check_rule(rule, spec, present, labels)
    sources = [(f"rule:{rule.__name__}", f"rule {rule.__name__!r}", rule) for rule in built]
    if labeling_functions:
        sources += [(name, f"labelling function {ref}", load_labeling_function(ref))
                    for name, ref in zip(_column_names(labeling_functions), labeling_functions)]
    return sources


def _check_tag_columns(spec: FilesData, present: pd.Index) -> None:
    """Tag columns are in the data and are no label: a rule reading the label or a weak column would peek."""
    labels = [spec.label_column, *spec.weak_label_columns]
    peeking = [c for c in spec.tag_columns if c in labels]
    if peeking:
        raise LabelingFunctionError(f"data.tag_columns lists {peeking}, the label or a weak label column; rules and "
                                    "labelling functions never see labels: list tag and metadata columns only")
    lacking = [c for c in spec.tag_columns if c not in present]
    if lacking:
        raise LabelingFunctionError(f"the data lacks tag column(s) {lacking} (data.tag_columns); its columns: "
                                    f"{list(present)[:20]}")


def _check_rule(rule: Any, spec: FilesData, present: pd.Index, labels: list) -> None:
    """A rule reads one input or tag column and votes one class: say which rule breaks that, before running."""
    inputs = spec.input_columns
    if rule.column not in inputs and rule.column not in spec.tag_columns:
        sees = " + ".join(["data.feature_columns", "data.text_columns",
                           *(["data.image_columns"] if spec.image_columns else []),
                           *(["data.tag_columns"] if spec.tag_columns else [])])
        where = (f"is not an input column: a rule sees only {sees}, never "
                 "labels" if rule.column in present else "is not in the data")
        shown = f"input columns: {inputs}" + (f", tag columns: {spec.tag_columns}" if spec.tag_columns else "")
        raise LabelingFunctionError(f"rule {rule.__name__!r} reads column {rule.column!r}, which {where} "
                                    f"({shown})")
    if not any(type(rule.label) is type(c) and rule.label == c for c in labels):
        raise LabelingFunctionError(f"rule {rule.__name__!r} votes {rule.label!r}, which is not a class "
                                    f"(classes: {labels!r})")


def _run_sources(
    frame: pd.DataFrame, sources: list[tuple[str, str, Callable]], classes: list, abstain: Any, batch_size: int
) -> pd.DataFrame:
    """Call every (column name, who, function) per batch, check its output strictly, collect class values."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    labels = check_label_set(classes, abstain)
    names = [name for name, _, _ in sources]
    if len(set(names)) != len(names):
        raise LabelingFunctionError(f"a labelling function is listed twice in {names!r}")
    parts: dict[str, list[np.ndarray]] = {name: [] for name in names}
    for start in range(0, len(frame), batch_size):
        batch = frame.iloc[start:start + batch_size]
        for name, who, fn in sources:
            try:
                result = fn(batch)
            except LabelingFunctionError:
                raise  # a rule's own message already names it and the column
            except USER_CODE_ERRORS as exc:  # sys.exit() in a function too: never a silent end of the run
                raise LabelingFunctionError(f"{who} {_raised(exc)}") from exc
            raw = np.asarray(result.to_numpy() if isinstance(result, (pd.Series, pd.Index)) else result)
            if raw.shape != (len(batch),):
                raise LabelingFunctionError(
                    f"{who} returned shape {raw.shape} for a batch of {len(batch)} rows; expected one value per row"
                )
            codes, bad = _codes(raw, labels, abstain, missing_is_abstain=False)
            if bad.any():
                raise LabelingFunctionError(f"{who} returned {int(bad.sum())} value(s) outside the label set: "
                                            f"{_shown(raw[bad])}; {_expected(labels, abstain)}")
            parts[name].append(_values(codes, labels, abstain))
    empty = _values(np.zeros(0, dtype=np.int64), labels, abstain)
    return pd.DataFrame({name: np.concatenate(p) if p else empty for name, p in parts.items()}, index=frame.index)


def votes_matrix(frame: pd.DataFrame, columns: list[str], classes: list, abstain: Any) -> np.ndarray:
    """Class-value vote columns to the (rows, sources) class-index matrix, -1 = abstain (as do NaN, None
    and an empty cell); a row's index is its class's position in ``classes``."""
    labels = check_label_set(classes, abstain)
    votes = np.full((len(frame), len(columns)), -1, dtype=np.int64)
    for j, column in enumerate(columns):
        if column not in frame.columns:
            raise ValueError(f"vote column {column!r} is not in the frame")
        raw = np.asarray(frame[column].to_numpy())
        votes[:, j], bad = _codes(raw, labels, abstain, missing_is_abstain=True)
        if bad.any():
            raise ValueError(f"vote column {column!r} holds {_shown(raw[bad])}, outside classes {sorted(labels)!r} "
                             f"and abstain {abstain!r} (an empty cell is abstain too)")
    return votes


def class_indices(values: Any, classes: list, what: str) -> np.ndarray:
    """Gold labels (class values; None/NaN/"" = no label) to class indices, -1 where unlabelled; a value
    outside the class set is an error naming ``what`` and the first rows (counted from 0) holding it."""
    labels = check_label_set(classes, None)
    raw = np.asarray(values.to_numpy() if isinstance(values, pd.Series) else values)
    codes, bad = _codes(raw, labels, None, missing_is_abstain=True)
    if bad.any():
        rows = np.flatnonzero(bad)
        raise DataError(f"{what} holds {_shown(raw[bad])} in row(s) {rows[:MAX_SHOWN].tolist()} "
                        f"(rows count from 0), outside the classes {labels!r}")
    return codes
