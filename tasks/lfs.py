"""``weakflow lfs``: every weak source (weak columns, rules, labelling functions) applied to the training file
and measured against its gold rows, in seconds: nothing is validated beyond what it reads, nothing trained.

Only the columns the sources and the measurement need are read (inputs, tag columns, label, weak columns), optionally
just the first rows; the test file is read only for the class set when ``data.classes`` is not given.
Big files can be applied in shards, each in a process started with spawn (never fork: see flows/runtime.py, quiet_telemetry).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from weakflow.tasks.lib.config import Config, FilesData, RuleConfig
from weakflow.tasks.lib.data import DataError

EXPERIMENT = "weakflow-lfs"


@dataclass
class LfsResult:
    path: Path
    rows: int  # rows applied to (counted from 0 in the file, the header not counted)
    gold_rows: int
    classes: list
    abstain: Any
    table: pd.DataFrame  # one row per source (tasks/lib/lf_report.py)
    examples: pd.DataFrame
    seconds: float  # applying the sources
    shards: int
    rules: list[RuleConfig] = field(default_factory=list)
    labeling_functions: list[str] = field(default_factory=list)


def run_lfs(cfg: Config, rows: int | None = None, shards: int = 1, examples: int = 3) -> LfsResult:
    """Read, apply every source, measure: the table and examples ``weakflow lfs`` prints and logs."""
    from weakflow.tasks.lib.data import class_values, resolve_data_spec, weak_votes
    from weakflow.tasks.lib.labeling import check_label_set, class_indices, source_functions, votes_matrix
    from weakflow.tasks.lib.lf_report import example_rows, source_table
    from weakflow.tasks.lib.rules import configured_rules

    spec = resolve_data_spec(cfg)
    rules, refs = configured_rules(cfg), list(cfg.weak_labels.labeling_functions)
    needed = {**{c: "data.feature_columns" for c in spec.feature_columns},
              **{c: "data.text_columns" for c in spec.text_columns},
              **{c: "data.image_columns" for c in spec.image_columns},
              **{c: "data.tag_columns" for c in spec.tag_columns if c not in spec.input_columns},
              spec.label_column: "data.label_column", **{c: "data.weak_label_columns" for c in spec.weak_label_columns}}
    train = read_columns(spec.train_path, "data.train_path", needed, rows,
                         text=[*spec.text_columns, *spec.image_columns, *spec.tag_columns])
    classes = class_list(spec)
    abstain = spec.abstain
    try:
        check_label_set(classes, abstain)
    except ValueError as exc:
        raise DataError(f"data.classes {classes!r} / data.abstain {abstain!r}: {exc}") from exc
    source_functions(train.columns, spec, rules, refs, classes, abstain)  # a bad rule fails before any work
    gold = class_indices(class_values(train[spec.label_column]),
                         classes, f"data.label_column {spec.label_column!r} of {Path(spec.train_path).absolute()}")
    start = time.perf_counter()
    values = apply_sharded(train, spec, rules, refs, classes, abstain, shards)
    seconds = time.perf_counter() - start
    if spec.weak_label_columns:
        values = pd.concat([weak_votes(train, spec, classes), values], axis=1)
    names = list(values.columns)
    try:  # a weak column's cells are data: one outside the classes is bad input, not a bug
        votes = votes_matrix(values, names, classes, abstain)
    except ValueError as exc:
        raise DataError(f"data.weak_label_columns: {exc}") from exc
    own = {f"rule:{r.name}": r.column for r in rules}
    return LfsResult(path=Path(spec.train_path).absolute(), rows=len(train), gold_rows=int((gold >= 0).sum()),
                     classes=classes, abstain=abstain, table=source_table(votes, names, gold, classes),
                     examples=example_rows(train, spec, votes, names, gold, classes, examples, cfg.seed, own),
                     seconds=seconds, shards=max(1, min(shards, len(train))), rules=rules,
                     labeling_functions=refs)


def class_list(spec: FilesData) -> list:
    """``data.classes``, else the test file's labels (read alone), as tasks.lib.data.class_set makes them: integers
    or names, sorted (a column mixing both is read as names)."""
    from weakflow.tasks.lib.data import classes_of

    if spec.classes is not None:
        return sorted(spec.classes)
    test = read_columns(spec.test_path, "data.test_path", {spec.label_column: "data.label_column"}, None)
    classes = classes_of(test[spec.label_column])
    if not classes:
        raise DataError(f"no class set: data.classes is not given and column {spec.label_column!r} of "
                        f"{Path(spec.test_path).absolute()} holds no label")
    return classes


def read_columns(path: Path, field: str, needed: dict[str, str], rows: int | None,
                 text: list[str] | None = None) -> pd.DataFrame:
    """The ``needed`` columns (name -> the config key naming it) of a CSV or Parquet file, the first ``rows``
    only when given; text columns read as text. Any problem is one DataError naming the file."""
    from weakflow.tasks.lib.data import check_unique_columns, existing_table, header_names

    path, suffix = existing_table(path, field)
    header = header_names(path, suffix, field)
    check_unique_columns(header, path, field)
    missing = [c for c in needed if c not in header]
    if missing:
        named = "; ".join(f"{c!r} (named by {needed[c]})" for c in missing)
        raise DataError(f"{field}: {path} has no column {named}; its columns: {header[:20]}"
                        f"{' ...' if len(header) > 20 else ''}")
    columns = list(needed)
    try:
        if suffix == ".csv":
            return pd.read_csv(path, usecols=columns, nrows=rows, dtype={c: str for c in text or []})[columns]
        return _read_parquet(path, columns, rows)
    except Exception as exc:  # the CSV parser and pyarrow raise many types; all mean "unreadable"
        raise DataError(f"{field}: cannot read {path} as {suffix.lstrip('.')}: {type(exc).__name__}: "
                        f"{str(exc).splitlines()[0] if str(exc) else ''}") from exc


def _read_parquet(path: Path, columns: list[str], rows: int | None) -> pd.DataFrame:
    """The first ``rows`` rows (all when None), reading row groups only until there are enough."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if rows is None:
        return pd.read_parquet(path, columns=columns)
    batches, have = [], 0
    for batch in pq.ParquetFile(path, pre_buffer=False).iter_batches(columns=columns, batch_size=min(rows, 65_536)):
        batches.append(batch)
        have += batch.num_rows
        if have >= rows:
            break
    schema = pq.read_schema(path)
    table = pa.Table.from_batches(batches, schema=pa.schema([schema.field(c) for c in columns]))
    return table.slice(0, rows).to_pandas()


def apply_sharded(frame: pd.DataFrame, spec: FilesData, rules: list, refs: list[str], classes: list, abstain: Any,
                  shards: int) -> pd.DataFrame:
    """:func:`tasks.lib.labeling.apply_sources` on ``shards`` contiguous row ranges, each in its own spawned
    process (the rows travel pickled, input and tag columns only); the same frame as one process gives."""
    from weakflow.tasks.lib.labeling import apply_sources, source_columns

    inputs = frame[source_columns(spec)]
    bounds = np.linspace(0, len(frame), max(shards, 1) + 1).astype(int)
    chunks = [inputs.iloc[a:b] for a, b in pairwise(bounds) if b > a]
    if len(chunks) <= 1:
        return apply_sources(frame, spec, rules, refs, classes, abstain)
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(max_workers=len(chunks), mp_context=multiprocessing.get_context("spawn")) as pool:
        n = len(chunks)
        parts = list(pool.map(apply_sources, chunks, [spec] * n, [rules] * n, [refs] * n, [classes] * n, [abstain] * n))
    return pd.concat(parts)


def log_run(cfg: Config, result: LfsResult, options: dict[str, Any]) -> tuple[str, str]:
    """One MLflow run in experiment ``weakflow-lfs`` (the configured store): the table, the examples, the
    rules and options; returns (run id, tracking URI)."""
    import mlflow

    from weakflow.tasks.lib import tracking

    experiment_id = tracking.configure(cfg.tracking.model_copy(update={"experiment": EXPERIMENT}))
    with mlflow.start_run(experiment_id=experiment_id, run_name="lfs", tags={"weakflow.command": "lfs"}) as run:
        mlflow.log_params({"data.train_path": str(result.path), "rows": result.rows, "gold_rows": result.gold_rows,
                           "classes": ", ".join(map(str, result.classes)), "abstain": repr(result.abstain),
                           "sources": len(result.table), **{f"option.{k}": v for k, v in options.items()}})
        mlflow.log_metrics({"rows": result.rows, "gold_rows": result.gold_rows, "apply_seconds": result.seconds})
        for row in result.table.to_dict("records"):
            name = "".join(c if c.isalnum() or c in "_-." else "_" for c in row["source"])
            mlflow.log_metric(f"{name}.coverage", row["coverage"])
            if row["gold_rows"]:
                mlflow.log_metric(f"{name}.accuracy", row["accuracy"])
        mlflow.log_table(result.table, "lfs/sources.json")
        mlflow.log_table(result.examples, "lfs/examples.json")
        tracking.log_json({"rules": [r.model_dump(mode="json") for r in result.rules],
                           "labeling_functions": result.labeling_functions}, "lfs/sources_config.json")
    return run.info.run_id, cfg.tracking.resolved_uri
