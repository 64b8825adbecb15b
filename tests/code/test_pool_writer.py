"""Pseudo-labelling's disk path end to end: Parquet pool in -> label_stream -> KeptWriter -> Parquet out.

The writer used to take its schema from the first chunk it saw; a first chunk that kept nothing typed
``split``/``source`` as null and the next chunk with rows failed to write. These tests go through the
real reader and writer with a pool of several chunks whose first chunks keep nothing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from weakflow.tasks.core.pseudo import ThresholdPolicy
from weakflow.tasks.core.pseudo_stream import label_stream
from weakflow.tasks.lib.data import ROW_ID, SPLIT, DataError, InputSchema
from weakflow.tasks.lib.pool import SOURCE, KeptWriter, chain, frame_chunks, parquet_chunks

FEATURES = ["f0", "f1", "f2"]
SCHEMA = InputSchema(FEATURES, [])  # numeric inputs only
CLASSES = [3, 5, 7]  # class values differ from their indices, so a mix-up shows
CHUNK = 40


def softmax(x: np.ndarray) -> np.ndarray:
    z = np.exp(4.0 * (x - x.max(axis=1, keepdims=True)))
    return (z / z.sum(axis=1, keepdims=True)).astype(np.float32)


def unsure(rng: np.random.Generator, n: int) -> np.ndarray:
    """Rows whose top probability stays far below any threshold used here."""
    return rng.normal(scale=0.01, size=(n, len(FEATURES))).astype(np.float32)


@pytest.fixture()
def pool(tmp_path: Path) -> tuple[Path, np.ndarray, np.ndarray]:
    """A 203-row Parquet pool (6 chunks of 40): the first 50 rows are unsure, the rest mixed."""
    rng = np.random.default_rng(0)
    x = np.vstack([unsure(rng, 50), rng.normal(scale=1.5, size=(153, len(FEATURES))).astype(np.float32)])
    ids = np.arange(1000, 1000 + len(x), dtype=np.int64)[::-1].copy()  # the file's own ids, not positions
    path = tmp_path / "pool.parquet"
    pq.write_table(pa.table({ROW_ID: ids, **{c: x[:, i] for i, c in enumerate(FEATURES)}}), path, row_group_size=64)
    return path, x, ids


def train_frame(rng: np.random.Generator, n: int = 30) -> pd.DataFrame:
    """In-memory candidates from the training file, all unsure: they keep nothing."""
    x = unsure(rng, n)
    return pd.DataFrame({ROW_ID: np.arange(n, dtype=np.int64), SPLIT: "unlabeled",
                         **{c: x[:, i] for i, c in enumerate(FEATURES)}})


def write(chunks, path: Path, policy: ThresholdPolicy, soft: bool) -> pd.DataFrame:
    """What make_pseudo_labels does with its candidates: stream, write, close, read back."""
    writer = KeptWriter(path, SCHEMA, CLASSES, soft=soft)
    try:
        res = label_stream(chunks, softmax, policy, len(CLASSES), writer, workdir=path.parent, soft=soft)
    finally:
        writer.close()
    out = pd.read_parquet(path)
    assert len(out) == writer.rows == res.kept.sum()
    return out


POLICIES = [ThresholdPolicy("fixed", threshold=0.9), ThresholdPolicy("per_class", threshold=0.95, floor=0.6),
            ThresholdPolicy("fixed", threshold=0.8, max_per_class=20)]


@pytest.mark.parametrize("soft", [False, True])
@pytest.mark.parametrize("policy", POLICIES, ids=["fixed", "per_class", "capped"])
def test_pool_in_chunks_whose_first_chunk_keeps_nothing_writes_what_one_piece_writes(tmp_path, pool, policy, soft):
    path, x, ids = pool
    rng = np.random.default_rng(1)
    frame = train_frame(rng)
    assert softmax(x[:CHUNK]).max(axis=1).max() < 0.5 and softmax(frame[FEATURES].to_numpy()).max(axis=1).max() < 0.5

    one = write(chain(frame_chunks(frame, SCHEMA, 10**6), parquet_chunks(path, SCHEMA, 10**6)),
                tmp_path / "one.parquet", policy, soft)
    # train rows come first (30 rows in chunks of 40: one chunk that keeps nothing), then 6 pool chunks
    many = write(chain(frame_chunks(frame, SCHEMA, CHUNK), parquet_chunks(path, SCHEMA, CHUNK)),
                 tmp_path / "many.parquet", policy, soft)
    pool_only = write(parquet_chunks(path, SCHEMA, CHUNK), tmp_path / "pool_only.parquet", policy, soft)

    assert 0 < len(one) < len(x)
    pd.testing.assert_frame_equal(many, one)
    pd.testing.assert_frame_equal(pool_only, one)  # the unsure train rows add nothing
    assert many[SOURCE].eq("pool").all() and many[SPLIT].eq("pool").all()

    # the written rows, recomputed directly: ids, features, label and confidence of each kept row
    probs = softmax(x)
    at = pd.Series(np.arange(len(ids)), index=ids).loc[many[ROW_ID]].to_numpy()
    assert np.array_equal(many[FEATURES].to_numpy(np.float32), x[at])
    assert many["pseudo_label"].tolist() == [CLASSES[i] for i in probs[at].argmax(axis=1)]
    assert np.array_equal(many["confidence"].to_numpy(), probs[at].max(axis=1))
    if policy.kind == "fixed" and policy.max_per_class is None:
        assert sorted(at) == np.flatnonzero(probs.max(axis=1) >= np.float32(policy.threshold)).tolist()
    if soft:
        assert np.allclose(many[[f"soft_{c}" for c in CLASSES]].to_numpy(), probs[at])
    else:
        assert not any(c.startswith("soft_") for c in many.columns)


def test_written_types_do_not_depend_on_which_chunk_kept_rows(tmp_path, pool):
    path, *_ = pool
    write(parquet_chunks(path, SCHEMA, CHUNK), tmp_path / "some.parquet", POLICIES[0], soft=True)
    none = write(parquet_chunks(path, SCHEMA, CHUNK), tmp_path / "none.parquet",
                 ThresholdPolicy("fixed", threshold=0.5, max_per_class=0), soft=True)
    assert len(none) == 0
    some_schema = pq.read_schema(tmp_path / "some.parquet")
    none_schema = pq.read_schema(tmp_path / "none.parquet")
    assert some_schema.equals(none_schema, check_metadata=False)
    assert some_schema.field(SPLIT).type == pa.string() and some_schema.field(SOURCE).type == pa.string()
    assert some_schema.field(ROW_ID).type == pa.int64() and some_schema.field("confidence").type == pa.float32()


def test_soft_output_without_probabilities_and_clashing_feature_names_raise(tmp_path):
    writer = KeptWriter(tmp_path / "o.parquet", SCHEMA, CLASSES, soft=True)
    ids = pd.DataFrame({ROW_ID: [1], SPLIT: ["pool"], SOURCE: ["pool"]})
    with pytest.raises(ValueError, match="probabilities"):
        writer(np.zeros((1, 3), np.float32), ids, np.array([True]), np.array([0]), np.array([0.9], np.float32), None)
    with pytest.raises(DataError, match="used twice"):
        KeptWriter(tmp_path / "o.parquet", InputSchema(["f0", "confidence"], []), CLASSES)


def test_pool_rows_without_ids_are_numbered_after_the_training_rows(tmp_path):
    """Positions would repeat the training file's 0..n-1 ids; the offset keeps every id one row's."""
    x = np.random.default_rng(1).normal(size=(25, len(FEATURES))).astype(np.float32)
    path = tmp_path / "no_ids.parquet"
    pq.write_table(pa.table({c: x[:, i] for i, c in enumerate(FEATURES)}), path, row_group_size=10)
    ids = np.concatenate([frame[ROW_ID].to_numpy() for _, frame in parquet_chunks(path, SCHEMA, 10, id_offset=500)()])
    assert ids.tolist() == list(range(500, 525))
