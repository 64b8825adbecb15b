"""Pseudo-labelling over a pool of pictures (issue 28 point 4): a Parquet pool whose rows name picture
files is streamed a byte-bounded chunk at a time, each chunk's pictures decoded in threads; the second pass
writes kept rows (with their picture path) without decoding again; a broken picture stops the run with one
line naming the pool file, the row and the picture; in-memory picture rows are chunked the same way.

Real PNG files (Pillow, in tmp_path), the real reader, writer and stream; the network test uses a real
(untrained) PictureNet."""

from __future__ import annotations

import re

import pickle
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from weakflow.tasks.core import images as images_module
from weakflow.tasks.core.images import ImageFeaturizer, ImageFormat, PixelCache, decode_many
from weakflow.tasks.core.pseudo import ThresholdPolicy
from weakflow.tasks.core.pseudo_stream import label_stream
from weakflow.tasks.lib import pool as pool_module
from weakflow.tasks.lib.data import ROW_ID, SPLIT, DataError, InputSchema
from weakflow.tasks.lib.pool import (
    KeptWriter, chain, check_pool_schema, chunk_rows_for, frame_chunks, parquet_chunks, scan_pool, score_batch_for,
    without_pixels,
)

SIDE = 12
FMT = ImageFormat(SIDE, 1)
CLASSES = ["dark", "light"]
POOL_ROWS = 45
POLICY = ThresholdPolicy("fixed", threshold=0.7)


def picture(rng: np.random.Generator, light: bool) -> np.ndarray:
    base = 190 if light else 60
    return np.clip(base + rng.normal(0, 40, (SIDE + 4, SIDE)), 0, 255).astype(np.uint8)  # not square: cropped


@pytest.fixture()
def folder(tmp_path: Path) -> Path:
    """60 small grey PNGs under tmp_path/pics, dark and light, named by number."""
    from PIL import Image

    rng = np.random.default_rng(0)
    (tmp_path / "pics").mkdir()
    for i in range(60):
        Image.fromarray(picture(rng, light=i % 3 == 0), "L").save(tmp_path / "pics" / f"{i:03d}.png")
    return tmp_path


def featurizer(root: Path, cache: PixelCache | None = None) -> ImageFeaturizer:
    return ImageFeaturizer("picture", FMT, root=root, cache=cache)


def write_pool(root: Path, cells: list[str], name: str = "pool.parquet", **extra) -> Path:
    path = root / name
    pq.write_table(pa.table({"picture": cells, **extra}), path, row_group_size=16)
    return path


def pool_cells() -> list[str]:
    return [f"pics/{i:03d}.png" for i in range(POOL_ROWS)]  # relative: they start from data.image_root


def brightness(x: np.ndarray) -> np.ndarray:
    """A scorer reading the pixels: light pictures are class 1, dark class 0, confident far from grey."""
    z = (x[:, -FMT.values:].mean(axis=1) - 128.0) / 20.0
    p1 = 1.0 / (1.0 + np.exp(-z))
    return np.stack([1 - p1, p1], axis=1).astype(np.float32)


def stream(chunks, path: Path, schema: InputSchema, soft: bool = False) -> pd.DataFrame:
    writer = KeptWriter(path, schema, CLASSES, soft=soft)
    try:
        label_stream(chunks, brightness, POLICY, len(CLASSES), writer, workdir=path.parent, soft=soft)
    finally:
        writer.close()
    return pd.read_parquet(path)


def test_picture_pool_streams_in_byte_bounded_chunks_with_the_pixels_a_whole_decode_gives(folder, monkeypatch):
    schema = InputSchema([], [], images=featurizer(folder))
    monkeypatch.setattr(pool_module, "PICTURE_CHUNK_BYTES", 10 * (4 * FMT.values + FMT.values))  # 16 rows (minimum)
    rows = chunk_rows_for(schema, 65_536)
    assert rows == pool_module.MIN_PICTURE_ROWS
    path = write_pool(folder, pool_cells())
    parts = list(parquet_chunks(path, schema, 65_536)())
    assert [len(x) for x, _ in parts] == [16, 16, 13]
    whole, problems = decode_many([folder / c for c in pool_cells()], FMT)
    assert not problems
    x = np.vstack([x for x, _ in parts])
    np.testing.assert_array_equal(x, whole.reshape(POOL_ROWS, -1).astype(np.float32))
    payload = pd.concat([p for _, p in parts], ignore_index=True)
    assert payload["picture"].tolist() == pool_cells() and (payload["source"] == "pool").all()
    assert payload[ROW_ID].tolist() == list(range(POOL_ROWS))
    # the second pass's source: same rows and payloads, features before the pixels (none here)
    light = list(without_pixels(parquet_chunks(path, schema, 65_536))())
    assert [x.shape for x, _ in light] == [(16, 0), (16, 0), (13, 0)]


def test_picture_chunks_are_bounded_by_bytes_not_rows():
    small = InputSchema([], [], images=ImageFeaturizer("p", ImageFormat(28, 1)))
    large = InputSchema(["n"], [], images=ImageFeaturizer("p", ImageFormat(64, 3)))
    assert chunk_rows_for(InputSchema(["n"], []), 65_536) == 65_536  # numbers: the configured rows, as before
    assert 4_000 < chunk_rows_for(small, 65_536) < 20_000
    assert chunk_rows_for(large, 65_536) < 1_000
    assert chunk_rows_for(small, 100) == 100  # a smaller configured chunk still holds
    for schema in (small, large):
        rows = chunk_rows_for(schema, 65_536)
        assert rows * (4 * len(schema.names) + schema.images.fmt.values) <= pool_module.PICTURE_CHUNK_BYTES
    # a forward pass holds a bounded number of pixels too (numbers and text keep the 8,192 rows they had)
    assert score_batch_for(InputSchema(["n"], [])) == 8192
    assert 500 < score_batch_for(small) <= 2_048 and score_batch_for(large) == 42


def test_kept_pool_rows_carry_their_picture_and_one_chunk_or_many_agree(folder, monkeypatch):
    schema = InputSchema([], [], images=featurizer(folder))
    path = write_pool(folder, pool_cells())
    decoded = []
    real = images_module.decode_many

    def counting(sources, fmt, out=None, threads=None):
        decoded.append(len(sources))
        return real(sources, fmt, out=out, threads=threads)

    monkeypatch.setattr(images_module, "decode_many", counting)
    one = stream(parquet_chunks(path, schema, 65_536), folder / "one.parquet", schema)
    assert sum(decoded) == POOL_ROWS  # pass 2 writes the kept rows without decoding the pool again
    monkeypatch.setattr(pool_module, "PICTURE_CHUNK_BYTES", 1)  # the minimum: 16 pictures a chunk
    many = stream(parquet_chunks(path, schema, 65_536), folder / "many.parquet", schema)
    pd.testing.assert_frame_equal(one, many)
    light = [i for i in range(POOL_ROWS) if i % 3 == 0]
    assert set(one.loc[one["pseudo_label"] == "light", ROW_ID]) == set(light)
    assert len(one) > len(light)  # dark ones kept too
    assert one["picture"].tolist() == [pool_cells()[i] for i in one[ROW_ID]]  # the path as the pool wrote it
    soft = stream(parquet_chunks(path, schema, 65_536), folder / "soft.parquet", schema, soft=True)
    pd.testing.assert_frame_equal(soft[one.columns], one)
    np.testing.assert_allclose(soft["soft_light"].to_numpy(), soft["confidence"].where(
        soft["pseudo_label"] == "light", 1 - soft["confidence"]).to_numpy(), rtol=1e-5)


def test_a_broken_picture_in_the_pool_names_the_pool_file_the_row_and_the_picture(folder, monkeypatch):
    monkeypatch.setattr(pool_module, "PICTURE_CHUNK_BYTES", 1)  # 16 rows a chunk: row 37 is the third chunk's
    schema = InputSchema([], [], images=featurizer(folder))
    good = (folder / "pics" / "000.png").read_bytes()
    (folder / "pics" / "cut.png").write_bytes(good[: len(good) // 2])  # header fine, body truncated
    cells = pool_cells()
    cells[37] = "pics/cut.png"
    path = write_pool(folder, cells)
    rows = scan_pool(path, [], images=["picture"], image_root=folder)  # the header scan lets it through...
    assert rows == POOL_ROWS
    with pytest.raises(DataError) as err:  # ...scoring does not
        stream(parquet_chunks(path, schema, 65_536), folder / "out.parquet", schema)
    message = str(err.value)
    assert "\n" not in message
    assert f"data.unlabeled_path: {path} row 37 " in message and "column 'picture'" in message
    assert str(folder / "pics" / "cut.png") in message and "does not decode" in message


@pytest.mark.parametrize("cell, why", [("pics/none.png", "does not exist"), ("notes.txt", "is not a picture"),
                                       ("", "is missing"), ("pipe.png", "is not a regular file")])
def test_the_pool_scan_names_a_missing_or_unreadable_picture_before_any_training(folder, cell, why):
    from tests.conftest import fifo_call

    (folder / "notes.txt").write_text("not a picture\n")
    cells = pool_cells()
    cells[20] = cell
    path = write_pool(folder, cells)
    scan = lambda: scan_pool(path, [], 8, images=["picture"], image_root=folder)  # noqa: E731
    err = fifo_call(folder / cell, scan) if cell == "pipe.png" else pytest.raises(DataError, scan).value
    assert isinstance(err, DataError)
    message = str(err)
    assert message.startswith(f"data.unlabeled_path: {path} row 20 (rows counted from 0): column 'picture' picture ")
    assert why in message and "\n" not in message
    if cell != "notes.txt":  # (decode() of a non-picture raised KeyError 'MPO' under Pillow 13: reported)
        schema = InputSchema([], [], images=featurizer(folder))
        stream = lambda: list(parquet_chunks(path, schema, 65_536)())  # noqa: E731
        err = fifo_call(folder / cell, stream) if cell == "pipe.png" else pytest.raises(DataError, stream).value
        assert isinstance(err, DataError) and re.search("row 20 .*" + why, str(err))  # the stream says the same


def test_the_pool_schema_needs_the_picture_column_as_paths(folder):
    path = write_pool(folder, pool_cells(), n=np.arange(POOL_ROWS, dtype=np.float32))
    assert check_pool_schema(path, ["n"], images=["picture"]) == POOL_ROWS
    with pytest.raises(DataError, match=r"lacks input column\(s\) \['photo'\].*data.image_columns"):
        check_pool_schema(path, ["n"], images=["photo"])
    with pytest.raises(DataError, match=r"picture column\(s\) \['n \(float\)'\] do not hold file paths"):
        check_pool_schema(path, [], images=["n"])
    with pytest.raises(DataError, match=r"lacks input column\(s\) \['photo'\]"):
        parquet_chunks(path, InputSchema([], [], images=ImageFeaturizer("photo", FMT, root=folder)), 100)


def test_in_memory_picture_rows_are_scored_chunk_by_chunk_from_the_cache(folder, monkeypatch):
    cells = [f"pics/{i:03d}.png" for i in range(50, 60)] * 4  # 40 rows
    frame = pd.DataFrame({ROW_ID: np.arange(40, dtype=np.int64), SPLIT: "unlabeled", "n": np.arange(40.0),
                          "picture": cells})
    cache = PixelCache(folder / "cache", FMT)
    assert not cache.warm([folder / c for c in cells])
    schema = InputSchema(["n"], [], images=featurizer(folder, cache))
    expected = schema.x(frame)
    for i in range(50, 60):  # from now on only the cache has them: a chunk reads it, it decodes nothing
        (folder / "pics" / f"{i:03d}.png").unlink()
    monkeypatch.setattr(pool_module, "PICTURE_CHUNK_BYTES", 1)
    parts = list(frame_chunks(frame, schema, 65_536)())
    assert [len(x) for x, _ in parts] == [16, 16, 8]
    np.testing.assert_array_equal(np.vstack([x for x, _ in parts]), expected)
    assert pd.concat([p for _, p in parts])["picture"].tolist() == cells
    side = list(without_pixels(frame_chunks(frame, schema, 65_536))())
    np.testing.assert_array_equal(np.vstack([x for x, _ in side]), frame[["n"]].to_numpy(np.float32))
    bad = frame.assign(picture=["pics/000.png"] * 39 + ["pics/gone.png"])  # not cached, not on disk
    with pytest.raises(DataError, match=r"^data.train_path row_id 39: column 'picture' picture .*gone.png does not exist"):
        list(frame_chunks(bad, schema, 65_536)())


def test_training_rows_then_pool_in_one_stream(folder):
    frame = pd.DataFrame({ROW_ID: np.arange(10, dtype=np.int64), SPLIT: "unlabeled",
                          "picture": [f"pics/{i:03d}.png" for i in range(50, 60)]})
    schema = InputSchema([], [], images=featurizer(folder))
    path = write_pool(folder, pool_cells(), **{ROW_ID: np.arange(100, 100 + POOL_ROWS, dtype=np.int64)})
    both = chain(frame_chunks(frame, schema, 65_536), parquet_chunks(path, schema, 65_536))
    assert hasattr(both, "without_pixels")
    out = stream(both, folder / "out.parquet", schema)
    assert set(out["source"]) == {"train", "pool"}
    assert out.loc[out["source"] == "train", "picture"].tolist() == [f"pics/{i:03d}.png" for i in
                                                                      out.loc[out["source"] == "train", ROW_ID] + 50]


def test_sharded_picture_pool_with_a_picture_network_equals_the_single_stream(folder):
    import torch

    from weakflow.tasks.core.models import ModelSpec, build_model
    from weakflow.tasks.lib.pseudo_shards import ShardModel, plan_sources, sharded_label

    torch.manual_seed(0)
    spec = ModelSpec("resnet", FMT.values, 2, hidden=(8,), dropout=0.0, image_shape=FMT.shape)
    model = build_model(spec)
    cache = PixelCache(folder / "cache", FMT)
    frame = pd.DataFrame({ROW_ID: np.arange(12, dtype=np.int64), SPLIT: "unlabeled",
                          "picture": [f"pics/{i:03d}.png" for i in range(48, 60)]})
    assert not cache.warm([folder / c for c in frame["picture"]])
    schema = InputSchema([], [], images=featurizer(folder, cache))
    path = write_pool(folder, pool_cells())
    shard_model = ShardModel.of(model, spec, 1.0, "cpu", batch_size=7)  # several forward passes per chunk
    score = shard_model.scorer()
    policy = ThresholdPolicy("fixed", threshold=0.0)  # keep all: the labels themselves are compared
    single = KeptWriter(folder / "single.parquet", schema, CLASSES)
    try:
        ref = label_stream(chain(frame_chunks(frame, schema, 65_536), parquet_chunks(path, schema, 65_536,
                                                                                    id_offset=12)),
                           score, policy, 2, single, workdir=folder)
    finally:
        single.close()
    sources = plan_sources(frame, schema, 65_536, 3, path, id_offset=12)
    assert len(sources) == 3
    sharded = KeptWriter(folder / "sharded.parquet", schema, CLASSES)
    res = sharded_label(sources, shard_model, policy, CLASSES, sharded, None, folder)
    pd.testing.assert_frame_equal(pd.read_parquet(single.path), pd.read_parquet(sharded.path))
    assert res.rows == ref.rows == 12 + POOL_ROWS
    # a shard sent to a Dask worker carries the decoded cache's file names, not its pixels, and reads the same rows
    shipped = pickle.loads(pickle.dumps(sources[0]))  # (the size of what is sent: tests/code/test_images.py)
    assert shipped.schema.images.cache._maps == {} and sources[0].schema.images.cache is cache
    np.testing.assert_array_equal(np.vstack([x for x, _ in shipped.chunks()()]),
                                  np.vstack([x for x, _ in sources[0].chunks()()]))


def picture_data(folder: Path):
    """PipelineData of 5 gold and 10 unlabeled picture rows (decoded cache warmed) with the pool as
    data.unlabeled_path, and an untrained PictureNet with its spec."""
    import torch

    from weakflow.tasks.core.models import ModelSpec, build_model
    from weakflow.tasks.lib.config import FilesData
    from weakflow.tasks.lib.data import PipelineData

    torch.manual_seed(1)
    spec = ModelSpec("resnet", FMT.values, 2, hidden=(8,), dropout=0.0, image_shape=FMT.shape)
    model = build_model(spec).eval()
    train = pd.DataFrame({ROW_ID: np.arange(15, dtype=np.int64), SPLIT: ["gold"] * 5 + ["unlabeled"] * 10,
                          "label": ["dark", "light", "dark", "light", "dark"] + [None] * 10,
                          "picture": [f"pics/{i:03d}.png" for i in range(45, 60)], "fold": [0, 1, 2, 0, 1] + [-1] * 10})
    cache = PixelCache(folder / "cache", FMT)
    assert not cache.warm([folder / c for c in train["picture"]])
    pool = write_pool(folder, pool_cells())
    files = FilesData(train_path=folder / "train.parquet", test_path=folder / "test.parquet", image_columns=["picture"],
                      image_root=folder, classes=CLASSES, unlabeled_path=pool)
    data = PipelineData(train=train, test=train.iloc[:0], spec=files, classes=CLASSES,
                        schema=InputSchema([], [], images=featurizer(folder, cache)))
    return data, model, spec


def label_pictures(data, model, spec, parallel, out: Path, soft: bool = False):
    from weakflow.tasks.lib.config import PseudoLabelConfig
    from weakflow.tasks.lib.pseudo_labels import Calibration, Judge, make_pseudo_labels

    section = PseudoLabelConfig(policy="fixed", threshold=0.0)  # keep every row: all labels are compared
    return make_pseudo_labels(data, model, section, parallel, "cpu", Judge(1.0, None, None), Calibration(1.0, {}, {}),
                              out, soft=soft, spec=spec)


def test_make_pseudo_labels_on_picture_rows_and_a_picture_pool_single_and_sharded_agree(folder):
    """The pseudo_label stage's own entry: in-memory unlabeled picture rows (from the decoded cache) then the
    pool file (decoded a chunk at a time); one stream or two shards, the same kept rows, each with its path."""
    import torch

    from weakflow.tasks.lib.config import ParallelConfig

    data, model, spec = picture_data(folder)
    runs = [label_pictures(data, model, spec, ParallelConfig(shards=shards), folder / f"out{shards}")
            for shards in (1, 2)]
    one, two = (pd.read_parquet(r.path) for r in runs)
    pd.testing.assert_frame_equal(one, two)
    assert len(one) == 10 + POOL_ROWS and runs[0].candidates == 10 + POOL_ROWS
    pool_rows = one[one["source"] == "pool"]
    assert pool_rows[ROW_ID].tolist() == list(range(15, 15 + POOL_ROWS))  # after the training file's ids
    assert pool_rows["picture"].tolist() == pool_cells()
    x = np.vstack([decode_many([folder / c for c in data.train["picture"][5:]], FMT)[0],
                   decode_many([folder / c for c in pool_cells()], FMT)[0]]).reshape(10 + POOL_ROWS, -1)
    with torch.no_grad():
        expected = model(torch.from_numpy(x.astype(np.float32))).argmax(1).numpy()
    assert one["pseudo_label"].tolist() == [CLASSES[k] for k in expected]


@pytest.mark.slow
def test_picture_pool_on_a_local_dask_cluster_equals_the_single_stream(prefect_harness, folder):
    """Shards of picture rows and of the picture pool scored and written by Prefect tasks on Dask worker
    processes (each decoding its own pictures: the cache stays behind), soft probabilities included."""
    import dask
    from distributed import LocalCluster
    from prefect import flow

    from weakflow.tasks.lib.config import ParallelConfig
    from weakflow.tasks.lib.parallel import with_runner

    data, model, spec = picture_data(folder)
    single = label_pictures(data, model, spec, ParallelConfig(), folder / "single", soft=True)
    with dask.config.set({"distributed.worker.daemon": False}), \
            LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        parallel = ParallelConfig(runner="dask", address=cluster.scheduler_address, shards=3)

        @flow(name="dask-picture-pool-test")
        def on_dask(out: Path):
            return label_pictures(data, model, spec, parallel, out, soft=True)

        sharded = with_runner(on_dask, parallel)(folder / "dask")
        ran = sum(tp.state_counts["memory"] for prefix, tp in cluster.scheduler.task_prefixes.items()
                  if prefix == "score_shard_task")
    assert ran == 3
    a, b = pd.read_parquet(single.path), pd.read_parquet(sharded.path)
    soft = ["soft_dark", "soft_light"]
    pd.testing.assert_frame_equal(a.drop(columns=soft), b.drop(columns=soft))
    np.testing.assert_allclose(a[soft].to_numpy(), b[soft].to_numpy(), atol=1e-6)
