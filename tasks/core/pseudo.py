"""Pseudo-label selection: which of a model's calibrated predictions become training labels.

Three threshold policies, all giving one threshold per class:

- ``fixed``: the same threshold for every class.
- ``per_class``: class-adaptive (FlexMatch, Zhang et al. 2021): a class whose predictions clear the base
  threshold less often than the best-learnt class gets a lower threshold,
  ``tau_c = t * beta_c / (2 - beta_c)`` with ``beta_c = n_c / max n``, never below ``floor``; so hard or
  rare classes are not starved.
- ``target_precision``: per class, the lowest threshold whose estimated precision on the gold dev split
  reaches ``p`` (counting at least ``min_support`` dev rows); a class where no threshold qualifies falls
  back to the base threshold.

An optional ``max_per_class`` keeps only each class's most confident rows (ties broken by row order).
:func:`label_stream` applies a policy to a pool given as re-iterable chunks in two passes, so a pool
of any size is labelled with memory bounded by the chunk size; one chunk or many give the same result.
:func:`plan_shards`, :func:`score_shard`, :func:`select_shards` and :func:`emit_kept` are the same two
passes cut into shards (contiguous row ranges) that can run in parallel, with the same result.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

PolicyName = Literal["fixed", "per_class", "target_precision"]
HIST_BINS = 40


@dataclass(frozen=True)
class ThresholdPolicy:
    kind: PolicyName = "fixed"
    threshold: float = 0.9  # fixed: the threshold; per_class: the base; target_precision: the fallback
    floor: float = 0.5  # per_class and target_precision never go below this
    target_precision: float = 0.95
    min_support: int = 3
    max_per_class: int | None = None

    def __post_init__(self) -> None:
        for name in ("threshold", "floor", "target_precision"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {value}")
        if self.max_per_class is not None and self.max_per_class < 0:
            raise ValueError(f"max_per_class must be >= 0 or None, got {self.max_per_class}")


@dataclass(frozen=True)
class PseudoSelection:
    labels: np.ndarray  # predicted class per row (all rows)
    confidence: np.ndarray  # max probability per row (all rows)
    keep: np.ndarray  # bool mask

    @property
    def kept(self) -> int:
        return int(self.keep.sum())


def predictions(probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(argmax class, top probability) per row of a (rows, classes) probability table."""
    probs = np.asarray(probs)
    if probs.ndim != 2:
        raise ValueError(f"probabilities must be a 2-D (rows, classes) array, got shape {probs.shape}")
    if len(probs) == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
    return probs.argmax(axis=1).astype(np.int64), probs.max(axis=1).astype(np.float32)


def select_confident(probs: np.ndarray, threshold: float) -> PseudoSelection:
    """Argmax labels of ``probs`` (N, C), kept where the top probability is >= ``threshold``."""
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must be in [0, 1], got {threshold}")
    labels, confidence = predictions(probs)
    return PseudoSelection(labels, confidence, confidence >= np.float32(threshold))


def precision_on(selection: PseudoSelection, true_labels: np.ndarray) -> float | None:
    """Share of kept pseudo-labels equal to ``true_labels``; None when nothing was kept."""
    if selection.kept == 0:
        return None
    return float((selection.labels[selection.keep] == np.asarray(true_labels)[selection.keep]).mean())


def per_class_precision(labels: np.ndarray, confidence: np.ndarray, true: np.ndarray, thresholds: np.ndarray
                        ) -> tuple[np.ndarray, np.ndarray]:
    """Per predicted class: precision of rows at or above that class's threshold (NaN when none) and
    how many rows that is."""
    num_classes = len(thresholds)
    thresholds = np.asarray(thresholds, dtype=np.float32)
    keep = np.asarray(confidence, dtype=np.float32) >= thresholds[labels] if len(labels) else np.zeros(0, dtype=bool)
    support = np.bincount(labels[keep], minlength=num_classes)
    right = np.bincount(labels[keep & (labels == np.asarray(true))], minlength=num_classes)
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(support > 0, right / np.maximum(support, 1), np.nan)
    return precision, support


def flexmatch_thresholds(policy: ThresholdPolicy, counts_at_base: np.ndarray) -> np.ndarray:
    """``per_class``: tau_c = t * beta_c / (2 - beta_c), beta_c = n_c / max n, floored."""
    counts = np.asarray(counts_at_base, dtype=np.float64)
    if counts.max(initial=0) == 0:
        return np.full(len(counts), policy.threshold)
    beta = counts / counts.max()
    return np.maximum(policy.floor, policy.threshold * beta / (2.0 - beta))


def target_precision_thresholds(policy: ThresholdPolicy, dev_labels: np.ndarray, dev_confidence: np.ndarray,
                                dev_true: np.ndarray, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Per class, the lowest dev confidence t >= floor such that dev rows predicted as that class with
    confidence >= t are at least ``target_precision`` right and number at least ``min_support``.
    Returns (thresholds, fell_back) where ``fell_back`` marks classes that got the base threshold."""
    thresholds = np.full(num_classes, policy.threshold, dtype=np.float64)
    fell_back = np.ones(num_classes, dtype=bool)
    for c in range(num_classes):
        mine = dev_labels == c
        conf = dev_confidence[mine]
        right = (np.asarray(dev_true)[mine] == c)
        order = np.argsort(-conf, kind="stable")
        conf, right = conf[order], right[order]
        prec = np.cumsum(right) / np.arange(1, len(right) + 1)
        for i in range(len(conf) - 1, -1, -1):  # lowest candidate first
            if conf[i] < policy.floor or (i + 1 < len(conf) and conf[i + 1] == conf[i]):
                continue  # below the floor, or not the last of a tie (a threshold keeps all ties)
            if i + 1 >= policy.min_support and prec[i] >= policy.target_precision:
                thresholds[c], fell_back[c] = float(conf[i]), False
                break
    return thresholds, fell_back


@dataclass
class DevSet:
    """Calibrated gold-dev predictions: what ``target_precision`` estimates precision on."""

    labels: np.ndarray
    confidence: np.ndarray
    true: np.ndarray


@dataclass
class StreamResult:
    thresholds: np.ndarray  # (C,)
    candidates: np.ndarray  # rows predicted as each class
    kept: np.ndarray  # rows kept per class
    cap_cutoff: np.ndarray  # (C,) confidence of the last row a cap let through (NaN: no cap bound)
    fell_back: np.ndarray  # (C,) bool: target_precision could not be met on dev
    histogram: np.ndarray  # (HIST_BINS,) confidence counts over every row
    rows: int = 0


Scorer = Callable[[np.ndarray], np.ndarray]  # feature chunk -> calibrated probabilities
# emit(features, payload, keep, labels, confidence, probs): one call per chunk in pass 2
Emit = Callable[[np.ndarray, Any, np.ndarray, np.ndarray, np.ndarray, "np.ndarray | None"], None]


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
    caller can write kept rows incrementally. With ``soft`` the kept rows' full probability vectors are
    recomputed in pass 2 and passed as ``probs`` (else None). Memory: one chunk plus 5-8 bytes per row on
    disk (the label width grows with the class count, see :func:`label_dtype`).

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
            labels, conf = _score_chunk(score, x, num_classes)
            scratch.append(labels, conf)
            tally.add(labels, conf, policy.threshold)
        labels_all, conf_all = scratch.open()
        thresholds, fell_back = decide_thresholds(policy, tally.at_base, num_classes, dev)
        cutoff, ties_allowed = _cap_cutoffs(labels_all, conf_all, thresholds, policy.max_per_class, num_classes)
        kept = np.zeros(num_classes, dtype=np.int64)
        start = 0
        for x, payload in chunks():
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
        return StreamResult(thresholds, tally.counts, kept, cutoff, fell_back, tally.histogram, rows=start)


@dataclass
class Tally:
    """Pass 1's counts over some rows: predicted per class, predicted at or above the base threshold per
    class (what ``per_class`` adapts from), and the confidence histogram. Shards' tallies add up."""

    counts: np.ndarray
    at_base: np.ndarray
    histogram: np.ndarray

    @classmethod
    def empty(cls, num_classes: int) -> Tally:
        return cls(np.zeros(num_classes, dtype=np.int64), np.zeros(num_classes, dtype=np.int64),
                   np.zeros(HIST_BINS, dtype=np.int64))

    def add(self, labels: np.ndarray, conf: np.ndarray, base_threshold: float) -> None:
        num_classes = len(self.counts)
        self.counts += np.bincount(labels, minlength=num_classes)
        self.at_base += np.bincount(labels[conf >= base_threshold], minlength=num_classes)
        self.histogram += np.histogram(conf, bins=HIST_BINS, range=(0.0, 1.0))[0]

    def __add__(self, other: Tally) -> Tally:
        return Tally(self.counts + other.counts, self.at_base + other.at_base, self.histogram + other.histogram)


def _score_chunk(score: Scorer, x: np.ndarray, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    probs = score(x)
    if np.ndim(probs) != 2 or np.shape(probs)[1] != num_classes or len(probs) != len(x):
        raise ValueError(f"score returned shape {np.shape(probs)} for {len(x)} rows; expected "
                         f"({len(x)}, {num_classes}): one probability per class in use")
    return predictions(probs)


def decide_thresholds(policy: ThresholdPolicy, at_base: np.ndarray, num_classes: int, dev: DevSet | None
                      ) -> tuple[np.ndarray, np.ndarray]:
    """The policy's threshold per class (float32, the confidences' precision: 0.9 keeps 0.9) and which
    classes fell back to the base threshold, from pass 1's ``at_base`` counts over every row."""
    fell_back = np.zeros(num_classes, dtype=bool)
    if policy.kind == "fixed":
        thresholds = np.full(num_classes, policy.threshold)
    elif policy.kind == "per_class":
        thresholds = flexmatch_thresholds(policy, at_base)
    else:
        if dev is None:
            raise ValueError("target_precision needs the gold dev split's predictions")
        thresholds, fell_back = target_precision_thresholds(policy, dev.labels, dev.confidence, dev.true, num_classes)
    return thresholds.astype(np.float32), fell_back


def keep_mask(labels: np.ndarray, conf: np.ndarray, thresholds: np.ndarray, cutoff: np.ndarray,
              ties_allowed: np.ndarray, cap: int | None) -> np.ndarray:
    """Which of these rows are kept: at or above their class's threshold and, under a cap, at or above
    its cut-off, where only the first ``ties_allowed[c]`` rows exactly at the cut-off stay. Rows must
    come in pool order; ``ties_allowed`` is used up in place, so consecutive blocks give the same mask
    as one block of all rows."""
    keep = conf >= thresholds[labels]
    if cap is not None:
        keep &= conf >= cutoff[labels]
        for c in np.unique(labels[keep & (conf == cutoff[labels])]):
            tied = np.flatnonzero(keep & (labels == c) & (conf == cutoff[c]))
            drop = tied[ties_allowed[c]:]  # the first ``ties_allowed`` ties in row order stay
            ties_allowed[c] = max(0, ties_allowed[c] - len(tied))
            keep[drop] = False
    return keep


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
        labels, conf = _score_chunk(score, x, num_classes)
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
    thresholds, fell_back = decide_thresholds(policy, tally.at_base, num_classes, dev)
    dtype = label_dtype(num_classes)
    labels_all = np.concatenate([np.zeros(0, dtype), *(s.labels for s in shards)])
    conf_all = np.concatenate([np.zeros(0, np.float32), *(s.confidence for s in shards)])
    cutoff, ties_allowed = _cap_cutoffs(labels_all, conf_all, thresholds, policy.max_per_class, num_classes)
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
    return StreamResult(thresholds, tally.counts, kept, cutoff, fell_back, tally.histogram, rows=rows), keeps


def emit_kept(chunks: Callable[[], Iterable[tuple[np.ndarray, Any]]], keep: ShardKeep, num_classes: int, emit: Emit,
              score: Scorer | None = None) -> int:
    """Pass 2 over one shard: re-read its chunks and ``emit`` each with its kept rows marked, as
    :func:`label_stream` does (``score``: recompute the kept rows' probabilities for soft output).
    Returns the rows kept; a shard that yields other rows than pass 1 raises ``ValueError``."""
    start = 0
    for x, payload in chunks():
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


def _cap_cutoffs(labels: np.ndarray, conf: np.ndarray, thresholds: np.ndarray, cap: int | None, num_classes: int,
                 block: int = 1 << 20) -> tuple[np.ndarray, np.ndarray]:
    """Per class, the confidence of the cap-th most confident eligible row and how many rows at exactly
    that confidence still fit. Streams the scratch arrays in blocks, holding at most ``cap`` values per class."""
    cutoff = np.full(num_classes, -np.inf)
    ties = np.full(num_classes, np.iinfo(np.int64).max, dtype=np.int64)
    if cap is None:
        return cutoff, ties
    top = [np.zeros(0, dtype=np.float32) for _ in range(num_classes)]
    for start in range(0, len(labels), block):
        lab = np.asarray(labels[start : start + block])
        cf = np.asarray(conf[start : start + block])
        ok = cf >= thresholds[lab]
        for c in range(num_classes):
            merged = np.concatenate([top[c], cf[ok & (lab == c)]])
            top[c] = -np.partition(-merged, cap - 1)[:cap] if len(merged) > cap else merged
    for c in range(num_classes):
        if cap == 0:
            cutoff[c], ties[c] = np.inf, 0
        elif len(top[c]) >= cap:
            cutoff[c] = float(top[c].min())
            ties[c] = cap - int((top[c] > cutoff[c]).sum())
    return cutoff, ties


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
