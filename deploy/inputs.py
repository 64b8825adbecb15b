"""The value rules for a model's raw inputs, one module for every way of scoring: the server's
``POST /predict`` (:mod:`deploy.serve`), ``weakflow predict`` (:mod:`tasks.batch_predict`) and the Python
API's ``Model.predict``.

A row the model cannot take is refused, naming the column and the row, rather than scored: a number must be
finite *as the float32 the network reads* (``1e39`` is finite in JSON and in a CSV, yet becomes ``inf`` and
then NaN probabilities, every row one class with empty confidences), a text must be text and at most
``serve.max_text_chars`` characters (the server's documented 422; a 20 MB cell would otherwise be featurised
for minutes). A picture is the bytes of a picture file (base64 in the server's JSON, at most
``serve.max_image_bytes``; a file path in a scored file) and must decode (:func:`tasks.core.images.decode`,
whose pixel limit is the model's ``data.image_max_pixels``); the server never reads a path it is sent. Only
numpy and pandas here (Pillow when a picture is decoded): the server imports it on its request path.
"""

from __future__ import annotations

import base64
import binascii
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from weakflow.tasks.core.images import ImageFormat

TEXT_LIMIT_SETTING = "serve.max_text_chars"  # the one setting every entry point reads for the longest text
FLOAT32_MAX = float(np.finfo(np.float32).max)  # about 3.4e38
IMAGE_LIMIT_SETTING = "serve.max_image_bytes"  # the largest picture the server takes, in bytes once decoded
PICTURE = "a picture file (PNG, JPEG, WebP, BMP or TIFF) that decodes"
_DATA_URL = re.compile(r"data:image/[A-Za-z0-9.+-]+;base64,")


def as_float32(values: object) -> tuple[np.ndarray, np.ndarray]:
    """``values`` (numbers, any shape) as float32, and where they are not finite after the cast: NaN, inf,
    and anything beyond the float32 range (the cast's overflow is expected, hence no RuntimeWarning)."""
    with np.errstate(over="ignore", invalid="ignore"):
        x = np.asarray(values, dtype=np.float64).astype(np.float32)
    return x, ~np.isfinite(x)


def _as_float(value: object) -> float:
    """One cell as a float (NaN when it is not a number); the fallback when a column holds a number too
    large even for float64 (a Python int of 400 digits)."""
    if isinstance(value, (bool, np.bool_)) or value is None or value is pd.NA:
        return math.nan
    try:
        return float(value)  # type: ignore[arg-type]
    except OverflowError:
        return math.inf
    except (TypeError, ValueError):
        return math.nan


def numbers(column: pd.Series) -> np.ndarray:
    """A column as float64, NaN where a cell is empty, not a number, or a boolean (JSON's ``true`` is not
    a number to the server either)."""
    if pd.api.types.is_bool_dtype(column.dtype):
        return np.full(len(column), np.nan)
    try:
        values = pd.to_numeric(column, errors="coerce")
        out = np.asarray(pd.Series(values).to_numpy(dtype=np.float64, na_value=np.nan), dtype=np.float64)
    except (OverflowError, TypeError, ValueError):
        return np.array([_as_float(v) for v in column], dtype=np.float64)
    if column.dtype == object:  # pandas reads True as 1.0
        flags = np.fromiter((isinstance(v, (bool, np.bool_)) for v in column), dtype=bool, count=len(column))
        out[flags] = np.nan
    return out


@dataclass(frozen=True)
class BadValues:
    """The rows of one column a model cannot take: where (positions counted from 0) and why."""

    column: str
    rows: np.ndarray  # positions in the frame checked
    expected: str
    found: list[str]  # the first few values, as shown to the user

    def describe(self, first_row: int = 0, rows_are: str = "rows counted from 0") -> str:
        """``column 'x' row(s) [3, 9] (rows counted from 0): expected ...; found [...]`` (at most 5 rows)."""
        shown = (self.rows[:5] + first_row).tolist()
        more = f" and {len(self.rows) - 5} more" if len(self.rows) > 5 else ""
        return (f"column {self.column!r} row(s) {shown}{more} ({rows_are}): expected {self.expected}; "
                f"found {', '.join(self.found)}")


def _shown(value: object, limit: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}..."


def bad_values(frame: pd.DataFrame, numeric: list[str], text: list[str],
               max_text_chars: int) -> tuple[pd.DataFrame | None, BadValues | None]:
    """``(frame's input columns ready for the model (numbers as float32), None)``, or ``(None, the first
    column with rows it cannot take)``. Numbers: finite as float32. Text: a string (not empty cell), at most ``max_text_chars``
    characters, as the server's request schema says."""
    plain = [i for i, c in enumerate(numeric) if isinstance(frame[c].dtype, np.dtype) and frame[c].dtype.kind in "iuf"]
    with np.errstate(over="ignore", invalid="ignore"):  # an overflow becomes inf and is refused below
        if len(plain) == len(numeric):  # numpy ints and floats (every Parquet file, most frames): one cast
            x = frame[numeric].to_numpy(dtype=np.float32)
        else:  # text, objects, nullable or boolean columns: one by one (column-major: contiguous columns)
            x = np.empty((len(frame), len(numeric)), dtype=np.float32, order="F")
            for i, column in enumerate(numeric):
                x[:, i] = (frame[column].to_numpy(dtype=np.float32) if i in plain
                           else as_float32(numbers(frame[column]))[0])
    bad = ~np.isfinite(x)
    if bad.any():
        column = numeric[int(np.flatnonzero(bad.any(axis=0))[0])]
        rows = np.flatnonzero(bad[:, numeric.index(column)])
        return None, BadValues(column, rows, f"a finite number (read as float32: at most ±{FLOAT32_MAX:.1e})",
                               [_shown(v) for v in frame[column].iloc[rows[:3]].tolist()])
    out = pd.DataFrame(x, columns=numeric, index=frame.index)
    for column in text:
        values = frame[column]
        is_text = np.fromiter((isinstance(v, str) for v in values), dtype=bool, count=len(values))
        rows = np.flatnonzero(~is_text)
        if len(rows):
            found = ["an empty cell" if v is None or v is pd.NA or (isinstance(v, float) and math.isnan(v))
                     else f"{_shown(v)} ({type(v).__name__})" for v in values.iloc[rows[:3]].tolist()]
            return None, BadValues(column, rows, "text", found)
        lengths = values.str.len().to_numpy()
        rows = np.flatnonzero(lengths > max_text_chars)
        if len(rows):
            return None, BadValues(column, rows, f"at most {max_text_chars:,} characters ({TEXT_LIMIT_SETTING})",
                                   [f"{n:,} characters" for n in lengths[rows[:3]].tolist()])
        out[column] = values
    return out, None


def picture_bytes(value: str, max_bytes: int) -> bytes:
    """A picture sent as base64 text (standard alphabet, padded; a ``data:image/...;base64,`` prefix and
    line breaks are allowed) as its bytes. ValueError saying why not: not base64, empty, or more than
    ``max_bytes`` bytes
    (checked on the text's length first, so an oversized picture is never decoded)."""
    text = value[_DATA_URL.match(value).end():] if value.startswith("data:") and _DATA_URL.match(value) else value
    if any(c in text for c in "\n\r \t"):  # base64 wrapped in lines (MIME style)
        text = "".join(text.split())
    if len(text) > 4 * -(-max_bytes // 3):  # base64 takes 4 characters per 3 bytes
        raise ValueError(f"a picture of at most {max_bytes:,} bytes ({IMAGE_LIMIT_SETTING}); found about "
                         f"{len(text) * 3 // 4:,} bytes")
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"base64 text of a picture file (standard alphabet, '=' padding); found {_shown(value, 24)}, "
                         "which is not base64") from None
    if not data:
        raise ValueError("a picture; found an empty string")
    if len(data) > max_bytes:
        raise ValueError(f"a picture of at most {max_bytes:,} bytes ({IMAGE_LIMIT_SETTING}); found {len(data):,} bytes")
    return data


def pictures(frame: pd.DataFrame, column: str, fmt: ImageFormat,
             root: Path | None) -> tuple[np.ndarray | None, BadValues | None]:
    """``(the column's pictures as uint8 (rows, channels, size, size), None)``, or ``(None, the rows whose
    picture cannot be used)``: each cell is a file path (relative paths start from ``root``) or the bytes of a
    picture file, and must decode to ``fmt`` within its pixel limit. Decoded in parallel threads."""
    from weakflow.tasks.core.images import decode_many, resolve

    cells = frame[column].tolist()
    sources: list[bytes | Path] = []
    empty: list[int] = []
    for i, cell in enumerate(cells):
        if isinstance(cell, (bytes, bytearray, memoryview)):
            sources.append(bytes(cell))
        elif isinstance(cell, str) and cell.strip():
            sources.append(resolve(cell, root))
        else:
            empty.append(i)
            sources.append(b"")
    if empty:
        found = [f"{_shown(cells[i])} ({type(cells[i]).__name__})" if cells[i] is not None and not
                 (isinstance(cells[i], float) and math.isnan(cells[i])) else "an empty cell" for i in empty[:3]]
        return None, BadValues(column, np.asarray(empty), f"{PICTURE}: a file path or the file's bytes", found)
    out, problems = decode_many(sources, fmt)
    if problems:
        rows = np.asarray(sorted(problems))
        found = [f"{sources[i] if isinstance(sources[i], Path) else f'{len(sources[i]):,} bytes'}, which "
                 f"{problems[i]}" for i in rows[:3].tolist()]
        return None, BadValues(column, rows, PICTURE, found)
    return out, None
