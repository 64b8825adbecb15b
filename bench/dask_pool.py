"""Sharded pseudo-labelling of a generated pool on Dask: speed-up with 1, 2 and 4 workers.

The pool is bench/pool.py's (jittered digits, 64 float32 features, ``bench/results/pool-<rows>.parquet``,
262,144-row row groups). Each measurement runs in a fresh process: the demo MLP (``data.image=false``,
15 epochs) labels the demo candidates plus the pool with ``make_pseudo_labels``:

* ``no dask``: the single-process stream (``parallel.shards=1``; torch on every core);
* ``dask N``: a Prefect flow on ``DaskTaskRunner`` over a ``LocalCluster`` of N worker processes with
  one thread each (``parallel.runner=dask``, ``n_workers=N``), the candidates in ``--shards`` shards.

The time is the pseudo-labelling alone, inside the flow (the cluster is up before it starts; its start
is reported apart). Speed-up is against 1 worker; efficiency = speed-up / min(workers, cores), so on a
2-core machine 4 workers can reach at most 2x. Peak memory: the driver's max RSS and the largest worker's.
Every run's kept set is checked equal to the baseline's (row ids and labels).

    python -m bench.dask_pool                          # 10M rows, writes docs/benchmarks.md
    python -m bench.dask_pool --rows 200000 --no-write # smoke (65,536-row row groups so it shards)
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from bench.common import ROOT, publish
from bench.pool import RESULTS, ROW_GROUP, make_pool

WORKERS = [1, 2, 4]


def measure(pool: Path, workers: int, shards: int) -> dict:
    """In this process: train the demo MLP, then pseudo-label the demo candidates plus ``pool``."""
    import pandas as pd
    import torch

    from weakflow.tasks.lib.config import load_config, parse_config
    from weakflow.tasks.validate import load_and_validate
    from weakflow.tasks.weak_labels import make_weak_labels
    from weakflow.tasks import weak_train
    from weakflow.tasks.lib.steps import RunContext

    with tempfile.TemporaryDirectory(dir=RESULTS) as tmp:
        demo = load_config(None, ["data.image=false", "weak_train.epochs=15", f"tracking.workspace={tmp}"])
        data, _ = load_and_validate(demo)
        weak = weak_train.compute(RunContext.of(demo), data, make_weak_labels(data, demo), None, demo.weak_train,
                                  demo.selection, demo.weak_labels.confusion_strength)
        data = replace(data, spec=data.spec.model_copy(update={"unlabeled_path": pool}))
        parallel = {"shards": 1} if workers == 0 else {"runner": "dask", "n_workers": workers, "shards": shards}
        cfg = parse_config({"data": data.spec.model_dump(mode="json"), "tracking": {"workspace": tmp},
                            "parallel": parallel})
        out = Path(tmp) / "pseudo"
        timing: dict = {}
        if workers == 0:
            t = time.perf_counter()
            pseudo = refit_set(data, weak, cfg, out)
            timing["label_s"] = time.perf_counter() - t
            worker_peak = 0.0
        else:
            pseudo, worker_peak, timing = on_dask(data, weak, cfg, out)
        kept = pd.read_parquet(pseudo.path, columns=["row_id", "pseudo_label"])
        digest = hashlib.sha256(kept["row_id"].to_numpy().tobytes() + kept["pseudo_label"].to_numpy().tobytes())
    return {"workers": workers, "rows": pseudo.candidates, "kept": pseudo.kept_count, "kept_sha": digest.hexdigest()[:16],
            "driver_peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "worker_peak_mib": worker_peak,
            "threads": torch.get_num_threads(), "shards": cfg.parallel.resolved_shards, **timing}


def refit_set(data, weak, cfg, out: Path):
    """The refit weak model's pseudo set (judged on every gold row's out-of-fold prediction)."""
    from weakflow.tasks.lib.pseudo_labels import calibration_of, judges, make_pseudo_labels

    return make_pseudo_labels(data, weak.model, cfg.pseudo_label, cfg.parallel, cfg.device, judges(data, weak)[0],
                              calibration_of(data, weak), out, soft=cfg.full_train.strategy == "distill",
                              spec=weak.spec)


def _warm() -> None:
    import weakflow.tasks.lib.pseudo_shards  # noqa: F401 - torch, pyarrow, prefect's task engine


def on_dask(data, weak, cfg, out: Path):
    """make_pseudo_labels inside a flow on the configured Dask runner; (result, worker peak MiB, timings)."""
    from prefect import flow
    from prefect.context import FlowRunContext

    from weakflow.tasks.lib.parallel import with_runner

    @flow(name="bench-dask-pool")
    def label():
        client = FlowRunContext.get().task_runner.client  # the cluster is up once the flow runs
        client.wait_for_workers(cfg.parallel.n_workers)
        client.run(_warm)  # imports on every worker, so the timing is the labelling, not torch's import
        t = time.perf_counter()
        pseudo = refit_set(data, weak, cfg, out)
        label_s = time.perf_counter() - t
        peaks = client.run(lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
        return pseudo, max(peaks.values()), label_s

    t = time.perf_counter()
    pseudo, peak, label_s = with_runner(label, cfg.parallel)()
    return pseudo, peak, {"label_s": label_s, "flow_s": time.perf_counter() - t}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=10_000_000, help="pool rows (default 10M)")
    parser.add_argument("--shards", type=int, default=40, help="shards under Dask (default 40: about a row group each on 10M)")
    parser.add_argument("--workers", type=int, nargs="+", default=WORKERS)
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--child-workers", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:  # one measurement in a fresh process, so max RSS is this run's alone
        print("RESULT " + json.dumps(measure(Path(args.child), args.child_workers, args.shards)))
        return
    RESULTS.mkdir(parents=True, exist_ok=True)
    row_group = ROW_GROUP if args.rows >= 2_000_000 else 65_536
    name = f"pool-{args.rows}.parquet" if row_group == ROW_GROUP else f"pool-{args.rows}-rg{row_group}.parquet"
    t = time.perf_counter()
    pool = make_pool(args.rows, RESULTS / name, row_group=row_group)
    print(f"pool of {args.rows:,} rows ready in {time.perf_counter() - t:.1f} s ({pool.stat().st_size / 2**30:.2f} GiB)",
          flush=True)
    env = {**os.environ, "DASK_LOGGING__DISTRIBUTED": "warning", "PREFECT_LOGGING_LEVEL": "WARNING"}
    results = []
    for workers in [0, *args.workers]:
        cmd = [sys.executable, "-m", "bench.dask_pool", "--child", str(pool), "--child-workers", str(workers),
               "--shards", str(args.shards)]
        # output to a file, not a pipe: a process the child leaves behind cannot hold this one up
        with tempfile.TemporaryFile("w+") as log:
            code = subprocess.run(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, text=True, env=env).returncode
            log.seek(0)
            text = log.read()
        lines = [line for line in text.splitlines() if line.startswith("RESULT ")]
        if code or not lines:
            sys.exit(f"measurement with {workers} worker(s) failed:\n{text[-3000:]}")
        r = json.loads(lines[-1][len("RESULT "):])
        print(json.dumps(r), flush=True)
        results.append(r)
    base = results[0]
    one = next((r for r in results if r["workers"] == 1), None)
    cores = os.cpu_count() or 1
    lines = [f"## Sharded pseudo-labelling on Dask ({args.rows:,}-row pool, demo MLP 64-256-256-10)", "",
             f"Policy `target_precision`; {cores} cores. `no dask`: the single-process stream "
             f"(`parallel.shards=1`, {base['threads']} torch threads). `dask N`: `parallel.runner=dask`, "
             f"`n_workers=N`, 1 thread each, {results[-1]['shards']} shards (contiguous row-group ranges, "
             "each a Prefect task per pass). Time = the pseudo-labelling alone (cluster already up; `flow s` "
             "adds its start and stop). Speed-up vs 1 worker; efficiency = speed-up / min(workers, cores). "
             "Every run's kept set equals the baseline's (row ids and labels, sha256).", "",
             "| run | pseudo-label s | flow s | rows/min | speed-up vs 1 worker | efficiency | vs no dask | "
             "driver peak MiB | worker peak MiB | same kept set |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        w = r["workers"]
        speed = one["label_s"] / r["label_s"] if one and w else None
        lines.append(
            f"| {'no dask' if w == 0 else f'dask {w}'} | {r['label_s']:.1f} | {r.get('flow_s', r['label_s']):.1f} | "
            f"{r['rows'] / r['label_s'] * 60 / 1e6:.2f} M | {f'{speed:.2f}x' if speed else '-'} | "
            f"{f'{speed / min(w, cores):.0%}' if speed else '-'} | {base['label_s'] / r['label_s']:.2f}x | "
            f"{r['driver_peak_mib']:.0f} | {r['worker_peak_mib']:.0f} | "
            f"{'yes' if r['kept_sha'] == base['kept_sha'] and r['kept'] == base['kept'] else 'NO'} |")
    publish("dask-pool", "\n".join(lines), dry_run=args.no_write, module="dask_pool")


if __name__ == "__main__":
    main()
