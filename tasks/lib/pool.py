"""Pseudo-labelling's input and output on disk: candidate rows as chunks, kept rows written as they come.

Candidates are the training file's unlabeled (and weak) rows, already in memory, plus optionally a
large pool file (``data.unlabeled_path``) read one Parquet batch at a time, so a pool of any size is
never held in memory. Kept rows go to a Parquet file through one writer, a row group per chunk.

With a picture column (``data.image_columns``) a chunk is bounded by bytes, not rows
(:func:`chunk_rows_for`): its pictures are decoded in parallel threads into one reused uint8 buffer, and
the second pass, which only writes kept rows (ids, numbers, text, the picture's path), does not decode
them again (:func:`without_pixels`). A picture that does not decode stops the run with one line naming the
file, the row and the picture, as a NaN in the pool does. Imports neither Prefect nor MLflow.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from weakflow.tasks.core.images import resolve, rows_per_pass
from weakflow.tasks.lib.data import ROW_ID, SPLIT, DataError, InputSchema

if TYPE_CHECKING:
    from weakflow.tasks.core.images import ImageFeaturizer

SOURCE = "source"  # "train" (a row of the training file) or "pool" (a row of data.unlabeled_path)
Chunks = Callable[[], Iterator[tuple[np.ndarray, pd.DataFrame]]]
PICTURE_CHUNK_BYTES = 32 * 2**20  # a picture chunk's features (float32) and decoded pixels (uint8), at most
# pixel values per forward pass when scoring: a CNN's activations (PictureNet: about 170 bytes a value on CPU)
# bound memory there, not the chunk (28x28 grey: 668 pictures, about +90 MiB at peak)
MIN_PICTURE_ROWS = 16


def chunk_rows_for(schema: InputSchema, chunk_rows: int) -> int:
    """Rows per chunk: ``chunk_rows`` (pseudo_label.chunk_rows) for numbers and text; for pictures as many as
    fit :data:`PICTURE_CHUNK_BYTES` (28x28 grey: about 8,500; 64x64 colour: about 650), so a chunk's memory
    does not grow with the picture size."""
    if schema.images is None:
        return chunk_rows
    values = schema.images.fmt.values
    width = len(schema.numeric) + (len(schema.featurizer.names) if schema.featurizer is not None else 0) + values
    per_row = 4 * width + values  # the float32 features and the uint8 decode buffer
    return max(1, min(chunk_rows, max(MIN_PICTURE_ROWS, PICTURE_CHUNK_BYTES // per_row)))


def score_batch_for(schema: InputSchema) -> int:
    """Rows per forward pass when scoring: the default (8,192) for numbers and text; for pictures, whose
    convolutions hold far more per row than the input, as many as hold :data:`tasks.core.images.PASS_VALUES` pixel
    values (32 to 2,048)."""
    if schema.images is None:
        return 8192
    return rows_per_pass(schema.images.fmt.values)


def without_pixels(chunks: Chunks) -> Chunks:
    """The same rows without decoding pictures: each chunk's features stop before the pixels (numbers, text
    features), which is all a kept row is written with. Sources without pictures are returned as they are."""
    return getattr(chunks, "without_pixels", chunks)


def _paired(full: Callable[[bool], Iterator], has_pixels: bool) -> Chunks:
    """``full(True)`` as the chunk source, with ``full(False)`` as its :func:`without_pixels`."""
    def gen() -> Iterator[tuple[np.ndarray, pd.DataFrame]]:
        return full(True)
    if has_pixels:
        gen.without_pixels = lambda: full(False)  # type: ignore[attr-defined]
    return gen


class _PictureBuffer:
    """Where a chunk's pictures are decoded: one uint8 array of the largest chunk, reused chunk after chunk."""

    def __init__(self, images: ImageFeaturizer, rows: int) -> None:
        self.images = images
        self.rows = rows
        self._buf: np.ndarray | None = None

    def features(self, side: np.ndarray, cells: list, problem: Callable[[int, str, str], str]) -> np.ndarray:
        """``side`` (numbers, text features) then the decoded pixels of ``cells``, as float32 features. A cell
        that is empty or does not decode raises DataError with ``problem(position, picture, why)``."""
        from weakflow.tasks.core.images import decode_many

        n = len(cells)
        if self._buf is None or len(self._buf) < n:
            self._buf = np.zeros((max(n, self.rows), *self.images.fmt.shape), np.uint8)
        buf = self._buf[:n]
        cache = self.images.cache
        todo: list[int] = []
        sources: list[Path | bytes] = []
        for i, cell in enumerate(cells):
            if isinstance(cell, (bytes, bytearray)):
                todo.append(i)
                sources.append(bytes(cell))
                continue
            if _empty(cell):
                raise DataError(problem(i, "(empty cell)", "is missing; expected a picture's path"))
            path = resolve(cell, self.images.root)
            hit = cache.get(path) if cache is not None else None
            if hit is None:
                todo.append(i)
                sources.append(path)
            else:
                buf[i] = hit
        if todo:
            if len(todo) == n:
                _, problems = decode_many(sources, self.images.fmt, out=buf)
            else:
                decoded, problems = decode_many(sources, self.images.fmt)
                buf[todo] = decoded
            if problems:
                at, why = min(problems.items())
                more = f" ({len(problems)} pictures of these {n} rows failed)" if len(problems) > 1 else ""
                shown = "(the picture's bytes)" if isinstance(sources[at], bytes) else str(sources[at])
                raise DataError(problem(todo[at], shown, why) + more)
        x = np.empty((n, side.shape[1] + self.images.fmt.values), np.float32)
        x[:, : side.shape[1]] = side
        x[:, side.shape[1]:] = buf.reshape(n, -1)
        return x


def _empty(cell: object) -> bool:
    return cell is None or (isinstance(cell, float) and np.isnan(cell)) or str(cell).strip() == ""


def frame_chunks(frame: pd.DataFrame, schema: InputSchema, chunk_rows: int) -> Chunks:
    """In-memory candidate rows: each chunk's feature matrix and its payload, (row_id, split, source) and
    the raw text and picture columns (what a kept row is written with). With pictures, chunks are bounded by
    bytes (:func:`chunk_rows_for`) and their pictures come from the decoded cache, or are decoded in threads."""
    ids = pd.DataFrame({ROW_ID: frame[ROW_ID].to_numpy(np.int64), SPLIT: frame[SPLIT].to_numpy(), SOURCE: "train"})
    for column in [*schema.text, *schema.image_columns]:
        ids[column] = frame[column].to_numpy()
    rows = chunk_rows_for(schema, chunk_rows)
    images = schema.images

    def full(pixels: bool) -> Iterator[tuple[np.ndarray, pd.DataFrame]]:
        buffer = _PictureBuffer(images, rows) if images is not None and pixels else None
        for start in range(0, len(frame), rows):
            part, payload = frame.iloc[start : start + rows], ids.iloc[start : start + rows]
            if images is None:
                yield schema.x(part), payload
            elif buffer is None:
                yield schema.side(part), payload
            else:
                row_ids = part[ROW_ID].to_numpy()

                def problem(i: int, picture: str, why: str) -> str:
                    return f"data.train_path row_id {row_ids[i]}: column {images.column!r} picture {picture} {why}"
                yield buffer.features(schema.side(part), part[images.column].tolist(), problem), payload
    return _paired(full, images is not None)


def pool_rows(path: Path) -> int:
    return pq.ParquetFile(path).metadata.num_rows


def _is_text(t: pa.DataType) -> bool:
    return pa.types.is_string(t) or pa.types.is_large_string(t)


def check_pool_schema(path: Path, features: list[str], field: str = "data.unlabeled_path",
                      text: list[str] | None = None, images: list[str] | None = None) -> int:
    """The pool file exists, is Parquet and has every feature column as a number and every text and picture
    (path) column as text; returns its row count. Reads only the footer, so it is cheap on any size."""
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
    missing = [c for c in [*features, *(text or []), *(images or [])] if c not in schema.names]
    if missing:
        raise DataError(f"{field}: {path} lacks input column(s) {missing[:10]}; expected all of data.feature_columns"
                        + (", data.text_columns and data.image_columns" if images else " and data.text_columns"))
    wordless = [f"{c} ({schema.field(c).type})" for c in text or [] if not _is_text(schema.field(c).type)]
    if wordless:
        raise DataError(f"{field}: {path} text column(s) {wordless} do not hold text; expected strings")
    pathless = [f"{c} ({schema.field(c).type})" for c in images or [] if not _is_text(schema.field(c).type)]
    if pathless:
        raise DataError(f"{field}: {path} picture column(s) {pathless} do not hold file paths; expected strings "
                        "(paths relative to data.image_root)")
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
    """A pool file, ``chunk_rows`` at a time (pictures: as many as :func:`chunk_rows_for` allows). Rows get
    the file's ``row_id`` column, else ``id_offset`` + their position (the caller passes one past the training
    rows' ids, so no id names two rows). A NaN or infinite feature fails with the file, the rows and the
    column; a picture that is missing or does not decode with the file, the row and the picture.

    ``row_groups``: read only row groups ``[first, stop)`` (a shard), whose first row is the file's row
    ``first_row``; positions, ids and error messages stay those of the whole file."""
    path = Path(path)
    names = pq.read_schema(path).names
    has_ids = ROW_ID in names
    missing = [c for c in schema.inputs if c not in names]
    if missing:
        raise DataError(f"{field}: {path} lacks input column(s) {missing[:10]}; expected every input column "
                        "(data.feature_columns, data.text_columns, data.image_columns)")
    features = schema.numeric
    columns = schema.inputs + ([ROW_ID] if has_ids else [])
    groups = None if row_groups is None else list(range(*row_groups))
    rows = chunk_rows_for(schema, chunk_rows)
    images = schema.images

    def full(pixels: bool) -> Iterator[tuple[np.ndarray, pd.DataFrame]]:
        start = first_row
        if groups == []:
            return
        buffer = _PictureBuffer(images, rows) if images is not None and pixels else None
        # pre_buffer=False: pyarrow's default read-ahead buffers whole column chunks and grew the process
        # to 3.5 GiB on a 10M-row pool; without it memory stays at one row group (bench/pool.py)
        for batch in pq.ParquetFile(path, pre_buffer=False).iter_batches(batch_size=rows, row_groups=groups,
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
            if images is not None:
                cells = batch.column(images.column).to_pylist()
                payload[images.column] = cells
                if buffer is not None:
                    x = buffer.features(x, cells, _pool_problem(field, path, images.column, start))
            yield x, payload
            start += batch.num_rows
    return _paired(full, images is not None)


def _pool_problem(field: str, path: Path, column: str, start: int) -> Callable[[int, str, str], str]:
    def problem(i: int, picture: str, why: str) -> str:
        return f"{field}: {path} row {start + i} (rows counted from 0): column {column!r} picture {picture} {why}"
    return problem


def scan_pool(path: Path, features: list[str], chunk_rows: int = 262_144, text: list[str] | None = None,
              images: list[str] | None = None, image_root: Path | None = None,
              max_pixels: int = 40_000_000) -> int:
    """Check every row of the pool before any training (one streamed read); returns the rows. Numbers must
    be finite; with ``images`` (data.image_columns) every cell must name a picture file that exists, whose
    header Pillow reads and within ``max_pixels``: a chunk of paths at a time, opened in parallel threads,
    no picture decoded (a picture whose body is damaged fails when the pool is scored, with the same line)."""
    rows = check_pool_schema(path, features, text=text, images=images)
    for _ in parquet_chunks(path, InputSchema(features, []), chunk_rows)():  # numbers only: text needs no scan
        pass
    for column in images or []:
        check_pool_pictures(path, column, image_root, max_pixels, chunk=min(chunk_rows, 4096))
    return rows


def check_pool_pictures(path: Path, column: str, root: Path | None, max_pixels: int = 40_000_000,
                        field: str = "data.unlabeled_path", chunk: int = 4096) -> None:
    """Every cell of ``column`` names a picture file that exists and whose header Pillow reads (a format it
    decodes, within ``max_pixels``); ``chunk`` paths at a time, opened in parallel threads."""
    from concurrent.futures import ThreadPoolExecutor

    from weakflow.tasks.core.images import workers

    start = 0
    with ThreadPoolExecutor(max_workers=workers()) as threads:
        for batch in pq.ParquetFile(path, pre_buffer=False).iter_batches(batch_size=chunk, columns=[column]):
            cells = batch.column(0).to_pylist()
            problems = list(threads.map(lambda c: _header_problem(c, root, max_pixels), cells, chunksize=64))
            bad = [i for i, p in enumerate(problems) if p is not None]
            if bad:
                picture, why = problems[bad[0]]
                more = f" ({len(bad)} pictures of rows {start}-{start + len(cells) - 1} failed)" if len(bad) > 1 else ""
                raise DataError(_pool_problem(field, Path(path), column, start)(bad[0], picture, why) + more)
            start += len(cells)


def _header_problem(cell: object, root: Path | None, max_pixels: int) -> tuple[str, str] | None:
    """(picture, why) when the cell does not name a picture file Pillow opens (by its header), else None."""
    from PIL import Image

    from weakflow.tasks.core.images import FORMATS, NotAPictureFile, open_picture

    if _empty(cell):
        return "(empty cell)", "is missing; expected a picture's path"
    picture = resolve(cell, root)
    Image.init()
    formats = [f for f in FORMATS if f in Image.OPEN]  # Pillow 13 registers MPO under JPEG: asking for it fails
    try:
        with open_picture(picture) as handle, Image.open(handle, formats=formats) as img:
            width, height = img.size
    except FileNotFoundError:
        return str(picture), "does not exist"
    except IsADirectoryError:
        return str(picture), "is a folder, not a picture file"
    except NotAPictureFile as exc:
        return str(picture), f"{exc.strerror}; expected a picture file"
    except Image.UnidentifiedImageError:
        return str(picture), f"is not a picture Pillow can read as one of {', '.join(formats)}"
    except Image.DecompressionBombError as exc:  # not an OSError
        return str(picture), f"is larger than Pillow's decompression-bomb limit ({exc})"
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        return str(picture), f"does not open ({type(exc).__name__}: {exc})"
    if width < 1 or height < 1 or width * height > max_pixels:
        return str(picture), (f"is {width}x{height} pixels; between 1 and {max_pixels:,} are accepted "
                              "(data.image_max_pixels)")
    return None


def chain(*parts: Chunks) -> Chunks:
    """The parts one after another (and, where a part has pictures, its :func:`without_pixels` likewise)."""
    def full(pixels: bool) -> Iterator[tuple[np.ndarray, pd.DataFrame]]:
        for part in parts:
            yield from (part if pixels else without_pixels(part))()
    return _paired(full, any(hasattr(part, "without_pixels") for part in parts))



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
        fields += [pa.field(c, pa.string()) for c in [*self.inputs.text, *self.inputs.image_columns]]
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
        part = ids[keep].reset_index(drop=True)  # ids and the raw text and picture paths
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
