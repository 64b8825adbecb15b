"""Labelling functions: load them from "module:function" refs, run them batchwise, build vote matrices.

An LF takes a DataFrame batch of feature rows and returns one class *value* (or the abstain
value) per row. Its output is checked strictly here, because one stray NaN or string would
otherwise surface much later as a confusing error inside aggregation or training.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pandas as pd

from tasks.data import DataError

MAX_SHOWN = 5  # distinct offending values quoted in an error message


class LabelingFunctionError(DataError):
    """A labelling function could not be loaded, raised, or returned something unusable.

    A DataError, so the run stops before training and registers nothing, like bad data does."""


def load_labeling_function(ref: str) -> Callable[[pd.DataFrame], Any]:
    """Import the callable named by ``ref`` ("package.module:function"; the function part may be dotted)."""
    if not isinstance(ref, str) or ref.count(":") != 1:
        raise LabelingFunctionError(f"labelling function ref {ref!r} must look like 'module.path:function'")
    module_name, attr_path = ref.split(":")
    if not module_name or not attr_path:
        raise LabelingFunctionError(f"labelling function ref {ref!r} must look like 'module.path:function'")
    try:
        target: Any = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        raise LabelingFunctionError(f"labelling function {ref}: module not found ({exc})") from exc
    except Exception as exc:  # noqa: BLE001 - any import-time failure of user code
        raise LabelingFunctionError(
            f"labelling function {ref}: importing {module_name} raised {type(exc).__name__}: {exc}"
        ) from exc
    for part in attr_path.split("."):
        if not hasattr(target, part):
            raise LabelingFunctionError(f"labelling function {ref}: {module_name} has no attribute {attr_path!r}")
        target = getattr(target, part)
    if not callable(target):
        raise LabelingFunctionError(
            f"labelling function {ref}: {attr_path} is not callable (it is a {type(target).__name__})"
        )
    return target


def _check_label_set(classes: Sequence[int], abstain: int) -> np.ndarray:
    labels = np.asarray(list(classes))
    if labels.size == 0 or labels.dtype.kind not in "iu":
        raise ValueError(f"classes must be a non-empty list of ints, got {list(classes)!r}")
    if len(np.unique(labels)) != len(labels):
        raise ValueError(f"classes must be distinct, got {list(classes)!r}")
    if abstain in set(labels.tolist()):
        raise ValueError(f"abstain value {abstain} is also a class")
    return labels.astype(np.int64)


def _is_missing(value: Any) -> bool:
    return value is None or value is pd.NA or (isinstance(value, (float, np.floating)) and bool(np.isnan(value)))


def _to_values(
    raw: np.ndarray, allowed: np.ndarray, abstain: int, missing_is_abstain: bool
) -> tuple[np.ndarray, np.ndarray]:
    """(int64 values, bad mask) for ``raw``; bad = not an integer in ``allowed`` (missing may mean abstain)."""
    out = np.full(raw.shape, abstain, dtype=np.int64)
    if raw.dtype.kind in "iu":
        bad = ~np.isin(raw, allowed)
        out[~bad] = raw[~bad]
        return out, bad
    if raw.dtype.kind == "f":
        missing = np.isnan(raw)
        bad = ~np.isin(raw, allowed.astype(np.float64))  # NaN, inf and non-integers are never in the set
        if missing_is_abstain:
            bad &= ~missing
        good = ~bad & ~missing
        out[good] = raw[good].astype(np.int64)
        return out, bad
    # Object, bool, strings, ...: judge element by element (bools are not class values).
    allowed_set = set(allowed.tolist())
    bad = np.zeros(raw.shape, dtype=bool)
    for i, value in enumerate(raw.tolist()):
        if missing_is_abstain and _is_missing(value):
            continue
        integral = isinstance(value, (int, float)) and not isinstance(value, bool) and float(value).is_integer()
        if integral and int(value) in allowed_set:
            out[i] = int(value)
        else:
            bad[i] = True
    return out, bad


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
    frame: pd.DataFrame, refs: list[str], classes: list[int], abstain: int, batch_size: int = 100_000
) -> pd.DataFrame:
    """Run each LF over ``frame`` in slices of ``batch_size`` rows; one int64 column of class values per LF."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    allowed = np.append(_check_label_set(classes, abstain), abstain)
    expected = f"expected one of {sorted(int(c) for c in classes)} or abstain {abstain}"
    columns: dict[str, np.ndarray] = {}
    for name, ref in zip(_column_names(refs), refs):
        fn = load_labeling_function(ref)
        parts: list[np.ndarray] = []
        for start in range(0, len(frame), batch_size):
            batch = frame.iloc[start:start + batch_size]
            try:
                result = fn(batch)
            except Exception as exc:
                raise LabelingFunctionError(
                    f"labelling function {ref} raised {type(exc).__name__}: {exc}"
                ) from exc
            raw = np.asarray(result.to_numpy() if isinstance(result, (pd.Series, pd.Index)) else result)
            if raw.shape != (len(batch),):
                raise LabelingFunctionError(
                    f"labelling function {ref} returned shape {raw.shape} for a batch of {len(batch)} rows; "
                    f"expected one value per row"
                )
            values, bad = _to_values(raw, allowed, abstain, missing_is_abstain=False)
            if bad.any():
                raise LabelingFunctionError(
                    f"labelling function {ref} returned {int(bad.sum())} value(s) outside the label set: "
                    f"{_shown(raw[bad])}; {expected}"
                )
            parts.append(values)
        columns[name] = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
    return pd.DataFrame(columns, index=frame.index, dtype=np.int64)


def votes_matrix(frame: pd.DataFrame, columns: list[str], classes: list[int], abstain: int) -> np.ndarray:
    """Class-value vote columns (NaN/None = abstain) to the (rows, sources) class-index matrix, -1 = abstain."""
    labels = _check_label_set(classes, abstain)
    allowed = np.append(labels, abstain)
    order = np.argsort(labels)
    votes = np.full((len(frame), len(columns)), -1, dtype=np.int64)
    for j, column in enumerate(columns):
        if column not in frame.columns:
            raise ValueError(f"vote column {column!r} is not in the frame")
        raw = np.asarray(frame[column].to_numpy())
        values, bad = _to_values(raw, allowed, abstain, missing_is_abstain=True)
        if bad.any():
            raise ValueError(
                f"vote column {column!r} holds {_shown(raw[bad])}, outside classes "
                f"{sorted(int(c) for c in classes)} and abstain {abstain}"
            )
        cast = values != abstain
        votes[cast, j] = order[np.searchsorted(labels[order], values[cast])]
    return votes
