"""Pseudo-labelling a pool of any size: the decisions of :mod:`tasks.core.pseudo` applied in two passes.

:func:`label_stream` takes the pool as re-iterable chunks: pass 1 scores every chunk and keeps only
(class, confidence) per row in a memory-mapped scratch file; the thresholds and any cap are decided
over all rows; pass 2 re-reads the chunks and hands each to the caller with its kept rows marked. Memory
is bounded by the chunk size, and one chunk or many give the same result.

:func:`plan_shards`, :func:`score_shard`, :func:`select_shards` and :func:`emit_kept` are the same two
passes cut into shards (contiguous row ranges) that can run in parallel, with the same result.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from weakflow.tasks.core.pseudo import (
    DevSet, Emit, Scorer, StreamResult, Tally, ThresholdPolicy, cap_cutoffs, decide_thresholds, keep_mask,
    score_chunk,
)


def label_stream(
    chunks: Callable[[], Iterable[tuple[np.ndarray, Any]]],
    score: Scorer,
    policy: ThresholdPolicy,
    num_classes: int,
    emit: Emit,
    dev: DevSet | None = None,
    workdir: str | Path | None = None,
    soft: bool = False,
) -> StreamResult:
    """Label a pool given as ``chunks()`` -> iterable of (features, payload), called twice.

    Pass 1 scores every chunk, keeps (class, confidence) per row in a memory-mapped scratch file and
    counts; then the policy's thresholds and any cap's cut-off are decided; pass 2 re-reads the
    features (no scoring) and calls ``emit(features, payload, keep, labels, confidence, probs)`` per chunk so the
    caller can write kept rows incrementally (a source with a ``without_pixels`` attribute, a picture pool's,
    is read through it in pass 2 unless ``soft``: ``features`` then stop before the pixels). With ``soft``
    the kept rows' full probability vectors are recomputed in pass 2 and passed as ``probs`` (else None).
    Memory: one chunk plus 5-8 bytes per row on disk (the label width grows with the class count, see
    :func:`label_dtype`).

    Pass 2 is matched to pass 1 by row position, so ``chunks()`` must yield the same rows both times; a
    source that yields a different number of rows the second time raises ``ValueError`` (pass 2 stops
    as soon as it runs past pass 1's count, so no row is emitted with another row's label).

    :func:`score_shard`, :func:`select_shards` and :func:`emit_kept` are the same two passes split by
    shard (contiguous row ranges scored in parallel); they share every decision below with this function.
    """
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        scratch = _Scratch(Path(tmp), label_dtype(num_classes))
        tally = Tally.empty(num_classes)
        for x, _ in chunks():
            labels, conf = score_chunk(score, x, num_classes)
            scratch.append(labels, conf)
            tally.add(labels, conf, policy.threshold)
        labels_all, conf_all = scratch.open()
        thresholds, uncertified = decide_thresholds(policy, tally.at_base, num_classes, dev)
        cutoff, ties_allowed = cap_cutoffs(labels_all, conf_all, thresholds, policy.max_per_class, num_classes)
        kept = np.zeros(num_classes, dtype=np.int64)
        start = 0
        for x, payload in _second_pass(chunks, soft)():
            if start + len(x) > scratch.rows:
                raise ValueError(_pass_mismatch(scratch.rows, f"at least {start + len(x)}"))
            labels = np.asarray(labels_all[start : start + len(x)])
            conf = np.asarray(conf_all[start : start + len(x)])
            start += len(x)
            keep = keep_mask(labels, conf, thresholds, cutoff, ties_allowed, policy.max_per_class)
            kept += np.bincount(labels[keep], minlength=num_classes)
            probs = (score(x[keep]) if keep.any() else np.zeros((0, num_classes), np.float32)) if soft else None
            emit(x, payload, keep, labels.astype(np.int64), conf, probs)
        del labels_all, conf_all
        if start != scratch.rows:
            raise ValueError(_pass_mismatch(scratch.rows, str(start)))
        return StreamResult(thresholds, tally.counts, kept, cutoff, uncertified, tally.histogram, rows=start)


# --- the same two passes, split into shards (contiguous row ranges) scored in parallel ------------------


@dataclass(frozen=True)
class RowGroupRange:
    """One shard of a Parquet pool: row groups ``[first_group, stop_group)``, whose first row is the
    file's row ``first_row``, ``rows`` rows in all."""

    first_group: int
    stop_group: int
    first_row: int
    rows: int


def plan_shards(row_group_rows: list[int] | np.ndarray, shards: int) -> list[RowGroupRange]:
    """Split a file's row groups, in order, into at most ``shards`` contiguous ranges of about equal rows.

    A row group goes to the shard its middle row falls in when the rows are cut into ``shards`` equal
    parts, so every group is in exactly one range, ranges follow file order, and none is empty (fewer
    groups than shards give fewer shards)."""
    if shards < 1:
        raise ValueError(f"shards must be >= 1, got {shards}")
    sizes = np.asarray(row_group_rows, dtype=np.int64)
    total = int(sizes.sum())
    if total == 0:
        return []
    before = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    owner = np.minimum((2 * before + sizes) * shards // (2 * total), shards - 1)  # middle row's shard
    ranges = []
    for k in np.unique(owner):
        groups = np.flatnonzero(owner == k)
        first, stop = int(groups[0]), int(groups[-1]) + 1
        ranges.append(RowGroupRange(first, stop, int(before[first]), int(sizes[first:stop].sum())))
    return ranges


def split_rows(rows: int, parts: int) -> list[tuple[int, int]]:
    """``[start, stop)`` of ``parts`` contiguous, near-equal, non-empty slices of ``rows`` rows."""
    parts = max(1, min(parts, rows))
    edges = np.linspace(0, rows, parts + 1).round().astype(int)
    return [(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:]) if b > a]


@dataclass
class ShardScores:
    """Pass 1 of one shard: (class, confidence) per row in shard order, and its tally."""

    labels: np.ndarray
    confidence: np.ndarray
    tally: Tally

    @property
    def rows(self) -> int:
        return len(self.labels)


@dataclass
class ShardKeep:
    """What pass 2 of one shard writes: positions (within the shard) of the kept rows, their class
    index and confidence, and the shard's row count (to check pass 2 reads the same rows)."""

    positions: np.ndarray  # int64, ascending
    labels: np.ndarray  # int64 class index
    confidence: np.ndarray  # float32
    rows: int


def score_shard(chunks: Callable[[], Iterable[tuple[np.ndarray, Any]]], score: Scorer, num_classes: int,
                base_threshold: float) -> ShardScores:
    """Pass 1 over one shard: the same per-row (class, confidence) and tally as :func:`label_stream`.
    Holds 5-8 bytes per row of the shard in memory (not its features)."""
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    dtype = label_dtype(num_classes)
    tally = Tally.empty(num_classes)
    labels_parts, conf_parts = [np.zeros(0, dtype)], [np.zeros(0, np.float32)]
    for x, _ in chunks():
        labels, conf = score_chunk(score, x, num_classes)
        tally.add(labels, conf, base_threshold)
        labels_parts.append(labels.astype(dtype))
        conf_parts.append(conf.astype(np.float32))
    return ShardScores(np.concatenate(labels_parts), np.concatenate(conf_parts), tally)


def select_shards(shards: list[ShardScores], policy: ThresholdPolicy, num_classes: int, dev: DevSet | None = None
                  ) -> tuple[StreamResult, list[ShardKeep]]:
    """Thresholds, cap cut-offs and the kept rows from every shard's pass 1, in shard order: the decision
    :func:`label_stream` makes for the same rows in one stream (shards' tallies add up; the cap and its
    ties are decided over all rows in pool order)."""
    tally = Tally.empty(num_classes)
    for s in shards:
        tally = tally + s.tally
    thresholds, uncertified = decide_thresholds(policy, tally.at_base, num_classes, dev)
    dtype = label_dtype(num_classes)
    labels_all = np.concatenate([np.zeros(0, dtype), *(s.labels for s in shards)])
    conf_all = np.concatenate([np.zeros(0, np.float32), *(s.confidence for s in shards)])
    cutoff, ties_allowed = cap_cutoffs(labels_all, conf_all, thresholds, policy.max_per_class, num_classes)
    del labels_all, conf_all
    kept = np.zeros(num_classes, dtype=np.int64)
    keeps = []
    for s in shards:  # in pool order: the cap's ties go to the first rows
        keep = keep_mask(s.labels, s.confidence, thresholds, cutoff, ties_allowed, policy.max_per_class)
        positions = np.flatnonzero(keep)
        labels = s.labels[positions].astype(np.int64)
        kept += np.bincount(labels, minlength=num_classes)
        keeps.append(ShardKeep(positions, labels, s.confidence[positions], s.rows))
    rows = sum(s.rows for s in shards)
    return StreamResult(thresholds, tally.counts, kept, cutoff, uncertified, tally.histogram, rows=rows), keeps


def emit_kept(chunks: Callable[[], Iterable[tuple[np.ndarray, Any]]], keep: ShardKeep, num_classes: int, emit: Emit,
              score: Scorer | None = None) -> int:
    """Pass 2 over one shard: re-read its chunks and ``emit`` each with its kept rows marked, as
    :func:`label_stream` does (``score``: recompute the kept rows' probabilities for soft output).
    Returns the rows kept; a shard that yields other rows than pass 1 raises ``ValueError``."""
    start = 0
    for x, payload in _second_pass(chunks, score is not None)():
        if start + len(x) > keep.rows:
            raise ValueError(_pass_mismatch(keep.rows, f"at least {start + len(x)}"))
        lo, hi = np.searchsorted(keep.positions, [start, start + len(x)])
        mask = np.zeros(len(x), dtype=bool)
        mask[keep.positions[lo:hi] - start] = True
        labels = np.zeros(len(x), dtype=np.int64)
        conf = np.zeros(len(x), dtype=np.float32)
        labels[mask], conf[mask] = keep.labels[lo:hi], keep.confidence[lo:hi]
        start += len(x)
        probs = None
        if score is not None:
            probs = score(x[mask]) if mask.any() else np.zeros((0, num_classes), np.float32)
        emit(x, payload, mask, labels, conf, probs)
    if start != keep.rows:
        raise ValueError(_pass_mismatch(keep.rows, str(start)))
    return len(keep.positions)


def _second_pass(chunks: Callable[[], Iterable[tuple[np.ndarray, Any]]], scores: bool
                 ) -> Callable[[], Iterable[tuple[np.ndarray, Any]]]:
    """The chunks pass 2 reads: when it scores nothing (no soft output) and the source offers them, its
    ``without_pixels`` chunks (the same rows and payloads, the features before any picture's pixels), so a
    picture pool is decoded once, not twice (tasks/lib/pool.py)."""
    return chunks if scores else getattr(chunks, "without_pixels", chunks)


def _pass_mismatch(first: int, second: str) -> str:
    return (f"label_stream: chunks() yielded {first} rows in pass 1 but {second} in pass 2; the chunk "
            "source must be re-iterable and yield the same rows each time (a generator, or a file changed "
            "between the passes, is not)")


def label_dtype(num_classes: int) -> np.dtype:
    """The narrowest unsigned integer that holds every class index, so the scratch cannot overflow."""
    for dtype in (np.uint8, np.uint16, np.uint32):
        if num_classes - 1 <= np.iinfo(dtype).max:
            return np.dtype(dtype)
    raise ValueError(f"{num_classes} classes do not fit a 32-bit label")


class _Scratch:
    """Append-only (class, confidence) per row on disk; reopened as memory maps for pass 2."""

    def __init__(self, folder: Path, dtype: np.dtype) -> None:
        self.paths = (folder / "labels.bin", folder / "conf.bin")
        self.files = [open(p, "wb") for p in self.paths]  # noqa: SIM115 - closed in open()
        self.dtype = np.dtype(dtype)
        self.rows = 0

    def append(self, labels: np.ndarray, conf: np.ndarray) -> None:
        if len(labels) and (labels.min() < 0 or labels.max() > np.iinfo(self.dtype).max):
            raise ValueError(f"class index {int(labels.min())}..{int(labels.max())} does not fit "
                             f"the {self.dtype} scratch")
        self.files[0].write(labels.astype(self.dtype).tobytes())
        self.files[1].write(conf.astype(np.float32).tobytes())
        self.rows += len(labels)

    def open(self) -> tuple[np.ndarray, np.ndarray]:
        for f in self.files:
            f.close()
        if self.rows == 0:
            return np.zeros(0, dtype=self.dtype), np.zeros(0, dtype=np.float32)
        return (np.memmap(self.paths[0], dtype=self.dtype, mode="r", shape=(self.rows,)),
                np.memmap(self.paths[1], dtype=np.float32, mode="r", shape=(self.rows,)))


def chunked(x: np.ndarray, chunk_rows: int, payload: Any = None) -> Callable[[], Iterator[tuple[np.ndarray, Any]]]:
    """An in-memory array as re-iterable chunks; the payload is the slice's start row."""
    def gen() -> Iterator[tuple[np.ndarray, Any]]:
        for start in range(0, len(x), chunk_rows):
            yield x[start : start + chunk_rows], start if payload is None else payload
    return gen
