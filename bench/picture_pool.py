"""Pseudo-labelling a pool of picture files: pictures/s and peak memory at 10,000 and 100,000 pictures.

The pool is 28x28 grey PNG files made from 400 shipped Fashion-MNIST pictures (synthetic shapes when the
demo data is not installed) by augmentation (shift, flip, brightness, noise) and re-encoding, written once
to ``bench/results/picture-pool/`` (git-ignored) with a Parquet file of their relative paths; the 10,000
pool is the first 10,000 rows of the 100,000. The network is the picture model (``PictureNet``, kind
``resnet``, width 32) after a short training on the 400 base pictures (the throughput does not depend on
how well it is trained; the kept share does a little).

Each measurement runs in a fresh process, so its max RSS is that pool's alone, through the pipeline's own
path: ``scan_pool`` (validate: every path's header, in threads) then ``label_stream`` over
``parquet_chunks`` (pass 1 decodes each byte-bounded chunk in threads and scores it; pass 2 writes the kept
rows without decoding). ``--source frame`` scores the same pictures as in-memory rows (``frame_chunks``, no
decoded cache) instead of a pool file.

    python -m bench.picture_pool                         # 10k and 100k pictures, pool file and in-memory rows
    python -m bench.picture_pool --sizes 2000 --no-write # smoke
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from bench.common import ROOT, publish

RESULTS = ROOT / "bench" / "results"
FOLDER = RESULTS / "picture-pool"
SIDE = 28
BASE = 400
WIDTH = 32
ROW_GROUP = 16_384


def base_pictures() -> tuple[np.ndarray, np.ndarray, str]:
    """(pictures (n, 28, 28) uint8, labels, where they came from)."""
    try:
        from weakflow.tasks.lib.demo_images import read_fashion

        x, y = read_fashion("test")
        return x[:BASE], y[:BASE], f"{BASE} shipped Fashion-MNIST test pictures"
    except Exception:  # noqa: BLE001 - the demo data not installed: shapes will do for a throughput figure
        rng = np.random.default_rng(0)
        yy, xx = np.mgrid[:SIDE, :SIDE]
        x = np.zeros((BASE, SIDE, SIDE), np.uint8)
        y = np.arange(BASE) % 10
        for i in range(BASE):
            cy, cx, r = rng.integers(8, 20), rng.integers(8, 20), 3 + y[i] % 5
            mask = (np.abs(yy - cy) + np.abs(xx - cx) < r) if y[i] >= 5 else ((yy - cy) ** 2 + (xx - cx) ** 2 < r * r)
            x[i][mask] = 60 + 19 * y[i]
        return x, y, f"{BASE} synthetic shapes (Fashion-MNIST demo data not installed)"


def make_pool(rows: int, folder: Path = FOLDER) -> tuple[Path, str]:
    """PNG files ``folder``/pics/<k>/<n>.png made by augmenting the base pictures, and ``folder``/pool-<rows>.parquet
    listing the first ``rows`` of them (relative paths); files already there are kept."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from PIL import Image

    base, _, origin = base_pictures()
    cells = [f"pics/{n // 10_000:03d}/{n:06d}.png" for n in range(rows)]
    pool = folder / f"pool-{rows}.parquet"
    if pool.is_file() and all((folder / c).is_file() for c in cells[:: max(1, rows // 100)]):
        return pool, origin

    def write(n: int) -> None:
        path = folder / cells[n]
        if path.is_file():
            return
        rng = np.random.default_rng(n)
        a = np.roll(base[n % len(base)], tuple(rng.integers(-2, 3, 2)), axis=(0, 1)).astype(np.float32)
        if rng.random() < 0.5:
            a = a[:, ::-1]
        a = a * rng.uniform(0.8, 1.2) + rng.uniform(-20, 20) + rng.normal(0, 6, a.shape)
        Image.fromarray(np.clip(a, 0, 255).astype(np.uint8), "L").save(path, compress_level=rng.integers(1, 9))

    for k in range((rows + 9_999) // 10_000):
        (folder / "pics" / f"{k:03d}").mkdir(parents=True, exist_ok=True)
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as threads:
        list(threads.map(write, range(rows), chunksize=256))
    tmp = pool.with_suffix(".partial")
    pq.write_table(pa.table({"picture": cells}), tmp, row_group_size=ROW_GROUP)
    tmp.rename(pool)
    return pool, origin


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def trained_net(epochs: int = 8):
    """PictureNet (resnet, width 32) trained briefly on the base pictures, in eval mode."""
    import torch
    from torch.nn import functional as F

    from weakflow.tasks.core.models import ModelSpec, build_model

    x, y, _ = base_pictures()
    spec = ModelSpec("resnet", SIDE * SIDE, 10, hidden=(WIDTH,), dropout=0.0, image_shape=(1, SIDE, SIDE))
    torch.manual_seed(0)
    model = build_model(spec)
    xf = x.reshape(len(x), -1).astype(np.float32)
    model.scale.fit(xf, spec.image_shape)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    xt, yt = torch.from_numpy(xf), torch.from_numpy(y.astype(np.int64))
    model.train()
    for _ in range(epochs):
        for idx in torch.randperm(len(xt)).split(64):
            opt.zero_grad()
            F.cross_entropy(model(xt[idx]), yt[idx]).backward()
            opt.step()
    return model.eval()


def measure(pool: Path, source: str) -> dict:
    """In this process: build the network, scan the pool, label it (pool file or in-memory rows)."""
    import pandas as pd
    import pyarrow.parquet as pq
    import torch

    from weakflow.tasks.core.calibration import softmax_t
    from weakflow.tasks.core.images import ImageFeaturizer, ImageFormat, workers
    from weakflow.tasks.core.pseudo import ThresholdPolicy
    from weakflow.tasks.core.pseudo_stream import label_stream
    from weakflow.tasks.core.training import predict_logits
    from weakflow.tasks.lib.data import ROW_ID, SPLIT, InputSchema
    from weakflow.tasks.lib.pool import KeptWriter, chunk_rows_for, frame_chunks, parquet_chunks, scan_pool, \
        score_batch_for

    model = trained_net()
    schema = InputSchema([], [], images=ImageFeaturizer("picture", ImageFormat(SIDE, 1), root=pool.parent))
    batch = score_batch_for(schema)

    def score(x: np.ndarray) -> np.ndarray:
        return softmax_t(predict_logits(model, x, device="cpu", batch_size=batch), 1.0)

    with tempfile.TemporaryDirectory(dir=RESULTS) as tmp:
        if source == "frame":
            cells = pq.read_table(pool).column("picture").to_pylist()
            frame = pd.DataFrame({ROW_ID: np.arange(len(cells), dtype=np.int64), SPLIT: "unlabeled", "picture": cells})
            del cells
        before = rss_mib()
        t0 = time.perf_counter()
        if source == "pool":
            scan_pool(pool, [], images=["picture"], image_root=pool.parent)
        t1 = time.perf_counter()
        chunks = frame_chunks(frame, schema, 65_536) if source == "frame" else parquet_chunks(pool, schema, 65_536)
        writer = KeptWriter(Path(tmp) / "kept.parquet", schema, list(range(10)))
        try:
            result = label_stream(chunks, score, ThresholdPolicy("fixed", threshold=0.5), 10, writer, workdir=tmp)
        finally:
            writer.close()
        t2 = time.perf_counter()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"source": source, "rows": result.rows, "scan_s": t1 - t0, "label_s": t2 - t1, "kept": int(result.kept.sum()),
            "rss_before_mib": before, "peak_rss_mib": peak, "chunk_rows": chunk_rows_for(schema, 65_536),
            "batch": batch, "torch_threads": torch.get_num_threads(), "decode_threads": workers()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, action="append", help="pool sizes (default: 10,000 and 100,000)")
    parser.add_argument("--source", choices=["pool", "frame", "both"], default="both")
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:  # one measurement in a fresh process, so max RSS is this pool's alone
        print(json.dumps(measure(Path(args.child[0]), args.child[1])))
        return
    sizes = sorted(args.sizes or [10_000, 100_000])
    sources = ["pool", "frame"] if args.source == "both" else [args.source]
    FOLDER.mkdir(parents=True, exist_ok=True)
    results, origin = [], ""
    for rows in sizes:
        t = time.perf_counter()
        pool, origin = make_pool(rows)
        print(f"pool of {rows:,} pictures ready in {time.perf_counter() - t:.1f} s", flush=True)
        for source in sources:
            out = subprocess.run([sys.executable, "-m", "bench.picture_pool", "--child", str(pool), source], cwd=ROOT,
                                 capture_output=True, text=True)
            if out.returncode:
                sys.exit(f"measurement failed:\n{out.stderr[-3000:]}")
            r = json.loads(out.stdout.strip().splitlines()[-1])
            print(json.dumps(r), flush=True)
            results.append(r)
    first = results[0]
    lines = ["## Pseudo-labelling a pool of picture files (PictureNet resnet width 32, 28x28 grey PNG)", "",
             f"Pictures: {origin}, augmented (shift, flip, brightness, noise) and re-encoded as PNG files. "
             f"Chunks of {first['chunk_rows']:,} pictures (bounded by bytes), decoded in {first['decode_threads']} "
             f"threads into one reused buffer; scored {first['batch']} at a time on CPU ({first['torch_threads']} torch "
             "threads); policy fixed 0.5. `pool file`: `data.unlabeled_path` (validate's header scan, then pass 1 "
             "decodes and scores, pass 2 writes the kept rows without decoding); `in-memory rows`: the same pictures "
             "as rows of the training table, no decoded cache. Each line is a fresh process; peak = its max RSS, "
             "before = RSS with the network built and the table read.", "",
             "| pictures | source | scan s | pseudo-label s | pictures/s | kept | RSS before MiB | peak RSS MiB |",
             "|---|---|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r['rows']:,} | {'pool file' if r['source'] == 'pool' else 'in-memory rows'} | "
                     f"{r['scan_s']:.1f} | {r['label_s']:.1f} | {r['rows'] / r['label_s']:,.0f} | {r['kept']:,} | "
                     f"{r['rss_before_mib']:.0f} | {r['peak_rss_mib']:.0f} |")
    publish("picture_pool", "\n".join(lines), dry_run=args.no_write)


if __name__ == "__main__":
    main()
