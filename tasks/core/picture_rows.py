"""A picture table that stays on disk: the training rows of a table too large to hold as float32 in memory.

The decoded cache (:class:`tasks.core.images.PixelCache`) keeps every picture as resized uint8 in a
memory-mapped ``.npy`` file. :class:`PictureRows` is a row selection of such a table: the features before
the pixels (numbers, text features) in memory, and for each row where its pixels lie on disk. Indexing it
gives another selection (nothing is read); :meth:`PictureRows.parts` reads the rows' pixels; ``np.asarray``
makes the dense float32 matrix :meth:`tasks.core.schema.InputSchema.x` would have made, so code that needs
a matrix of a few rows still gets one. The trainer reads a streamed table batch by batch in DataLoader
workers (:mod:`tasks.core.training`). Torch-free.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


def memory_bytes() -> int:
    """The machine's physical memory (POSIX); 16 GiB where the system does not say."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (AttributeError, ValueError, OSError):
        return 16 << 30


@dataclass(frozen=True)
class StreamPolicy:
    """When a training table streams: above ``resident_bytes`` of float32 features (0: always), read in
    ``workers`` DataLoader worker processes (0: in the training process)."""

    resident_bytes: int
    workers: int

    @classmethod
    def resolve(cls, resident_mb: int | None, workers: int | None) -> StreamPolicy:
        """``loader.*`` settings as a policy: by default a quarter of the machine's memory, and no worker process on
        2 cores or fewer (there a worker took 10% off the training's pace: both cores already run its math,
        ``bench.picture_stream``), else one per core beyond two, at most 4."""
        if resident_mb is None:
            budget = memory_bytes() // 4
        else:
            budget = resident_mb << 20
        if workers is None:
            workers = max(0, min(4, (os.cpu_count() or 2) - 2))
        return cls(int(budget), int(workers))

    def streams(self, rows: int, values: int) -> bool:
        return rows * values * 4 > self.resident_bytes

    def describe(self, rows: int, values: int) -> str:
        """How a training table of ``rows`` x ``values`` features is read, said in the run."""
        size, budget = rows * values * 4 / 2**20, self.resident_bytes / 2**20
        if not self.streams(rows, values):
            return f"in memory: {size:,.0f} MiB of float32 features, within loader.resident_mb = {budget:,.0f}"
        readers = (f"by {self.workers} DataLoader worker(s)" if self.workers else
                   "in the training process (loader.workers = 0)")
        return (f"streamed from the decoded cache {readers}: {size:,.0f} MiB of float32 features, above "
                f"loader.resident_mb = {budget:,.0f}")


@dataclass
class PictureRows:
    """Rows of a picture table: ``side`` (rows, f) float32 in memory, the pixels in ``files`` (``which`` file,
    at row ``at``), each ``shape`` = (channels, size, size) uint8. Behaves as the (rows, f + pixels) float32
    matrix where code asks for one (``len``, ``shape``, ``np.asarray``), without holding it."""

    side: np.ndarray
    files: tuple[Path, ...]
    which: np.ndarray
    at: np.ndarray
    pixel_shape: tuple[int, int, int]
    workers: int = 0
    _maps: dict[int, np.ndarray] = field(default_factory=dict, repr=False, compare=False)

    dtype = np.dtype(np.float32)
    ndim = 2

    def __post_init__(self) -> None:
        if not (len(self.side) == len(self.which) == len(self.at)):
            raise ValueError(f"side rows {len(self.side)}, file indices {len(self.which)} and positions "
                             f"{len(self.at)} differ")

    def __len__(self) -> int:
        return len(self.at)

    @property
    def pixel_values(self) -> int:
        return int(np.prod(self.pixel_shape))

    @property
    def shape(self) -> tuple[int, int]:
        return len(self), self.side.shape[1] + self.pixel_values

    def __getitem__(self, key: slice | np.ndarray | list[int]) -> PictureRows:
        """A selection of rows (a slice, positions or a boolean mask); reads nothing."""
        if isinstance(key, tuple):
            raise TypeError("PictureRows selects rows only; use np.asarray(rows) for a matrix")
        key = key if isinstance(key, slice) else np.asarray(key)
        if isinstance(key, np.ndarray) and key.dtype != bool:
            key = key.astype(np.int64, copy=False)
        return PictureRows(self.side[key], self.files, self.which[key], self.at[key], self.pixel_shape,
                           self.workers, self._maps)

    def pixels(self) -> np.ndarray:
        """(rows, channels, size, size) uint8, read from the cache files (in file order, then put back)."""
        out = np.empty((len(self), *self.pixel_shape), np.uint8)
        for f in np.unique(self.which):
            mine = np.flatnonzero(self.which == f)
            at = self.at[mine]
            order = np.argsort(at, kind="stable")  # ascending offsets: the reads go forward through the file
            out[mine[order]] = self._map(int(f))[at[order]]
        return out

    def parts(self) -> tuple[np.ndarray, np.ndarray]:
        """(the side features as float32, the pixels as uint8): what a worker hands the trainer."""
        return np.ascontiguousarray(self.side, dtype=np.float32), self.pixels()

    def __array__(self, dtype: np.dtype | None = None, copy: bool | None = None) -> np.ndarray:
        side, pixels = self.parts()
        dense = np.hstack([side, pixels.reshape(len(self), -1).astype(np.float32)])
        return dense if dtype is None else dense.astype(dtype, copy=False)

    def _map(self, f: int) -> np.ndarray:
        if f not in self._maps:
            self._maps[f] = np.load(self.files[f], mmap_mode="r")
        return self._maps[f]

    def __dask_tokenize__(self) -> tuple:
        """The selection, not the pixels: Dask tokenizes a task's arguments, and would hash each mapped file."""
        return (type(self).__name__, tuple(map(str, self.files)), self.pixel_shape, self.workers, self.side,
                self.which, self.at)

    def __getstate__(self) -> dict:  # a worker started by spawn maps the files itself
        state = dict(self.__dict__)
        state["_maps"] = {}
        return state


def blocks(x: np.ndarray | PictureRows, rows: int) -> Iterator[np.ndarray]:
    """``x`` as dense float32 blocks of at most ``rows`` rows, one at a time (a streamed table is read block by
    block)."""
    for start in range(0, len(x), rows):
        yield np.asarray(x[start:start + rows], dtype=np.float32)
