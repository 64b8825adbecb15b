"""Training on a picture table held in memory against one streamed from the decoded cache: pictures/s and memory.

The table is N 28x28 grey pictures made from the 12,000 shipped Fashion-MNIST training pictures by random shifts
(up to 2 px) and flips, written once as the decoded cache holds pictures (a uint8 ``.npy`` file, memory-mapped)
under ``bench/results/picture-stream/`` (git-ignored). Each measurement runs in a fresh process, through the
project's own path: the picture network (``resnet``, width 64, augmentation, as the demo trains it) has its input
scaling fitted on the whole table (:meth:`Standardize.fit`, block by block), then a :class:`Trainer` trains one
epoch over the same 20,000 rows drawn from the N (batch 32). The modes differ only in what the trainer is given:

- ``resident``: the dense float32 matrix :meth:`InputSchema.x` makes (what a table within ``loader.resident_mb``
  gets);
- ``stream-w1`` / ``stream-w0``: a :class:`PictureRows` over the cache file, read batch by batch by one DataLoader
  worker process / in the training process (``loader.workers``).

Peak RSS is the kernel's high-water mark (it counts the cache file's pages the process touched, which the kernel
may drop); peak private memory is the largest ``RssAnon`` sampled every 20 ms (what the process holds itself); the
worker's peak RSS is its own high-water mark (a forked copy, mostly pages shared with the trainer).

    python -m bench.picture_stream                    # 100,000 and 400,000 rows, 3 modes each
    python -m bench.picture_stream --sizes 20000 --no-write
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

from bench.common import ROOT, publish

FOLDER = ROOT / "bench" / "results" / "picture-stream"
TRAIN_ROWS = 20_000
BATCH = 32
MODES = ("resident", "stream-w1", "stream-w0")


def make_table(rows: int, folder: Path = FOLDER) -> Path:
    """``folder``/pictures-<rows>.npy: shipped pictures shifted and flipped at random (written once)."""
    from weakflow.tasks.lib.demo_images import read_fashion

    path = folder / f"pictures-{rows}.npy"
    if path.is_file():
        return path
    folder.mkdir(parents=True, exist_ok=True)
    base, _ = read_fashion("train")
    rng = np.random.default_rng(0)
    tmp = path.with_suffix(".tmp")
    out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(rows, 1, 28, 28))
    for start in range(0, rows, 10_000):
        k = min(10_000, rows - start)
        pics = base[rng.integers(0, len(base), k)].copy()
        flip = rng.random(k) < 0.5
        pics[flip] = pics[flip][:, :, ::-1]
        for i, (dy, dx) in enumerate(rng.integers(-2, 3, (k, 2))):
            pics[i] = np.roll(pics[i], (dy, dx), axis=(0, 1))
        out[start:start + k, 0] = pics
    out.flush()
    del out
    tmp.rename(path)
    return path


def _status(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def measure(path: Path, mode: str) -> dict:
    """In this process: the table as ``mode`` gives it, the scaling fit, one epoch over TRAIN_ROWS rows."""
    import torch

    from weakflow.tasks.core.models import ModelSpec, build_model
    from weakflow.tasks.core.picture_rows import PictureRows
    from weakflow.tasks.core.training import Trainer, TrainSettings

    peak = {"anon": 0.0}
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(0.02):
            peak["anon"] = max(peak["anon"], _status("RssAnon"))

    threading.Thread(target=sample, daemon=True).start()
    cache = np.load(path, mmap_mode="r")
    rows = len(cache)
    t0 = time.perf_counter()
    if mode == "resident":
        x = np.asarray(cache).reshape(rows, -1).astype(np.float32)
    else:
        x = PictureRows(np.zeros((rows, 0), np.float32), (path,), np.zeros(rows, np.int32), np.arange(rows),
                        (1, 28, 28), workers=int(mode[-1]))
    table_s = time.perf_counter() - t0
    spec = ModelSpec(kind="resnet", num_features=784, num_classes=10, hidden=(64,), image_shape=(1, 28, 28),
                     augment=(0.125, 1.0, 0.1))
    torch.manual_seed(0)
    model = build_model(spec)
    t0 = time.perf_counter()
    model.scale.fit(x, spec.image_shape)
    scale_s = time.perf_counter() - t0
    targets = np.random.default_rng(1).integers(0, 10, rows)
    subset = np.sort(np.random.default_rng(2).choice(rows, TRAIN_ROWS, replace=False))
    trainer = Trainer(model, x, targets, TrainSettings(epochs=1, batch_size=BATCH, lr=1e-3, device="cpu"), rows=subset)
    t0 = time.perf_counter()
    trainer.epoch(0)
    epoch_s = time.perf_counter() - t0
    stop.set()
    worker = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # a finished DataLoader worker's peak
    return {"rows": rows, "mode": mode, "table_s": table_s, "scale_s": scale_s, "epoch_s": epoch_s,
            "pics_per_s": TRAIN_ROWS / epoch_s, "peak_rss_mib": _status("VmHWM"), "peak_private_mib": peak["anon"],
            "worker_peak_rss_mib": worker,
            "threads": torch.get_num_threads()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 400_000])
    parser.add_argument("--no-write", action="store_true", help="print the section; leave docs/benchmarks.md alone")
    parser.add_argument("--measure", nargs=2, metavar=("PATH", "MODE"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.measure:
        print(json.dumps(measure(Path(args.measure[0]), args.measure[1])))
        return
    results = []
    for rows in args.sizes:
        path = make_table(rows)
        for mode in MODES:
            out = subprocess.run([sys.executable, "-m", "bench.picture_stream", "--measure", str(path), mode],
                                 cwd=ROOT, capture_output=True, text=True, check=True)
            results.append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(results[-1], flush=True)
    lines = [
        "## Pictures: training on a table held in memory or streamed from the decoded cache", "",
        f"28x28 grey pictures (shipped Fashion-MNIST, shifted and flipped), the demo's picture network (resnet, width "
        f"64, augmentation); input scaling fitted on the whole table, then one epoch over the same {TRAIN_ROWS:,} rows "
        f"drawn from it (batch {BATCH}, CPU). Each line is a fresh process.", "",
        "| rows in the table | how training reads it | scaling fit (s) | pictures/s | peak RSS (MiB) | peak private "
        "memory (MiB) | worker's peak RSS (MiB) |", "|---|---|---|---|---|---|---|",
    ]
    names = {"resident": "in memory (float32)", "stream-w1": "streamed, 1 DataLoader worker",
             "stream-w0": "streamed, no worker process"}
    for r in results:
        worker = f"{r['worker_peak_rss_mib']:,.0f}" if r["mode"] == "stream-w1" else "–"
        lines.append(f"| {r['rows']:,} | {names[r['mode']]} | {r['scale_s']:.1f} | {r['pics_per_s']:,.0f} | "
                     f"{r['peak_rss_mib']:,.0f} | {r['peak_private_mib']:,.0f} | {worker} |")
    lines += ["", "The streamed table's private memory stays flat as the table grows; the in-memory one grows by its "
              "float32 size. On these 2 cores a worker process costs pace (it competes with the training's two "
              "threads), hence no worker by default on 2 cores (`loader.workers`)."]
    publish("picture_stream", "\n".join(lines), args.no_write)


if __name__ == "__main__":
    main()
