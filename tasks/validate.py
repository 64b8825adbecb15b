"""Stage validate: read the data, run the Great Expectations suite, stop the run on failure."""

from __future__ import annotations

import tempfile
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path

import mlflow

from weakflow.data_checks.suite import DataValidationError, Validated, ValidationReport, run_suite
from weakflow.tasks.lib import tracking
from weakflow.tasks.lib.config import AugmentConfig, Config, FilesData, LoaderConfig, ValidationConfig
from weakflow.tasks.lib.steps import RunContext, Stage
from weakflow.data_checks.labels import check_class_set, check_label_spelling
from weakflow.tasks.lib.data import (DataError, DataSource, PipelineData, assemble, class_set, data_files,
                                     read_label_columns, read_raw, resolve_data_spec)
from weakflow.tasks.lib.pool import pool_rows, scan_pool


@dataclass(frozen=True)
class InputChecks:
    """What the data checks need from sections other than ``data`` and ``validation``, said explicitly."""

    voting: bool  # a weak label column, rule or labelling function votes (the class set must admit it)
    chunk_rows: int  # pseudo_label.chunk_rows: an unlabeled pool is scanned in batches of this many rows
    folds: int  # selection.folds: the gold rows' folds are assigned when the data is assembled
    test_copies: bool  # governance.exact_duplicates == fail: test rows copied into training fail the suite
    repeated_rows: str  # governance.repeated_rows
    cache_dir: Path | None = None  # <tracking.workspace>/cache: decoded pictures
    augment: AugmentConfig = field(default_factory=AugmentConfig)  # how the pictures may be varied while training
    loader: LoaderConfig = field(default_factory=LoaderConfig)  # when a picture table streams while training

    @classmethod
    def of(cls, cfg: Config) -> InputChecks:
        voting = bool(cfg.weak_labels.rules or cfg.weak_labels.labeling_functions)
        return cls(voting, cfg.pseudo_label.chunk_rows, cfg.selection.folds, cfg.governance.exact_duplicates == "fail",
                   cfg.governance.repeated_rows, Path(cfg.tracking.workspace) / "cache", cfg.augment, cfg.loader)


def check_data(spec: FilesData, validation: ValidationConfig, checks: InputChecks,
               docs_dir: Path | None = None) -> tuple[PipelineData, ValidationReport]:
    """Read the files and run the suite: raises DataError (unreadable file) or DataValidationError (failed
    suite)."""
    if spec.unlabeled_path is not None:  # streamed: columns, types and finiteness, never all in memory
        scan_pool(spec.unlabeled_path, spec.feature_columns, checks.chunk_rows, spec.text_columns,
                  images=spec.image_columns, image_root=spec.image_root, max_pixels=spec.image_max_pixels)
    raw = read_raw(spec)
    classes = class_set(raw)
    voting = bool(spec.weak_label_columns) or checks.voting
    check_class_set(raw, classes, voting)  # one line each, before the suite: the class set, labels misspelt by case
    check_label_spelling(raw, classes)
    raw = read_label_columns(raw, classes)  # integer classes: a weak column of 0, 1 and "skip" holds integers
    report = run_suite(raw, classes, validation.min_gold_per_class, docs_dir, test_copies=checks.test_copies,
                       repeated_rows=checks.repeated_rows)
    if not report.success:
        raise DataValidationError(report)
    return assemble(raw, classes, checks.folds, cache_dir=checks.cache_dir, augment=checks.augment,
                    loader=checks.loader), report


def load_and_validate(cfg: Config, docs_dir: Path | None = None) -> tuple[PipelineData, ValidationReport]:
    """:func:`check_data` on a whole config (the ``validate`` command, benchmarks, tests)."""
    return check_data(resolve_data_spec(cfg), cfg.validation, InputChecks.of(cfg), docs_dir)


def compute(ctx: RunContext, source: DataSource, validation: ValidationConfig, checks: InputChecks) -> Validated:
    """The stage's computing half: the data as files (a demo is written to the workspace), read and checked."""
    docs = tempfile.TemporaryDirectory(prefix="weakflow-data-docs-")
    data, report = check_data(data_files(source, ctx.workspace), validation, checks, Path(docs.name) / "data_docs")
    return Validated(data, report, docs)


def record(result: Validated, ctx: RunContext, source: DataSource, validation: ValidationConfig,
           checks: InputChecks) -> Validated:
    """The report and Data Docs, the tables as MLflow datasets, the row counts; the pipeline run is named
    after the rows and tagged with the files' hashes."""
    data = result.data
    _log_report(result.report)
    for frame, path, name, context in ((data.train, data.spec.train_path, "train", "training"),
                                       (data.test, data.spec.test_path, "test", "testing")):
        log_dataset(frame, path, name, context, data.label)
    counts = data.provenance_counts()
    if data.schema.images is not None:  # the picture format chosen from the data, and why
        images = data.schema.images
        mlflow.log_params({"picture_size": images.fmt.size, "picture_channels": images.fmt.channels})
        mlflow.set_tag("picture_format", images.chosen)
        if images.stream is not None:  # whether training holds the table or streams it from the cache
            mlflow.set_tag("picture_loading", images.stream.describe(len(data.train), len(data.features)))
    mlflow.log_metrics({f"rows_{k}": v for k, v in counts.items()} | {"rows_test": len(data.test)})
    if data.spec.unlabeled_path is not None:
        mlflow.log_metric("rows_pool", pool_rows(data.spec.unlabeled_path))
    split_counts = data.train["split"].value_counts().to_dict()
    mlflow.log_metrics({f"rows_{k}": int(v) for k, v in split_counts.items()})
    tracking.log_json({"provenance": counts, "splits": split_counts, "classes": data.classes}, "data/provenance.json")
    if ctx.parent_run_id is not None:  # the row count and the files' hashes, once read
        tracking.name_pipeline_run(ctx.parent_run_id, ctx.model_name, ctx.started, data)
    if result.docs is not None:  # logged: the Data Docs folder is not needed any more
        result.docs.cleanup()
    return replace(result, docs=None, run_id=mlflow.active_run().info.run_id)


def record_error(error: Exception, ctx: RunContext, source: DataSource, validation: ValidationConfig,
                 checks: InputChecks) -> None:
    """A failed suite's report; an unreadable file's message (nothing to validate, but the reviewer sees why)."""
    if isinstance(error, DataValidationError):
        _log_report(error.report)
    elif isinstance(error, DataError):
        mlflow.set_tag("validation", "failed")
        mlflow.log_text(f"{error}\n", "validation/summary.txt")


STAGE = Stage("validate", compute, record, record_error)


def log_dataset(frame, path: Path, name: str, context: str, label: str) -> None:
    """Record the table as an MLflow dataset input (digest, schema, row count, source path)."""
    with warnings.catch_warnings():  # "source can be interpreted in multiple ways": both mean a local file
        warnings.filterwarnings("ignore", message=".*interpreted in multiple ways.*")
        warnings.filterwarnings("ignore", message=".*integer column.*")  # schema hint; labels are never missing here
        dataset = mlflow.data.from_pandas(frame, source=str(Path(path).resolve()), name=name, targets=label)
        mlflow.log_input(dataset, context=context)


def _log_report(report: ValidationReport) -> None:
    mlflow.log_metrics({"expectations_evaluated": report.evaluated, "expectations_failed": len(report.failures)})
    mlflow.set_tag("validation", "passed" if report.success else "failed")
    tracking.log_json(report.result, "validation/result.json")
    mlflow.log_text(report.summary() + "\n", "validation/summary.txt")
    if report.docs_dir is not None and report.docs_dir.exists():
        mlflow.log_artifacts(str(report.docs_dir), "validation/data_docs")
