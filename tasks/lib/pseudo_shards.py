"""Sharded pseudo-labelling: the candidates split into shards, each scored and written by a Prefect task.

A shard is a contiguous slice of the in-memory candidate rows or a contiguous range of the pool file's
Parquet row groups (:func:`tasks.core.pseudo_stream.plan_shards`). Pass 1 runs one task per shard that rebuilds
the model from its spec and weights and returns each row's (class, confidence) and the shard's tally
(5 bytes a row: 50 MB for 10 million rows); the thresholds, cap cut-offs and kept rows are then decided
here over all shards in pool order, by the same code as the single-process stream; pass 2 runs one task
per shard that re-reads its rows and writes its kept rows to a part file; the parts are appended in
shard order into one file. So the output equals :func:`tasks.core.pseudo_stream.label_stream`'s row for row.

The tasks go to the flow's task runner (``parallel.runner``: threads here, or Dask workers), or run one
after another outside a flow. With Dask, workers read the pool (and the decoded-picture cache, which travels
as file names) and write the part files themselves, so they must see the same paths (one machine, or a
shared filesystem).
"""

from __future__ import annotations

import copy
import shutil
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from weakflow.tasks.lib.stage import stage_task
from weakflow.tasks.core.calibration import softmax_t
from weakflow.tasks.core.models import ModelSpec, build_model
from weakflow.tasks.core.pseudo import DevSet, StreamResult, ThresholdPolicy
from weakflow.tasks.core.pseudo_stream import (
    RowGroupRange, ShardKeep, ShardScores, emit_kept, plan_shards, score_shard, select_shards, split_rows,
)
from weakflow.tasks.core.training import predict_logits
from weakflow.tasks.lib.data import ROW_ID, SPLIT, InputSchema
from weakflow.tasks.lib.parallel import limit_worker_threads, run_tasks
from weakflow.tasks.lib.pool import Chunks, KeptWriter, concat_parts, frame_chunks, parquet_chunks, row_group_rows


@dataclass
class ShardSource:
    """The rows of one shard: a slice of the in-memory candidates, or row groups of the pool file."""

    schema: InputSchema
    chunk_rows: int
    frame: pd.DataFrame | None = None  # row_id, split and the input columns of in-memory rows
    pool: Path | None = None
    groups: RowGroupRange | None = None
    id_offset: int = 0

    @property
    def rows(self) -> int:
        return len(self.frame) if self.frame is not None else self.groups.rows if self.groups else 0

    def chunks(self) -> Chunks:
        if self.frame is not None:
            return frame_chunks(self.frame, self.schema, self.chunk_rows)
        assert self.pool is not None and self.groups is not None
        g = self.groups
        return parquet_chunks(self.pool, self.schema, self.chunk_rows, id_offset=self.id_offset,
                              row_groups=(g.first_group, g.stop_group), first_row=g.first_row)


def plan_sources(frame: pd.DataFrame, schema: InputSchema, chunk_rows: int, shards: int,
                 pool: Path | None = None, id_offset: int = 0) -> list[ShardSource]:
    """The shards of the candidates, in stream order: the in-memory rows, then the pool's row groups.
    Each part gets a share of ``shards`` in proportion to its rows (at least one if it has any)."""
    pool_sizes = row_group_rows(pool) if pool is not None else []
    total = len(frame) + sum(pool_sizes)
    frame_shards = max(1, round(shards * len(frame) / total)) if total and len(frame) else 0
    pool_shards = max(1, shards - frame_shards) if sum(pool_sizes) else 0
    cols = [ROW_ID, SPLIT, *schema.inputs]
    sources = [ShardSource(schema, chunk_rows, frame=frame.iloc[a:b][cols].reset_index(drop=True))
               for a, b in split_rows(len(frame), frame_shards)] if frame_shards else []
    if pool_shards:
        sources += [ShardSource(schema, chunk_rows, pool=Path(pool), groups=g, id_offset=id_offset)
                    for g in plan_shards(pool_sizes, pool_shards)]
    return sources


@dataclass
class ShardModel:
    """What a worker needs to score: the network's spec and weights (CPU tensors), or the module itself
    when no spec is known, plus the calibration temperature and the device."""

    temperature: float
    device: str = "auto"
    spec: dict | None = None
    state: dict[str, torch.Tensor] | None = None
    module: nn.Module | None = None
    batch_size: int = 8192  # rows per forward pass (pictures: fewer, tasks/lib/pool.py score_batch_for)

    @classmethod
    def of(cls, model: nn.Module, spec: ModelSpec | None, temperature: float, device: str = "auto",
           batch_size: int = 8192) -> ShardModel:
        if spec is None:
            return cls(temperature, device, module=model, batch_size=batch_size)
        state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        return cls(temperature, device, spec=spec.to_dict(), state=state, batch_size=batch_size)

    def scorer(self) -> Callable[[np.ndarray], np.ndarray]:
        if self.module is not None:  # a copy: tasks on threads of one process must not share its mode
            model = copy.deepcopy(self.module)
        else:
            model = build_model(ModelSpec.from_dict(self.spec))
            model.load_state_dict(self.state)
        model.eval()

        def score(x: np.ndarray) -> np.ndarray:
            return softmax_t(predict_logits(model, x, device=self.device, batch_size=self.batch_size),
                             self.temperature)
        return score


@stage_task("pseudo_label_shard_score", limited=False)
def score_shard_task(source: ShardSource, model: ShardModel, num_classes: int, base_threshold: float) -> ShardScores:
    """Pass 1 of one shard: (class, confidence) per row and the shard's tally."""
    limit_worker_threads()
    return score_shard(source.chunks(), model.scorer(), num_classes, base_threshold)


@stage_task("pseudo_label_shard_write", limited=False)
def write_shard_task(source: ShardSource, model: ShardModel, keep: ShardKeep, path: Path, classes: list[int],
                     soft: bool) -> int:
    """Pass 2 of one shard: its kept rows (features re-read, probabilities recomputed for soft output)
    to the part file ``path``; returns the rows written."""
    limit_worker_threads()
    writer = KeptWriter(Path(path), source.schema, classes, soft=soft)
    try:
        emit_kept(source.chunks(), keep, len(classes), writer, score=model.scorer() if soft else None)
    finally:
        writer.close()
    return writer.rows


def sharded_label(sources: list[ShardSource], model: ShardModel, policy: ThresholdPolicy, classes: list[int],
                  writer: KeptWriter, dev: DevSet | None, workdir: Path) -> StreamResult:
    """Both passes over ``sources`` as tasks; the kept rows end in ``writer.path`` (which this writes,
    instead of feeding ``writer``), in stream order. Part files go to a folder under ``workdir`` and are
    removed afterwards."""
    num_classes = len(classes)
    scores = run_tasks(score_shard_task, [(s, model, num_classes, policy.threshold) for s in sources])
    result, keeps = select_shards(scores, policy, num_classes, dev)
    parts_dir = Path(workdir) / f"shards-{uuid.uuid4().hex[:12]}"
    parts_dir.mkdir(parents=True, exist_ok=True)
    try:
        parts = [parts_dir / f"part-{i:05d}.parquet" for i in range(len(sources))]
        written = run_tasks(write_shard_task, [(s, model, k, p, classes, writer.soft)
                                               for s, k, p in zip(sources, keeps, parts)])
        writer.rows = concat_parts(parts, writer.path, writer.schema)
        if writer.rows != sum(written) or writer.rows != int(result.kept.sum()):
            raise RuntimeError(f"sharded pseudo-labelling: shards wrote {sum(written)} rows, the parts hold "
                               f"{writer.rows}, {int(result.kept.sum())} were selected")
    finally:
        shutil.rmtree(parts_dir, ignore_errors=True)
    return result
