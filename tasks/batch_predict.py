"""Batch scoring (``weakflow predict``): a Parquet or CSV file of any size through a registered model, in
chunks, with bounded memory.

The input's columns are checked against the model's inputs before any row is scored; each chunk's values
are checked as it is read (a NaN or a non-number in a numeric column, a missing text), naming the column and
the file's row. The output (row id, class, confidence, one probability per class) is written to a temporary
file beside ``output`` and renamed only when every row is scored, so a failed job leaves no half file and
never replaces an earlier output. The job is one MLflow run (experiment ``<tracking.experiment>-predict``):
the input's SHA-256, its rows, the model version, the duration and rows per second.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from weakflow.tasks.lib import tracking
from weakflow.tasks.lib.config import Config
from weakflow.tasks.lib.data import ROW_ID, DataError

CHUNK_ROWS = 100_000


@dataclass(frozen=True)
class ScoringModel:
    """A registered version, ready to score: its raw inputs (numbers, text), classes and python model."""

    name: str
    version: str
    numeric: list[str]
    text: list[str]
    classes: list
    python_model: object  # deploy.model.WeakflowClassifier (of the version's own code)

    @property
    def inputs(self) -> list[str]:
        return [*self.numeric, *self.text]

    def predict(self, frame: pd.DataFrame) -> pd.DataFrame:
        """``prediction``, ``confidence`` and ``prob_<class>`` per row of ``frame`` (raw input columns)."""
        missing = [c for c in self.inputs if c not in frame.columns]
        if missing:
            raise DataError(f"predict: the frame lacks input column(s) {missing}; {self.name} version {self.version} "
                            f"takes {self.inputs}")
        return self.python_model.predict(None, frame[self.inputs])  # type: ignore[attr-defined]


@dataclass(frozen=True)
class PredictJob:
    """What one scoring job did (also logged as its MLflow run)."""

    input: Path
    output: Path
    rows: int
    model_name: str
    model_version: str
    seconds: float
    input_sha256: str
    run_id: str

    @property
    def rows_per_second(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else float("nan")


def resolve_scoring_model(name: str, version: str | None, alias: str, uri: str) -> ScoringModel:
    """The version given, else the one ``alias`` names, loaded for scoring from the registry at ``uri`` (the
    current tracking URI). No such model, alias or version: one line (RegistryError)."""
    from weakflow.deploy.registry import alias_version, model_version

    if version is None:
        version = alias_version(None, name, alias, uri)  # a missing SQLite store is reported, not created
    model_version(mlflow.MlflowClient(uri), name, version)
    return load_scoring_model(name, version)


def load_scoring_model(name: str, version: str) -> ScoringModel:
    """The version's pyfunc, unwrapped; versions saved before text inputs take numbers only."""
    from weakflow.deploy.model_code import load_pyfunc

    inner = load_pyfunc(f"models:/{name}/{version}").unwrap_python_model()
    schema = getattr(getattr(inner, "loaded", None), "schema", None)
    numeric = list(schema.numeric) if schema is not None else list(inner.features)
    text = list(schema.text) if schema is not None else []
    return ScoringModel(name, str(version), numeric, text, list(inner.classes), inner)


def _kind(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix in (".parquet", ".pq"):
        return "parquet"
    if suffix == ".csv":
        return "csv"
    raise DataError(f"predict: {path} must be a .parquet or .csv file (found {suffix or 'no suffix'!r})")


def check_columns(path: Path, model: ScoringModel) -> bool:
    """Fail on a column the model needs and the file lacks, or a Parquet column of the wrong type, before
    anything is scored. Returns whether the file carries its own ``row_id``."""
    if not path.is_file():
        raise DataError(f"predict: input file {path} does not exist")
    if _kind(path) == "parquet":
        schema = pq.read_schema(path)
        names = schema.names
        for column in model.numeric:
            if column in names and not (pa.types.is_integer(t := schema.field(column).type) or pa.types.is_floating(t)):
                raise DataError(f"predict: {path} column {column!r}: expected numbers; found type {t}")
        for column in model.text:
            if column in names and not (pa.types.is_string(t := schema.field(column).type) or pa.types.is_large_string(t)):
                raise DataError(f"predict: {path} column {column!r}: expected text; found type {t}")
    else:
        names = list(pd.read_csv(path, nrows=0).columns)
    missing = [c for c in model.inputs if c not in names]
    if missing:
        raise DataError(f"predict: {path} lacks input column(s) {missing}; model {model.name} version "
                        f"{model.version} takes {model.inputs[:10]}{' ...' if len(model.inputs) > 10 else ''}")
    return ROW_ID in names


def _chunks(path: Path, model: ScoringModel, has_ids: bool, chunk_rows: int) -> Iterator[pd.DataFrame]:
    columns = model.inputs + ([ROW_ID] if has_ids else [])
    if _kind(path) == "parquet":  # pre_buffer would keep every row group read so far (the whole file, at the end)
        for batch in pq.ParquetFile(path, pre_buffer=False).iter_batches(batch_size=chunk_rows, columns=columns):
            yield batch.to_pandas()
    else:
        dtypes = {c: str for c in model.text}
        yield from pd.read_csv(path, usecols=columns, dtype=dtypes, keep_default_na=False, na_values=[""],
                               chunksize=chunk_rows)


def _checked(frame: pd.DataFrame, path: Path, model: ScoringModel, start: int) -> pd.DataFrame:
    """The chunk with numeric columns as float32; a bad value fails naming the column and the file's row."""
    out = frame.copy()
    for column in model.numeric:
        values = pd.to_numeric(out[column], errors="coerce").to_numpy(np.float64)
        bad = np.flatnonzero(~np.isfinite(values))
        if len(bad):
            raise DataError(f"predict: {path} column {column!r} row(s) {(bad[:5] + start).tolist()} (data rows counted "
                            f"from 0): expected a finite number; found {out[column].iloc[bad[:3]].tolist()}")
        out[column] = values.astype(np.float32)
    for column in model.text:
        missing = np.flatnonzero(out[column].isna().to_numpy())
        if len(missing):
            raise DataError(f"predict: {path} column {column!r} row(s) {(missing[:5] + start).tolist()} (data rows "
                            "counted from 0): expected text; found an empty cell")
    return out


def file_sha256(path: Path, block: int = 1 << 23) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(block):
            digest.update(chunk)
    return digest.hexdigest()


class _Writer:
    """Parquet or CSV output, chunk by chunk, into ``tmp`` (renamed by the caller when the job succeeds)."""

    def __init__(self, tmp: Path, kind: str) -> None:
        self.tmp, self.kind, self._pq = tmp, kind, None

    def write(self, frame: pd.DataFrame) -> None:
        if self.kind == "parquet":
            table = pa.Table.from_pandas(frame, preserve_index=False)
            if self._pq is None:
                self._pq = pq.ParquetWriter(self.tmp, table.schema)
            self._pq.write_table(table)
        else:
            frame.to_csv(self.tmp, mode="a", header=not self.tmp.exists(), index=False)

    def close(self) -> None:
        if self._pq is not None:
            self._pq.close()


def score_file(model: ScoringModel, input_path: Path, output_path: Path, chunk_rows: int = CHUNK_ROWS) -> int:
    """Score ``input_path`` into ``output_path`` (both .parquet or .csv); returns the rows scored."""
    input_path, output_path = Path(input_path), Path(output_path)
    kind = _kind(output_path)
    has_ids = check_columns(input_path, model)
    output_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = output_path.with_name(f".{output_path.name}.{os.getpid()}.partial")
    tmp.unlink(missing_ok=True)
    writer, rows = _Writer(tmp, kind), 0
    try:
        for frame in _chunks(input_path, model, has_ids, chunk_rows):
            frame = _checked(frame, input_path, model, rows)
            scored = model.python_model.predict(None, frame[model.inputs])  # type: ignore[attr-defined]
            ids = frame[ROW_ID].to_numpy() if has_ids else np.arange(rows, rows + len(frame), dtype=np.int64)
            writer.write(pd.concat([pd.DataFrame({ROW_ID: ids}), scored.reset_index(drop=True)], axis=1))
            rows += len(frame)
        if rows == 0:
            writer.write(pd.DataFrame({ROW_ID: pd.Series([], dtype=np.int64)}))
        writer.close()
        tmp.replace(output_path)
    except BaseException:
        writer.close()
        tmp.unlink(missing_ok=True)
        raise
    return rows


def batch_predict(cfg: Config, input_path: Path, output_path: Path, version: str | None = None,
                  alias: str | None = None, chunk_rows: int = CHUNK_ROWS) -> PredictJob:
    """Score a file with the version given (else the one ``alias`` names, else ``serve.alias``) and log
    the job to MLflow."""
    experiment = cfg.tracking.model_copy(update={"experiment": f"{cfg.tracking.experiment}-predict"})
    experiment_id = tracking.configure(experiment)
    name = cfg.tracking.model_name
    model = resolve_scoring_model(name, version, alias or cfg.serve.alias, mlflow.get_tracking_uri())
    input_path, output_path = Path(input_path).resolve(), Path(output_path).resolve()
    started = time.perf_counter()
    rows = score_file(model, input_path, output_path, chunk_rows)
    seconds = time.perf_counter() - started
    digest = file_sha256(input_path)
    with mlflow.start_run(run_name=f"predict-v{model.version}", experiment_id=experiment_id,
                          tags={"weakflow.stage": "predict", "model_name": name,
                                "model_version": model.version}) as run:
        mlflow.log_params({"input": str(input_path), "output": str(output_path), "input_sha256": digest,
                           "model_version": model.version, "chunk_rows": chunk_rows})
        mlflow.log_metrics({"rows": rows, "seconds": seconds, "rows_per_second": rows / max(seconds, 1e-9)})
    return PredictJob(input_path, output_path, rows, name, model.version, seconds, digest, run.info.run_id)
