"""The validation suite, run with Great Expectations on the raw train and test tables.

Four tables are checked: the training file, the test file, a per-class table of gold counts derived
from the training file, and a per-test-row table of exact feature-hash matches in training; with picture
columns, a table per split of every picture file opened and judged (data_checks/pictures.py). Each
expectation carries a plain-words ``expected`` text in its meta, so a failure reads as
``table.column: expected ..., found ...``. GX is imported inside :func:`run_suite` (it costs seconds).
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from weakflow.tasks.lib.data import DataError, PipelineData, RawTables, feature_hashes

NUMERIC_DTYPES = [
    *(f"float{b}" for b in (16, 32, 64)),
    *(f"int{b}" for b in (8, 16, 32, 64)),
    *(f"uint{b}" for b in (8, 16, 32, 64)),
    *(f"Int{b}" for b in (8, 16, 32, 64)),
    "Float32",
    "Float64",
]
FINITE_MAX = float(np.finfo(np.float64).max)


@dataclass(frozen=True)
class Failure:
    table: str
    column: str | None
    expected: str
    found: str

    def __str__(self) -> str:
        where = f"{self.table}.{self.column}" if self.column else self.table
        return f"{where}: expected {self.expected}; found {self.found}"


@dataclass
class ValidationReport:
    success: bool
    evaluated: int
    failures: list[Failure] = field(default_factory=list)
    result: dict[str, Any] = field(default_factory=dict)  # GX checkpoint result, JSON-ready
    docs_dir: Path | None = None
    notes: list[str] = field(default_factory=list)  # what passed but a reviewer should know

    def summary(self) -> str:
        if self.success:
            return f"all {self.evaluated} expectations passed" + "".join(f"; note: {n}" for n in self.notes)
        lines = [f"{len(self.failures)} of {self.evaluated} expectations failed:"]
        lines += [f"  - {f}" for f in self.failures]
        return "\n".join(lines)


@dataclass
class Validated:
    """The data, read, checked and assembled, with the suite's report (its Data Docs in a folder that goes
    when this result does)."""

    data: PipelineData
    report: ValidationReport
    docs: tempfile.TemporaryDirectory | None = field(default=None, repr=False)
    run_id: str | None = None  # the validate stage's MLflow run, once recorded

    def summary(self, data: PipelineData) -> str:
        """The run summary's line, with the rows of ``data`` as the stages after it left them."""
        line = "passed; rows " + ", ".join(f"{k} {v}" for k, v in data.provenance_counts().items())
        images = data.schema.images
        return line + (f"; {images.chosen}" if images is not None and images.chosen else "")


class DataValidationError(DataError):
    """The suite failed; ``report`` holds every failed expectation."""

    def __init__(self, report: ValidationReport) -> None:
        super().__init__("data validation failed: " + report.summary())
        self.report = report


@dataclass
class _Table:
    name: str
    frame: pd.DataFrame
    expectations: list[Any]
    describe: Callable[[Any], Failure] | None = None  # a failure in this table's own words (pictures)


def _exp(cls: Any, expected: str, **kwargs: Any) -> Any:
    return cls(meta={"expected": expected}, **kwargs)


def build_tables(raw: RawTables, classes: list[int], min_gold_per_class: int,
                 test_copies: bool = True, repeated_rows: str = "auto", notes: list[str] | None = None) -> list[_Table]:
    """Decide which expectations apply to which table (needs GX's expectation classes). ``test_copies``:
    a test row copied into training fails validation (governance.exact_duplicates = fail); otherwise
    the governance stage drops or reports those copies by its policy. ``repeated_rows = auto``: test rows
    equal to training rows no more often than training rows repeat among themselves are natural (discrete
    features), not copies; a note says so. Without a class set only the columns are checked, and one
    failure says where the classes should come from (a label check against an empty set would fail every
    row and blame the training file)."""
    import great_expectations.expectations as gxe

    spec = raw.spec
    train_cols = [*spec.input_columns, spec.label_column, *spec.weak_label_columns]
    test_cols = [*spec.input_columns, spec.label_column]
    tables = [
        _Table("train", raw.train, _column_checks(gxe, raw.train, train_cols, spec.feature_columns)
               + _text_checks(gxe, raw.train, spec.text_columns, spec.text_max_chars)),
        _Table("test", raw.test, _column_checks(gxe, raw.test, test_cols, spec.feature_columns)
               + _text_checks(gxe, raw.test, spec.text_columns, spec.text_max_chars)),
    ]
    train_e, test_e = tables[0].expectations, tables[1].expectations
    test_e.append(_exp(gxe.ExpectTableRowCountToBeBetween, "at least 1 row", min_value=1))
    if spec.image_columns:
        tables += _picture_tables(gxe, raw)
    if not classes:
        tables.append(_Table("class_set", pd.DataFrame({"classes": [0]}), [_exp(  # the count of classes found: 0
            gxe.ExpectColumnMinToBeBetween,
            f"at least one class: labels (integers or names) in the test file's {spec.label_column!r} column, "
            "or data.classes",
            column="classes", min_value=1)]))
        return tables
    class_text = f"a class in {classes}"
    if spec.label_column in raw.train.columns:
        train_e.append(_exp(gxe.ExpectColumnValuesToBeInSet, f"{class_text} or empty (no gold label)",
                            column=spec.label_column, value_set=classes))
    for col in spec.weak_label_columns:
        if col in raw.train.columns:
            train_e.append(_exp(gxe.ExpectColumnValuesToBeInSet, f"{class_text} or the abstain value {spec.abstain}",
                                column=col, value_set=[*classes, spec.abstain]))
    if spec.label_column in raw.test.columns:
        test_e.append(_exp(gxe.ExpectColumnValuesToNotBeNull, "a gold label on every test row", column=spec.label_column))
        test_e.append(_exp(gxe.ExpectColumnValuesToBeInSet, class_text, column=spec.label_column, value_set=classes))
    if spec.label_column in raw.train.columns:
        tables.append(_gold_counts(gxe, raw, classes, min_gold_per_class))
    if test_copies and all(c in raw.train.columns and c in raw.test.columns for c in spec.input_columns):
        overlap = _test_overlap(gxe, raw, repeated_rows)
        if overlap.expectations:
            tables.append(overlap)
        elif notes is not None:
            notes.append(overlap.name)
    return tables


def _column_checks(gxe: Any, frame: pd.DataFrame, columns: list[str], features: list[str]) -> list[Any]:
    checks = [_exp(gxe.ExpectColumnToExist, "the column to exist", column=c) for c in columns]
    for c in features:
        if c not in frame.columns:
            continue  # reported once by ExpectColumnToExist; value checks would only repeat it
        checks += [
            _exp(gxe.ExpectColumnValuesToBeInTypeList, "a numeric column", column=c, type_list=NUMERIC_DTYPES),
            _exp(gxe.ExpectColumnValuesToNotBeNull, "no missing (NaN) values", column=c),
        ]
        if pd.api.types.is_numeric_dtype(frame[c]):
            checks.append(_exp(gxe.ExpectColumnValuesToBeBetween, "finite values (no inf)", column=c,
                               min_value=-FINITE_MAX, max_value=FINITE_MAX))
    return checks


TEXT_DTYPES = ["object", "str", "string", "String", "large_string"]
MAX_EMPTY_SHARE = 0.05  # text columns: at most this share of rows may be empty or missing


def _text_checks(gxe: Any, frame: pd.DataFrame, columns: list[str], max_chars: int) -> list[Any]:
    """Text columns: text (not numbers), at most 5% empty or missing, no row longer than ``max_chars``."""
    checks: list[Any] = []
    for c in columns:
        if c not in frame.columns:
            continue  # reported by ExpectColumnToExist
        checks += [
            _exp(gxe.ExpectColumnValuesToBeInTypeList, "a text column", column=c, type_list=TEXT_DTYPES),
            _exp(gxe.ExpectColumnValuesToNotBeNull, f"text on at least {1 - MAX_EMPTY_SHARE:.0%} of the rows (no "
                                                    "missing value)", column=c, mostly=1 - MAX_EMPTY_SHARE),
        ]
        if frame[c].dtype == object or pd.api.types.is_string_dtype(frame[c]):
            checks += [
                _exp(gxe.ExpectColumnValueLengthsToBeBetween, f"at most {max_chars} characters (data.text_max_chars)",
                     column=c, max_value=max_chars),
                _exp(gxe.ExpectColumnValueLengthsToBeBetween, f"non-empty text on at least {1 - MAX_EMPTY_SHARE:.0%} "
                                                              "of the rows", column=c, min_value=1,
                     mostly=1 - MAX_EMPTY_SHARE),
            ]
    return checks


def _picture_tables(gxe: Any, raw: RawTables) -> list[_Table]:
    """Every picture file of the training and test tables opened and judged (data_checks/pictures.py), one
    table per split: a row per data row with the file and its problem (none when fine), and the expectation
    that no row has a problem, so Data Docs list the bad files and the failure line names split, column,
    row, file and reason."""
    from weakflow.data_checks.pictures import ACCEPTED_MODES, check_pictures

    spec = raw.spec
    tables = []
    for column in spec.image_columns:
        expected = (f"every picture file in column {column!r} to exist, be a regular file and decode completely, "
                    f"with 1x1 to {spec.image_max_pixels:,} pixels (data.image_max_pixels), as PNG, JPEG, WebP, BMP "
                    f"or TIFF in one of {len(ACCEPTED_MODES)} modes (grey, palette, RGB(A), CMYK, YCbCr, 16-bit, float)")
        for check in check_pictures({"train": raw.train, "test": raw.test}, column, spec.image_root,
                                    spec.image_max_pixels):
            checks = [_exp(gxe.ExpectColumnValuesToBeNull, expected, column="problem")]
            tables.append(_Table(f"{check.split}_pictures" + ("" if column == spec.image_columns[0] else f"_{column}"),
                                 check.table, checks,
                                 describe=lambda r, c=check, e=expected: Failure(c.split, c.column, e, c.found())))
    return tables


def _gold_counts(gxe: Any, raw: RawTables, classes: list, minimum: int) -> _Table:
    from weakflow.tasks.lib.data import class_values

    labels = class_values(raw.train[raw.spec.label_column]).dropna()
    if classes and isinstance(classes[0], str):
        labels = labels.astype(str)
    counts = dict(labels.value_counts().items())  # by label, never by position
    frame = pd.DataFrame({"class": classes, "gold_rows": [int(counts.get(c, 0)) for c in classes]}, index=classes)
    checks = [
        _exp(gxe.ExpectTableRowCountToBeBetween, "a non-empty class set", min_value=1),
        _exp(gxe.ExpectColumnValuesToBeBetween, f"at least {minimum} gold rows per class",
             column="gold_rows", min_value=minimum),
    ]
    return _Table("gold_per_class", frame, checks)


def _test_overlap(gxe: Any, raw: RawTables, repeated_rows: str = "auto") -> _Table:
    """The expectation that no test row equals a training row; none (and the note as the table's name) when
    ``repeated_rows = auto`` finds the repeats natural."""
    from weakflow.data_checks.contamination import repeats

    features, text = raw.spec.feature_columns, raw.spec.text_columns
    train_h = _with_pictures(feature_hashes(raw.train, features, text), raw.train, raw.spec)
    test_hashes = _with_pictures(feature_hashes(raw.test, features, text), raw.test, raw.spec)
    rates = repeats(test_hashes.to_numpy(), train_h.to_numpy())
    if repeated_rows == "auto" and rates.natural and not raw.spec.image_columns:  # a picture file is no discrete value
        return _Table(f"{rates.text()}: natural repeats of discrete features, not copies, so not counted as "
                      "contamination (governance.repeated_rows: contamination counts every one)", raw.test, [])
    frame = pd.DataFrame({"training_copies": test_hashes.map(train_h.value_counts()).fillna(0).astype(int).to_numpy()})
    inputs = "features and picture file" if raw.spec.image_columns else "features"
    expected = f"no test row whose {inputs} equal a training row's" + (
        f" ({rates.text()}: more than training rows repeat among themselves, so copies)" if rates.train_share else "")
    check = _exp(gxe.ExpectColumnValuesToBeBetween, expected, column="training_copies", max_value=0)
    return _Table("test_rows_in_training", frame, [check])


def _with_pictures(hashes: pd.Series, frame: pd.DataFrame, spec: Any) -> pd.Series:
    """Row hashes with each picture file's content hashed in (two names of one file's bytes are one
    picture); unchanged without picture columns."""
    if not spec.image_columns:
        return hashes
    from weakflow.tasks.core.images import resolve
    from weakflow.tasks.lib.data import picture_digests

    parts = {"features": hashes.to_numpy()}
    for column in spec.image_columns:
        parts[column] = picture_digests([resolve(v, spec.image_root) for v in frame[column].tolist()])
    return pd.Series(pd.util.hash_pandas_object(pd.DataFrame(parts), index=False).to_numpy(), index=hashes.index)


def run_suite(raw: RawTables, classes: list[int], min_gold_per_class: int, docs_dir: Path | None = None,
              test_copies: bool = True, repeated_rows: str = "auto") -> ValidationReport:
    """Run every check in one GX checkpoint; render Data Docs into ``docs_dir`` when given."""
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    actions = []
    if docs_dir is not None:
        context.add_data_docs_site(
            site_name="weakflow",
            site_config={
                "class_name": "SiteBuilder",
                "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": str(docs_dir)},
                "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
            },
        )
        actions.append(gx.checkpoint.UpdateDataDocsAction(name="data_docs", site_names=["weakflow"]))
    source = context.data_sources.add_pandas("weakflow")
    failures: list[Failure] = []
    evaluated = 0
    results: dict[str, Any] = {}
    notes: list[str] = []
    for table in build_tables(raw, classes, min_gold_per_class, test_copies, repeated_rows, notes):
        # One checkpoint per table: GX takes the dataframe as a batch parameter of the whole run.
        batch = source.add_dataframe_asset(table.name).add_batch_definition_whole_dataframe("all")
        suite = context.suites.add(gx.ExpectationSuite(name=table.name, expectations=table.expectations))
        definition = context.validation_definitions.add(gx.ValidationDefinition(name=table.name, data=batch, suite=suite))
        checkpoint = context.checkpoints.add(
            gx.Checkpoint(name=table.name, validation_definitions=[definition], actions=actions, result_format="SUMMARY")
        )
        (result,) = checkpoint.run(batch_parameters={"dataframe": table.frame}).run_results.values()
        results[table.name] = result.to_json_dict()
        for r in result.results:
            evaluated += 1
            if not r.success:
                failures.append(_describe(table, r))
    return ValidationReport(success=not failures, evaluated=evaluated, failures=failures, result=results,
                            docs_dir=docs_dir, notes=notes)


SHOWN_CHARS = 60  # of a bad text value in a failure message


def _describe(table: _Table, r: Any) -> Failure:
    if table.describe is not None and not (r.exception_info and r.exception_info.get("raised_exception")):
        return table.describe(r)
    cfg = r.expectation_config
    column = cfg.kwargs.get("column")
    expected = (cfg.meta or {}).get("expected", cfg.type)
    res = r.result or {}
    if r.exception_info and r.exception_info.get("raised_exception"):
        found = f"an error while checking: {r.exception_info.get('exception_message')}"
    elif cfg.type == "expect_column_to_exist":
        found = "no such column"
    elif cfg.type == "expect_column_values_to_be_in_type_list":
        found = f"dtype {table.frame[column].dtype}"
    elif "unexpected_count" in res:
        sample = [_plain(v) for v in res.get("partial_unexpected_list", [])[:5]]
        where = [_plain(i) for i in res.get("partial_unexpected_index_list", [])[:5]]
        label = {"gold_per_class": "class", "test_rows_in_training": "test row"}.get(table.name, "row")
        found = f"{res['unexpected_count']} bad value(s), e.g. {sample}"
        if where:
            found += f" at {label} {where}" + (" (data rows of the file, counted from 0)" if label != "class" else "")
    elif "observed_value" in res:
        found = f"{_plain(res['observed_value'])}"
    else:
        found = json.dumps(res, default=str)[:200]
    return Failure(table=table.name, column=column, expected=expected, found=found)


def _plain(value: Any) -> Any:
    if isinstance(value, dict) and len(value) == 1:
        return _plain(next(iter(value.values())))
    if isinstance(value, (np.generic,)):
        return value.item()
    if isinstance(value, str) and len(value) > SHOWN_CHARS:  # a long text: its start and its length, not all of it
        return f"{value[:SHOWN_CHARS]}... ({len(value)} chars)"
    return value

