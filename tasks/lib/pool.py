"""Pseudo-labelling's input and output on disk: candidate rows as chunks, kept rows written as they come.

Candidates are the training file's unlabeled (and weak) rows, already in memory, plus optionally a
large pool file (``data.unlabeled_path``) read one Parquet batch at a time, so a pool of any size is
never held in memory. Kept rows go to a Parquet file through one writer, a row group per chunk.
Imports neither Prefect nor MLflow.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from weakflow.tasks.lib.data import ROW_ID, SPLIT, DataError, InputSchema

SOURCE = "source"  # "train" (a row of the training file) or "pool" (a row of data.unlabeled_path)
Chunks = Callable[[], Iterator[tuple[np.ndarray, pd.DataFrame]]]


def frame_chunks(frame: pd.DataFrame, schema: InputSchema, chunk_rows: int) -> Chunks:
    """In-memory candidate rows: each chunk's feature matrix and its payload, (row_id, split, source) and
    the raw text columns (what a kept row is written with)."""
    ids = pd.DataFrame({ROW_ID: frame[ROW_ID].to_numpy(np.int64), SPLIT: frame[SPLIT].to_numpy(), SOURCE: "train"})
    for column in schema.text:
        ids[column] = frame[column].to_numpy()

    def gen() -> Iterator[tuple[np.ndarray, pd.DataFrame]]:
        for start in range(0, len(frame), chunk_rows):
            yield schema.x(frame.iloc[start : start + chunk_rows]), ids.iloc[start : start + chunk_rows]
    return gen


def pool_rows(path: Path) -> int:
    return pq.ParquetFile(path).metadata.num_rows


def check_pool_schema(path: Path, features: list[str], field: str = "data.unlabeled_path",
                      text: list[str] | None = None) -> int:
    """The pool file exists, is Parquet and has every feature column as a number and every text column as
    text; returns its row count. Reads only the footer, so it is cheap on any size."""
    path = Path(path)
    if path.suffix.lower() not in (".parquet", ".pq"):
        raise DataError(f"{field}: {path} has suffix {path.suffix!r}; the pool is streamed, so it must be Parquet")
    if not path.is_file():
        raise DataError(f"{field}: {path} does not exist or is not a file")
    try:
        schema = pq.read_schema(path)
        rows = pool_rows(path)
    except Exception as exc:  # pyarrow raises several types for a damaged footer
        raise DataError(f"{field}: cannot read {path} as Parquet: {type(exc).__name__}: {exc}") from exc
    missing = [c for c in [*features, *(text or [])] if c not in schema.names]
    if missing:
        raise DataError(f"{field}: {path} lacks input column(s) {missing[:10]}; expected all of data.feature_columns "
                        "and data.text_columns")
    wordless = [f"{c} ({schema.field(c).type})" for c in text or []
                if not (pa.types.is_string(schema.field(c).type) or pa.types.is_large_string(schema.field(c).type))]
    if wordless:
        raise DataError(f"{field}: {path} text column(s) {wordless} do not hold text; expected strings")
    bad = [f"{c} ({schema.field(c).type})" for c in features
           if not (pa.types.is_integer(schema.field(c).type) or pa.types.is_floating(schema.field(c).type))]
    if bad:
        raise DataError(f"{field}: {path} feature column(s) {bad[:10]} are not numeric; expected int or float")
    return rows


def row_group_rows(path: Path) -> list[int]:
    """Rows in each row group of a Parquet file, in file order (footer only)."""
    meta = pq.ParquetFile(path).metadata
    return [meta.row_group(i).num_rows for i in range(meta.num_row_groups)]


def parquet_chunks(path: Path, schema: InputSchema, chunk_rows: int, field: str = "data.unlabeled_path",
                   id_offset: int = 0, row_groups: tuple[int, int] | None = None, first_row: int = 0) -> Chunks:
    """A pool file, ``chunk_rows`` at a time. Rows get the file's ``row_id`` column, else ``id_offset`` +
    their position (the caller passes one past the training rows' ids, so no id names two rows).
    A NaN or infinite feature fails with the file, the rows and the column.

    ``row_groups``: read only row groups ``[first, stop)`` (a shard), whose first row is the file's row
    ``first_row``; positions, ids and error messages stay those of the whole file."""
    path = Path(path)
    has_ids = ROW_ID in pq.read_schema(path).names
    features = schema.numeric
    columns = schema.inputs + ([ROW_ID] if has_ids else [])
    groups = None if row_groups is None else list(range(*row_groups))

    def gen() -> Iterator[tuple[np.ndarray, pd.DataFrame]]:
        start = first_row
        if groups == []:
            return
        # pre_buffer=False: pyarrow's default read-ahead buffers whole column chunks and grew the process
        # to 3.5 GiB on a 10M-row pool; without it memory stays at one row group (bench/pool.py)
        for batch in pq.ParquetFile(path, pre_buffer=False).iter_batches(batch_size=chunk_rows, row_groups=groups,
                                                                          columns=columns):
            numbers = (np.column_stack([batch.column(c).to_numpy(zero_copy_only=False) for c in features])
                       .astype(np.float32) if features else np.zeros((batch.num_rows, 0), np.float32))
            if not np.isfinite(numbers).all():
                col = features[int(np.flatnonzero(~np.isfinite(numbers).all(axis=0))[0])]
                raise DataError(f"{field}: {path} rows {start}-{start + batch.num_rows - 1}: column {col} has NaN or "
                                "infinite values; expected finite numbers")
            ids = batch.column(ROW_ID).to_numpy() if has_ids else np.arange(start, start + batch.num_rows) + id_offset
            payload = pd.DataFrame({ROW_ID: ids.astype(np.int64), SPLIT: "pool", SOURCE: "pool"})
            if schema.text:
                texts = pd.DataFrame({c: batch.column(c).to_pandas() for c in schema.text})
                payload[schema.text] = texts.to_numpy()
                x = np.hstack([numbers, schema.featurizer.transform(texts)]) if schema.featurizer else numbers
            else:
                x = numbers
            yield x, payload
            start += batch.num_rows
    return gen


def scan_pool(path: Path, features: list[str], chunk_rows: int = 262_144, text: list[str] | None = None) -> int:
    """Check every row of the pool is finite before any training (one streamed read); returns the rows."""
    rows = check_pool_schema(path, features, text=text)
    for _ in parquet_chunks(path, InputSchema(features, []), chunk_rows)():  # numbers only: text needs no scan
        pass
    return rows


def chain(*parts: Chunks) -> Chunks:
    def gen() -> Iterator[tuple[np.ndarray, pd.DataFrame]]:
        for part in parts:
            yield from part()
    return gen


@dataclass
class KeptWriter:
    """Writes kept rows (ids, features, pseudo label, confidence[, soft_<class> probabilities]).

    The file's schema is fixed up front from the known column types, not inferred from the first chunk:
    a chunk that keeps nothing has empty ``split``/``source`` columns, which pandas would type as null and
    every later chunk with rows would then fail to match."""

    path: Path
    inputs: InputSchema
    classes: list
    soft: bool = False
    rows: int = 0
    _writer: pq.ParquetWriter | None = None

    def __post_init__(self) -> None:
        names = self.schema.names
        clashes = sorted({n for n in names if names.count(n) > 1})
        if clashes:
            raise DataError(f"pseudo-label output: column name(s) {clashes} are used twice; feature columns "
                            f"must not be named {[ROW_ID, SPLIT, SOURCE, 'pseudo_label', 'confidence']} "
                            "or soft_<class>")

    @property
    def schema(self) -> pa.Schema:
        """The output columns and their types, whatever a chunk holds."""
        fields = [pa.field(ROW_ID, pa.int64()), pa.field(SPLIT, pa.string()), pa.field(SOURCE, pa.string())]
        fields += [pa.field(c, pa.float32()) for c in self.inputs.numeric]
        fields += [pa.field(c, pa.string()) for c in self.inputs.text]
        named = bool(self.classes) and isinstance(self.classes[0], str)
        fields += [pa.field("pseudo_label", pa.string() if named else pa.int64()), pa.field("confidence", pa.float32())]
        if self.soft:
            fields += [pa.field(f"soft_{c}", pa.float32()) for c in self.classes]
        return pa.schema(fields)

    def __call__(self, x: np.ndarray, ids: pd.DataFrame, keep: np.ndarray, labels: np.ndarray,
                 conf: np.ndarray, probs: np.ndarray | None) -> None:
        keep = np.asarray(keep, dtype=bool)
        if not keep.any():
            return  # nothing to write; close() leaves a readable file even if no chunk kept a row
        part = ids[keep].reset_index(drop=True)  # ids and, for text data, the raw text
        numeric = self.inputs.numeric
        part = pd.concat([part, pd.DataFrame(x[keep][:, : len(numeric)], columns=numeric)], axis=1)
        part["pseudo_label"] = np.asarray(self.classes, dtype=object)[labels[keep]]
        part["confidence"] = conf[keep].astype(np.float32)
        if self.soft:
            if probs is None or len(probs) != len(part):
                raise ValueError(f"soft output needs the kept rows' probabilities: got "
                                 f"{None if probs is None else len(probs)} rows for {len(part)} kept")
            for i, c in enumerate(self.classes):
                part[f"soft_{c}"] = probs[:, i].astype(np.float32)
        self._write(part)
        self.rows += len(part)

    def _write(self, part: pd.DataFrame) -> None:
        table = pa.Table.from_pandas(part, schema=self.schema, preserve_index=False)
        if self._writer is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._writer = pq.ParquetWriter(self.path, table.schema)
        self._writer.write_table(table)

    def close(self) -> None:
        if self._writer is None:  # no chunk kept a row: still leave a readable, empty file with the full schema
            self._write(self.schema.empty_table().to_pandas())
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def concat_parts(parts: list[Path], path: Path, schema: pa.Schema) -> int:
    """Append the part files (each a :class:`KeptWriter` output with ``schema``), in order, into one
    Parquet file, one row group at a time; returns its rows. An empty result is still a readable file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = 0
    with pq.ParquetWriter(path, schema) as writer:
        for part in parts:
            pf = pq.ParquetFile(part, pre_buffer=False)
            for i in range(pf.metadata.num_row_groups):
                table = pf.read_row_group(i)
                if table.num_rows:
                    writer.write_table(table.cast(schema))
                    rows += table.num_rows
        if rows == 0:
            writer.write_table(schema.empty_table())
    return rows
