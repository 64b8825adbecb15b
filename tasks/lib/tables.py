"""Reading the user's tables: Parquet or CSV, one clear line for every way a file can be unreadable.

Below :mod:`tasks.lib.data` (which re-exports these names), so the readers of other sources (a folder of
pictures) use them without importing the data module that dispatches to them.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from weakflow.tasks.lib.errors import DataError


def existing_table(path: Path, field: str) -> tuple[Path, str]:
    """``path`` made absolute and its suffix, once it is a Parquet or CSV file that exists (else one
    DataError naming the config field and the file)."""
    path = Path(path).absolute()
    suffix = path.suffix.lower()
    if suffix not in (".parquet", ".pq", ".csv"):
        raise DataError(f"{field}: {path} has suffix {suffix!r}; expected .parquet, .pq or .csv")
    if not path.is_file():
        raise DataError(f"{field}: {path} does not exist or is not a file")
    return path, suffix


def read_table(path: Path, field: str) -> pd.DataFrame:
    """Read a Parquet or CSV file; any failure names the config field and the file (its absolute path)."""
    path, suffix = existing_table(path, field)
    check_unique_columns(header_names(path, suffix, field), path, field)
    try:
        frame = pd.read_csv(path) if suffix == ".csv" else pd.read_parquet(path)
    except Exception as exc:  # pyarrow and the CSV parser raise many types; all mean "unreadable"
        raise unreadable(field, path, suffix, exc) from exc
    return frame


def unreadable(field: str, path: Path, suffix: str, exc: BaseException) -> DataError:
    """One line for a file the readers fail on (training and ``weakflow predict`` alike): the field, the file,
    the reader's own first line; an encoding error names the file's line and byte instead of the reader's
    buffer position, and says what was expected."""
    first = str(exc).splitlines()[0] if str(exc) else ""
    if isinstance(exc, UnicodeDecodeError):
        found = first_non_utf8(path)
        if found is not None:
            line, offset, byte = found
            first = f"line {line} (byte {offset:,} of the file) holds the byte 0x{byte:02x}, which is not UTF-8"
        first += "; expected UTF-8 text: save the file as UTF-8"
    return DataError(f"{field}: cannot read {path} as {suffix.lstrip('.')}: {type(exc).__name__}: {first}")


def first_non_utf8(path: Path, block: int = 1 << 20) -> tuple[int, int, int] | None:
    """Where a file stops being UTF-8: (line from 1, byte offset from 0, the byte), or None; read in blocks."""
    import codecs

    decoder = codecs.getincrementaldecoder("utf-8")()
    offset, lines = 0, 1
    try:
        with open(path, "rb") as handle:
            while True:
                chunk = handle.read(block)
                pending = decoder.getstate()[0]  # an incomplete character carried over from the last block
                try:
                    decoder.decode(chunk, final=not chunk)
                except UnicodeDecodeError as exc:  # exc.start counts from the carried bytes
                    data = pending + chunk
                    return lines + data[:exc.start].count(b"\n"), offset - len(pending) + exc.start, data[exc.start]
                if not chunk:
                    return None
                lines += chunk.count(b"\n")
                offset += len(chunk)
    except OSError:
        return None


def header_names(path: Path, suffix: str, field: str) -> list[str]:
    """The column names as the file spells them (pandas would rename a CSV's second ``px_5`` to ``px_5.1``
    and pyarrow fails on a Parquet file's with a long schema dump)."""
    try:
        if suffix == ".csv":
            import csv

            with open(path, newline="", encoding="utf-8-sig") as handle:  # as pandas reads it: a BOM is no name
                return next(csv.reader(handle), [])
        import pyarrow.parquet as pq

        return list(pq.read_schema(path).names)
    except Exception as exc:
        raise unreadable(field, path, suffix, exc) from exc


def check_unique_columns(names: list[str], path: Path, field: str) -> None:
    """A column name twice: which copy is meant cannot be known, so the file is refused."""
    seen: dict[str, list[int]] = {}
    for i, name in enumerate(names):
        seen.setdefault(name, []).append(i)
    dupes = {n: at for n, at in seen.items() if len(at) > 1}
    if dupes:
        listed = "; ".join(f"{n!r} at columns {', '.join(str(i + 1) for i in at)}" for n, at in list(dupes.items())[:5])
        raise DataError(f"{field}: {path} has duplicate column names ({listed}; columns count from 1); "
                        "every column name must be unique")
