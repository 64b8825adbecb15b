"""Pseudo-labelling throughput and memory on a generated pool of up to 10 million rows.

The pool is jittered copies of the demo's digits (64 float32 features), written once to
``bench/results/pool-<rows>.parquet`` (git-ignored) in 256k-row row groups without ever being in memory.
Each measurement runs in a fresh process: the demo MLP (``data.image=false``, a short weak training)
labels the demo candidates plus the pool through the pipeline's own path (``validate`` streams the
pool once for NaN/inf, then ``make_pseudo_labels`` streams it twice and writes kept rows as it goes).
Peak memory is the process's max RSS; "before" is the RSS just before validation, with the demo
loaded and the model trained.

    python -m bench.pool                    # 1M and 10M rows, writes docs/benchmarks.md
    python -m bench.pool --rows 200000 --no-write
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.common import ROOT, publish

RESULTS = ROOT / "bench" / "results"
ROW_GROUP = 262_144


def make_pool(rows: int, path: Path, seed: int = 0, row_group: int = ROW_GROUP) -> Path:
    """Write ``rows`` jittered digits to ``path`` one row group of ``row_group`` rows at a time (bounded memory)."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from sklearn.datasets import load_digits

    if path.is_file() and pq.ParquetFile(path).metadata.num_rows == rows:
        return path
    x = load_digits().data.astype(np.float32)
    names = [f"px_{i}" for i in range(64)]
    rng = np.random.default_rng(seed)
    tmp = path.with_suffix(".partial")
    with pq.ParquetWriter(tmp, pa.schema([(n, pa.float32()) for n in names])) as writer:
        for start in range(0, rows, row_group):
            n = min(row_group, rows - start)
            block = x[rng.integers(0, len(x), n)] + rng.normal(0, 0.5, (n, 64)).astype(np.float32)
            np.clip(block, 0, 16, out=block)
            writer.write_table(pa.Table.from_arrays([pa.array(block[:, i]) for i in range(64)], names=names))
    tmp.rename(path)
    return path


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def measure(pool: Path, overrides: list[str]) -> dict:
    """In this process: train the demo MLP, then validate + pseudo-label with the pool."""
    import torch

    from weakflow.tasks.lib.config import load_config, parse_config
    from weakflow.tasks.lib.pseudo_labels import calibration_of, judges, make_pseudo_labels
    from weakflow.tasks.lib.data import resolve_data_spec
    from weakflow.tasks.validate import load_and_validate
    from weakflow.tasks.weak_labels import make_weak_labels
    from weakflow.tasks import weak_train
    from weakflow.tasks.lib.steps import RunContext

    with tempfile.TemporaryDirectory(dir=RESULTS) as tmp:
        demo = load_config(None, ["data.image=false", "weak_train.epochs=15", f"tracking.workspace={tmp}"])
        data, _ = load_and_validate(demo)
        weak = weak_train.compute(RunContext.of(demo), data, make_weak_labels(data, demo), None, demo.weak_train,
                                  demo.selection, demo.weak_labels.confusion_strength)
        files = resolve_data_spec(demo).model_copy(update={"unlabeled_path": pool}).model_dump(mode="json")
        cfg = parse_config({"data": files, "tracking": {"workspace": tmp}, **_nested(overrides)})
        before = rss_mib()
        t0 = time.perf_counter()
        data, _ = load_and_validate(cfg)  # streams the pool once: NaN/inf check
        t1 = time.perf_counter()
        pseudo = make_pseudo_labels(data, weak.model, cfg.pseudo_label, cfg.parallel, cfg.device, judges(data, weak)[0],
                                    calibration_of(data, weak), Path(tmp) / "pseudo",
                                    soft=cfg.full_train.strategy == "distill")
        t2 = time.perf_counter()
        out_size = pseudo.path.stat().st_size
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"rows": pseudo.candidates, "validate_s": t1 - t0, "label_s": t2 - t1, "kept": pseudo.kept_count,
            "out_mib": out_size / 2**20, "rss_before_mib": before, "peak_rss_mib": peak,
            "threads": torch.get_num_threads(), "policy": cfg.pseudo_label.policy, "chunk_rows": cfg.pseudo_label.chunk_rows}


def _nested(overrides: list[str]) -> dict:
    from weakflow.tasks.lib.config import _apply_override

    raw: dict = {}
    for item in overrides:
        _apply_override(raw, item)
    return raw


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, action="append", help="pool sizes (default: 1M and 10M)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:  # one measurement in a fresh process, so max RSS is this pool's alone
        print(json.dumps(measure(Path(args.child), args.overrides)))
        return
    RESULTS.mkdir(parents=True, exist_ok=True)
    results = []
    for rows in args.rows or [1_000_000, 10_000_000]:
        t = time.perf_counter()
        pool = make_pool(rows, RESULTS / f"pool-{rows}.parquet")
        print(f"pool of {rows:,} rows ready in {time.perf_counter() - t:.1f} s ({pool.stat().st_size / 2**30:.2f} GiB)")
        cmd = [sys.executable, "-m", "bench.pool", "--child", str(pool), *sum((["--set", o] for o in args.overrides), [])]
        out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
        if out.returncode:
            sys.exit(f"measurement failed:\n{out.stderr[-3000:]}")
        r = json.loads(out.stdout.strip().splitlines()[-1])
        r["pool_gib"] = pool.stat().st_size / 2**30
        print(json.dumps(r))
        results.append(r)
    lines = ["## Pseudo-labelling throughput and memory (demo MLP 64-256-256-10, generated pool)", "",
             f"Policy `{results[0]['policy']}`, chunk {results[0]['chunk_rows']:,} rows, {results[0]['threads']} torch "
             "threads. Rows = the pool plus the demo's 1,293 candidates. `validate` streams the pool once (schema, "
             "NaN/inf); pseudo-labelling streams it twice (score, then write the kept rows) and holds 5 bytes per row "
             "in a memory-mapped scratch file. Throughput counts the pseudo-labelling stage alone.", "",
             "| pool rows | file GiB | validate s | pseudo-label s | rows/min | kept | kept file MiB | RSS before MiB | peak RSS MiB |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r['rows'] - 1293:,} | {r['pool_gib']:.2f} | {r['validate_s']:.1f} | {r['label_s']:.1f} | "
                     f"{r['rows'] / r['label_s'] * 60 / 1e6:.2f} M | {r['kept']:,} | {r['out_mib']:.0f} | "
                     f"{r['rss_before_mib']:.0f} | {r['peak_rss_mib']:.0f} |")
    body = "\n".join(lines)
    publish("pool", body, dry_run=args.no_write)


if __name__ == "__main__":
    main()
