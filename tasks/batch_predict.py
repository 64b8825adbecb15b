"""Batch scoring (``weakflow predict``): a Parquet or CSV file of any size through a registered model, in
chunks, with bounded memory.

An output that is the input (the same path, or the same file through a link) is refused before anything is
read or written. The input's columns are checked against the model's inputs before any row is scored; each
chunk's values are checked as it is read, by the rules the server applies (:mod:`deploy.inputs`: a number
must be finite as float32, a text present and at most ``serve.max_text_chars`` characters), naming the column
and the file's row. The output (row id, class, confidence, one probability per class) is written to a
temporary file beside ``output`` and renamed only when every row is scored, so a failed job leaves no half
file and never replaces an earlier output. A model that takes a picture reads the picture column as file paths
(relative to ``--image-root``, default the scored file's folder; a Parquet binary column may carry the
pictures' bytes instead), decoded in parallel threads a slice of the chunk at a time; a missing or broken
picture is one line naming the picture file and the row. The job is one MLflow run (experiment
``<tracking.experiment>-predict``): the input's SHA-256 (hashed before anything is written), its rows, the
model version, the duration and rows per second.
"""

from __future__ import annotations

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

from weakflow.deploy.inputs import bad_values, pictures
from weakflow.tasks.lib import tracking
from weakflow.tasks.lib.config import Config, ConfigError
from weakflow.tasks.core.images import ImageFeaturizer
from weakflow.tasks.lib.data import ROW_ID, DataError, check_unique_columns, file_sha256, header_names, unreadable

CHUNK_ROWS = 100_000
PICTURE_SLICE_BYTES = 32 << 20  # decoded pixels held at once while a chunk of pictures is scored
INPUT = "predict --input"  # how a read error names the file's role (training names data.train_path)


@dataclass(frozen=True)
class ScoringModel:
    """A registered version, ready to score: its raw inputs (numbers, text), classes and python model."""

    name: str
    version: str
    numeric: list[str]
    text: list[str]
    classes: list
    python_model: object  # deploy.model.WeakflowClassifier (of the version's own code)
    max_text_chars: int = 5000  # serve.max_text_chars: the longest text any entry point scores
    images: ImageFeaturizer | None = None  # the picture column and its format (models that take a picture)

    @property
    def inputs(self) -> list[str]:
        return [*self.numeric, *self.text, *([self.images.column] if self.images is not None else [])]

    def predict(self, frame: pd.DataFrame) -> pd.DataFrame:
        """``prediction``, ``confidence`` and ``prob_<class>`` per row of ``frame`` (raw input columns). A value
        the server would refuse (not a finite float32 number, a missing or over-long text) is a DataError
        naming the column and the row (positions from 0), not a row scored as nonsense."""
        if not isinstance(frame, pd.DataFrame):
            raise DataError(f"predict: expected a pandas DataFrame with the columns {self._shown_inputs()}, found "
                            f"{type(frame).__name__} (pandas.DataFrame(records) makes one from a list of dicts)")
        missing = [c for c in self.inputs if c not in frame.columns]
        if missing:
            raise DataError(f"predict: the frame lacks input column(s) {missing}; {self.name} version {self.version} "
                            f"takes {self._shown_inputs()}")
        twice = sorted({c for c in frame.columns[frame.columns.duplicated()] if c in self.inputs})
        if twice:
            raise DataError(f"predict: the frame has the input column(s) {twice} more than once; which one is meant "
                            "cannot be known")
        return self.scored(frame, "predict: the frame's", 0, "rows by position, counted from 0", None)

    def scored(self, frame: pd.DataFrame, where: str, first_row: int, rows_are: str,
               image_root: Path | None) -> pd.DataFrame:
        """``frame``'s rows checked (:meth:`checked`) and scored; pictures (paths relative to ``image_root``,
        else the working folder; or bytes) decoded a slice at a time, a bad one a DataError naming its file
        and row."""
        checked = self.checked(frame, where, first_row, rows_are).reset_index(drop=True)
        if self.images is None:
            return self.python_model.predict(None, checked)  # type: ignore[attr-defined]
        from weakflow.deploy.model import output_frame
        from weakflow.tasks.core.training import predict_proba

        loaded = self.python_model.loaded  # type: ignore[attr-defined]
        cells = frame[[self.images.column]].reset_index(drop=True)
        step = max(1, PICTURE_SLICE_BYTES // self.images.fmt.values)
        probs = []
        for start in range(0, len(frame), step):
            part = slice(start, start + step)
            pixels, bad = pictures(cells.iloc[part], self.images.column, self.images.fmt, image_root)
            if pixels is None:
                raise DataError(f"{where} {bad.describe(first_row + start, rows_are)}")
            side = loaded.schema.side(checked.iloc[part])
            flat = pixels.reshape(len(pixels), -1).astype(np.float32)
            probs.append(predict_proba(loaded.model, np.hstack([side, flat]) if side.shape[1] else flat, device="cpu"))
        joined = np.concatenate(probs) if probs else np.zeros((0, len(self.classes)), np.float32)
        return output_frame(joined, self.classes)

    def checked(self, frame: pd.DataFrame, where: str, first_row: int, rows_are: str) -> pd.DataFrame:
        """The input columns as the model takes them, or one DataError: ``<where> column ... row(s) ...``."""
        out, bad = bad_values(frame, self.numeric, self.text, self.max_text_chars)
        if out is None:
            raise DataError(f"{where} {bad.describe(first_row, rows_are)}")
        return out

    def _shown_inputs(self) -> str:
        return f"{self.inputs[:10]}{' ...' if len(self.inputs) > 10 else ''}"


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


def chosen_version(version: object, alias: object, default_alias: str) -> tuple[str | None, str]:
    """``(version, alias)`` to look up: the version given, else the alias given, else ``default_alias``
    (``serve.alias``). Both given, or an empty one, is a ConfigError: silently preferring one, or reading
    ``alias=""`` as "the default", would score with a model the caller did not name."""
    if version is not None and alias is not None:
        raise ConfigError(f"give a model version or an alias, not both (version {version!r}, alias {alias!r})")
    if alias is not None and (not isinstance(alias, str) or not alias.strip()):
        raise ConfigError(f"alias {alias!r}: expected the name of a registry alias (e.g. 'champion'); leave it out "
                          f"to use serve.alias ({default_alias!r})")
    if version is not None and (isinstance(version, bool) or not isinstance(version, (str, int))
                                or not str(version).strip()):
        raise ConfigError(f"version {version!r}: expected a registered version number (e.g. '3'); leave it out to "
                          f"use the alias ({default_alias!r})")
    return (None if version is None else str(version).strip()), (alias if alias is not None else default_alias)


def resolve_scoring_model(name: str, version: str | None, alias: str, uri: str,
                          max_text_chars: int = 5000) -> ScoringModel:
    """The version given, else the one ``alias`` names, loaded for scoring from the registry at ``uri`` (the
    current tracking URI). No such model, alias or version: one line (RegistryError)."""
    from weakflow.deploy.registry import alias_version, model_version

    if version is None:
        version = alias_version(None, name, alias, uri)  # a missing SQLite store is reported, not created
    model_version(mlflow.MlflowClient(uri), name, version)
    return load_scoring_model(name, version, max_text_chars)


def load_scoring_model(name: str, version: str, max_text_chars: int = 5000) -> ScoringModel:
    """The version's pyfunc, unwrapped; versions saved before text inputs take numbers only."""
    from weakflow.deploy.model_code import load_pyfunc

    inner = load_pyfunc(f"models:/{name}/{version}").unwrap_python_model()
    schema = getattr(getattr(inner, "loaded", None), "schema", None)
    numeric = list(schema.numeric) if schema is not None else list(inner.features)
    text = list(schema.text) if schema is not None else []
    images = getattr(schema, "images", None)  # models saved before pictures have none
    return ScoringModel(name, str(version), numeric, text, list(inner.classes), inner, max_text_chars, images)


def _kind(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix in (".parquet", ".pq"):
        return "parquet"
    if suffix == ".csv":
        return "csv"
    raise DataError(f"predict: {path} must be a .parquet or .csv file (found {suffix or 'no suffix'!r})")


def check_paths(input_path: Path, output_path: Path) -> tuple[Path, Path]:
    """Both paths resolved, once the output cannot be the input: the same path, or the same file through a
    symbolic or hard link (scoring would replace the data it reads). Nothing is read or written before."""
    source, target = Path(input_path).resolve(), Path(output_path).resolve()
    _kind(source)  # a .parquet or .csv file each: one line otherwise
    _kind(target)
    if not source.is_file():
        raise DataError(f"predict: input file {input_path} does not exist")
    same = source == target
    if not same and target.exists():
        try:
            same = os.path.samefile(source, target)
        except OSError:
            same = False
    if same:
        how = "" if Path(input_path).absolute() == Path(output_path).absolute() else f" (both are {source})"
        raise DataError(f"predict: --output {output_path} is the input file {input_path}{how}: the scores would "
                        "replace the data they are read from; write them to another file")
    if target.is_dir():
        raise DataError(f"predict: --output {output_path} is a folder; expected a .parquet or .csv file path")
    return source, target


def check_columns(path: Path, model: ScoringModel) -> bool:
    """Fail on a column the model needs and the file lacks, a column named twice, an empty or unreadable
    file, or a Parquet column of the wrong type, before anything is scored. Returns whether the file carries
    its own ``row_id``."""
    if not path.is_file():
        raise DataError(f"predict: input file {path} does not exist")
    names = header_names(path, path.suffix.lower(), INPUT)  # one line for a file the reader fails on
    if not names:
        raise DataError(f"{INPUT}: cannot read {path} as {_kind(path)}: the file is empty (no header line); "
                        f"expected the columns {model._shown_inputs()}")
    check_unique_columns(names, path, INPUT)
    if _kind(path) == "parquet":
        schema = pq.read_schema(path)
        for column in model.numeric:
            if column in names and not (pa.types.is_integer(t := schema.field(column).type) or pa.types.is_floating(t)):
                raise DataError(f"predict: {path} column {column!r}: expected numbers; found type {t}")
        for column in model.text:
            if column in names and not (pa.types.is_string(t := schema.field(column).type) or pa.types.is_large_string(t)):
                raise DataError(f"predict: {path} column {column!r}: expected text; found type {t}")
        column = model.images.column if model.images is not None else None
        kinds = (pa.types.is_string, pa.types.is_large_string, pa.types.is_binary, pa.types.is_large_binary)
        if column in names and not any(kind(t := schema.field(column).type) for kind in kinds):
            raise DataError(f"predict: {path} column {column!r}: expected picture file paths (text) or the pictures' "
                            f"bytes (binary); found type {t}")
    missing = [c for c in model.inputs if c not in names]
    if missing:
        raise DataError(f"predict: {path} lacks input column(s) {missing}; model {model.name} version "
                        f"{model.version} takes {model._shown_inputs()}")
    return ROW_ID in names


def _chunks(path: Path, model: ScoringModel, has_ids: bool, chunk_rows: int) -> Iterator[pd.DataFrame]:
    """The file's chunks; a reader failure (bytes that are not UTF-8, a broken row or row group) is one line
    naming the file and the data rows the failing chunk starts at."""
    columns = model.inputs + ([ROW_ID] if has_ids else [])

    def read() -> Iterator[pd.DataFrame]:
        if _kind(path) == "parquet":  # pre_buffer would keep every row group read so far (the whole file, at the end)
            for batch in pq.ParquetFile(path, pre_buffer=False).iter_batches(batch_size=chunk_rows, columns=columns):
                yield batch.to_pandas()
        else:
            dtypes = {c: str for c in model.text + ([model.images.column] if model.images is not None else [])}
            yield from pd.read_csv(path, usecols=columns, dtype=dtypes, keep_default_na=False, na_values=[""],
                                   chunksize=chunk_rows)

    reader, start = read(), 0
    while True:
        try:
            frame = next(reader)
        except StopIteration:
            return
        except Exception as exc:  # the CSV parser and pyarrow raise many types; all mean "unreadable"
            error = unreadable(INPUT, path, path.suffix.lower(), exc)  # a bad byte: named by its line
            where = "" if isinstance(exc, UnicodeDecodeError) else f" (in the data rows from {start}, counted from 0)"
            raise DataError(f"{error}{where}") from exc
        start += len(frame)
        yield frame


def _scored(frame: pd.DataFrame, path: Path, model: ScoringModel, start: int, image_root: Path) -> pd.DataFrame:
    """The chunk's scores; a value the server would refuse (or a picture that is missing or does not
    decode) fails naming the column, the file's row (and the picture file)."""
    return model.scored(frame, f"predict: {path}", start, "data rows counted from 0", image_root)




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


def score_file(model: ScoringModel, input_path: Path, output_path: Path, chunk_rows: int = CHUNK_ROWS,
               image_root: Path | None = None) -> int:
    """Score ``input_path`` into ``output_path`` (both .parquet or .csv, not the same file); returns the rows
    scored. Relative picture paths start from ``image_root`` (default: the input file's folder)."""
    input_path, output_path = check_paths(input_path, output_path)
    image_root = Path(image_root).expanduser().resolve() if image_root is not None else input_path.parent
    if model.images is not None and not image_root.is_dir():
        raise DataError(f"predict: --image-root {image_root} is not a folder; expected the folder the picture paths "
                        "in the input start from")
    kind = _kind(output_path)
    has_ids = check_columns(input_path, model)
    output_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = output_path.with_name(f".{output_path.name}.{os.getpid()}.partial")
    tmp.unlink(missing_ok=True)
    writer, rows = _Writer(tmp, kind), 0
    try:
        for frame in _chunks(input_path, model, has_ids, chunk_rows):
            scored = _scored(frame, input_path, model, rows, image_root)
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
                  alias: str | None = None, chunk_rows: int = CHUNK_ROWS, image_root: Path | None = None) -> PredictJob:
    """Score a file with the version given (else the one ``alias`` names, else ``serve.alias``) and log
    the job to MLflow. The paths and the choice of model are checked before anything is read or written;
    the input is hashed before the output is written."""
    input_path, output_path = check_paths(input_path, output_path)
    version, alias = chosen_version(version, alias, cfg.serve.alias)
    experiment = cfg.tracking.model_copy(update={"experiment": f"{cfg.tracking.experiment}-predict"})
    experiment_id = tracking.configure(experiment)
    name = cfg.tracking.model_name
    model = resolve_scoring_model(name, version, alias, mlflow.get_tracking_uri(), cfg.serve.max_text_chars)
    digest = file_sha256(input_path)  # what was read, whatever happens to the path later
    started = time.perf_counter()
    rows = score_file(model, input_path, output_path, chunk_rows, image_root)
    seconds = time.perf_counter() - started
    with mlflow.start_run(run_name=f"predict-v{model.version}", experiment_id=experiment_id,
                          tags={"weakflow.stage": "predict", "model_name": name,
                                "model_version": model.version}) as run:
        mlflow.log_params({"input": str(input_path), "output": str(output_path), "input_sha256": digest,
                           "model_version": model.version, "chunk_rows": chunk_rows,
                           **({"image_root": str(image_root or input_path.parent)} if model.images is not None
                              else {})})
        mlflow.log_metrics({"rows": rows, "seconds": seconds, "rows_per_second": rows / max(seconds, 1e-9)})
    return PredictJob(input_path, output_path, rows, name, model.version, seconds, digest, run.info.run_id)
