"""Picture checks for the validation suite: every picture file named by the training and test tables is
opened and judged, in parallel threads (Pillow releases the GIL while it decodes), before anything trains.

A picture passes when its file exists, decodes completely (a truncated PNG fails), is at least 1x1 and at
most ``data.image_max_pixels`` pixels (Pillow's decompression-bomb limit stays in force above that), is
one of the formats the decoder reads (PNG, JPEG, WebP, BMP, TIFF) and has one of the modes the decoder
turns into 8-bit grey or colour (:data:`ACCEPTED_MODES`). A file named by several rows is opened once.
An unlabeled pool (``data.unlabeled_path``) is not read here: it is streamed by the pseudo-labelling.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from weakflow.tasks.core.images import ImageProblem, look, resolve, workers

# Pillow's format names -> the name a user knows (MPO is a JPEG with extra frames, DIB a BMP without header)
ACCEPTED_FORMATS = {"PNG": "PNG", "JPEG": "JPEG", "MPO": "JPEG", "WEBP": "WebP", "BMP": "BMP", "DIB": "BMP",
                    "TIFF": "TIFF"}
# Pillow modes the decoder (tasks/core/images.py) turns into 8-bit grey or RGB: 1-bit, grey, grey + alpha,
# palette (+ alpha), RGB(A), CMYK and YCbCr (converted), 32-bit integer, 16-bit (any byte order) and float
# grey (scaled to 8 bits). Refused: modes it cannot convert faithfully (LAB, HSV, RGBX, premultiplied alpha).
ACCEPTED_MODES = ("1", "L", "LA", "P", "PA", "RGB", "RGBA", "CMYK", "YCbCr", "I", "I;16", "I;16B", "I;16L", "F")
SHOWN = 5  # bad pictures listed in a failure line (all of them are in the suite's result)


def judge(path: Path, max_pixels: int) -> str | None:
    """Why the picture at ``path`` cannot be used (a phrase that follows the file name), or None."""
    try:
        facts = look(path, max_pixels)
    except ImageProblem as exc:
        return str(exc)
    except Exception as exc:  # noqa: BLE001 (a plugin's own error on a malformed file: that file's problem, one line)
        return f"does not decode ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"
    if facts.format not in ACCEPTED_FORMATS:
        return f"is a {facts.format or 'unknown'} file; expected one of PNG, JPEG, WebP, BMP, TIFF"
    if facts.mode not in ACCEPTED_MODES:
        return f"has Pillow mode {facts.mode}; expected one of {', '.join(ACCEPTED_MODES)}"
    return None


@dataclass(frozen=True)
class PictureCheck:
    """One split's picture column, judged: ``table`` has a row per data row (``row`` counted from 0, the
    ``file`` as resolved, ``picture_ok`` and the ``problem``, "row N: <file> <why>", None when the picture is
    fine: the text Data Docs list as the unexpected values)."""

    split: str  # train | test
    column: str
    table: pd.DataFrame

    @property
    def bad(self) -> pd.DataFrame:
        return self.table[~self.table["picture_ok"]]

    def found(self) -> str:
        """The failure's "found" text: how many, then the first few rows with file and reason."""
        bad = self.bad
        shown = "; ".join(bad["problem"].head(SHOWN))
        more = f"; and {len(bad) - SHOWN} more" if len(bad) > SHOWN else ""
        return (f"{len(bad)} of {len(self.table)} picture(s) unusable (rows of the file, counted from 0): "
                f"{shown}{more}")


def check_pictures(frames: dict[str, pd.DataFrame], column: str, root: Path | None, max_pixels: int,
                   threads: int | None = None) -> list[PictureCheck]:
    """Judge every picture of ``column`` in each named frame (``{"train": ..., "test": ...}``); frames
    without the column are skipped (the suite reports the missing column). Each distinct file is opened
    once, in ``threads`` threads (default: one per core, at most 8)."""
    cells: dict[str, list] = {split: frame[column].tolist() for split, frame in frames.items() if column in frame}
    paths: dict[str, list[Path | None]] = {split: [_path(c, root) for c in values] for split, values in cells.items()}
    distinct = sorted({p for ps in paths.values() for p in ps if p is not None})
    with ThreadPoolExecutor(max_workers=threads or workers()) as pool:
        verdicts = dict(zip(distinct, pool.map(lambda p: judge(p, max_pixels), distinct, chunksize=32)))
    checks = []
    for split, ps in paths.items():
        problems = [None if p is not None and verdicts[p] is None
                    else f"row {i}: {p} {verdicts[p]}" if p is not None
                    else f"row {i}: empty cell; expected a picture file path" for i, p in enumerate(ps)]
        table = pd.DataFrame({"row": range(len(ps)), "file": [str(p) if p is not None else "" for p in ps],
                              "problem": pd.Series(problems, dtype=object)})
        table["picture_ok"] = table["problem"].isna()
        checks.append(PictureCheck(split, column, table))
    return checks


def _path(cell: object, root: Path | None) -> Path | None:
    if cell is None or cell is pd.NA or (isinstance(cell, float) and cell != cell) or str(cell).strip() == "":
        return None
    return resolve(cell, root)
