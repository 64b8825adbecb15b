"""The cost curve: the pipeline's training time against one network's, as the weak rows grow.

Generated data as a user with many weak rows has it: 8 classes, 20 features (scikit-learn's
``make_classification``, 12 informative), three annotators that each confuse their own pair of classes (half
the time on that pair) and are right on 90% of the other rows, abstaining on 10%; 400 gold rows, 2,000 test
rows, every other training row weakly labelled. Each run is a fresh process running the pipeline's own
composition (``bench.plain.run_config``, the stages of `weakflow run` without MLflow and Prefect) with the
defaults; ``--set`` adds overrides. Beside it, in its own process, one bare PyTorch network (the weak stage's
MLP 256-256, 60 epochs, batch 128, AdamW; ``bench.loop.bare_loop``) trains on the same training rows.

Per size: wall per stage, the training stages' total (gold_only + weak_train + full_train) over the bare
network, peak RSS, final and gold-only test accuracy, and the choices the gold made (epochs, temperatures, the
evidence race, the candidate shipped), so two settings can be compared choice by choice.

    python -m bench.scale                      # 2k, 20k, 100k and 1M rows, seed 0 (about 1.5 hours on 2 cores)
    python -m bench.scale --quick              # 2k and 20k
    python -m bench.scale --sizes 100000 --seeds 0 1 2 --compare selection.fold_rows=all
    python -m bench.scale --sizes 100000 --compare parallel.runner=dask --compare parallel.n_workers=2
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
import pandas as pd

from bench.common import ROOT, publish

CLASSES = 8
GOLD, TEST = 400, 2_000
TRAINING = ("gold_only", "weak_train", "full_train")


def make_data(rows: int, seed: int, folder: Path) -> Path:
    """train.parquet, test.parquet and config.yaml for ``rows`` training rows; returns the config's path."""
    import yaml
    from sklearn.datasets import make_classification

    x, y = make_classification(n_samples=rows + TEST, n_features=20, n_informative=12, n_redundant=4,
                               n_classes=CLASSES, n_clusters_per_class=1, class_sep=1.0, random_state=seed)
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(x.astype(np.float32), columns=[f"f{i}" for i in range(20)])
    votes = {}
    for a in range(3):
        pair = (2 * a, 2 * a + 1)
        vote = y.copy()
        on_pair = np.isin(y, pair)
        swap = on_pair & (rng.random(len(y)) < 0.5)
        vote[swap] = np.where(y[swap] == pair[0], pair[1], pair[0])
        wrong = ~on_pair & (rng.random(len(y)) < 0.1)
        vote[wrong] = rng.integers(0, CLASSES, wrong.sum())
        votes[f"annotator_{a}"] = np.where(rng.random(len(y)) < 0.1, -1, vote)
    frame = frame.assign(**votes, label=y.astype(float))
    test, train = frame.iloc[:TEST].copy(), frame.iloc[TEST:].copy()
    gold = rng.choice(len(train), GOLD, replace=False)
    not_gold = np.ones(len(train), bool)
    not_gold[gold] = False
    train.loc[train.index[not_gold], "label"] = np.nan
    folder.mkdir(parents=True, exist_ok=True)
    train.to_parquet(folder / "train.parquet", index=False)
    test.drop(columns=list(votes)).to_parquet(folder / "test.parquet", index=False)
    config = {"data": {"source": "files", "train_path": "train.parquet", "test_path": "test.parquet",
                       "feature_columns": [f"f{i}" for i in range(20)], "label_column": "label",
                       "weak_label_columns": list(votes), "abstain": -1, "classes": list(range(CLASSES))}}
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    return folder / "config.yaml"


def measure_pipeline(config: Path, overrides: list[str]) -> dict:
    """In this process: the composition on the config; times, accuracy, peak RSS and the gold's choices."""
    from bench.plain import run_config
    from weakflow.tasks.lib.config import load_config

    cfg = load_config(config, [f"tracking.workspace={config.parent / 'ws'}", *overrides])
    t0 = time.perf_counter()
    run = on_runner(cfg) if cfg.parallel.runner == "dask" else run_config(cfg)
    wall = time.perf_counter() - t0
    o = run.outcome
    choices = {"shipped": run.shipped}
    for name, model in (("weak", o.weak), ("final", o.final)):
        if model is not None:
            choices |= {f"{name}_epoch": model.best_epoch, f"{name}_temperature": round(model.temperature, 2)}
    if o.weak is not None and "anchored_prior" in o.weak.figures:
        choices["evidence_with_prior"] = int(o.weak.figures["anchored_prior"])
    return {"wall": wall, "times": run.times, "final": run.candidates.get("final"),
            "gold_only": run.candidates.get("gold_only"), "shipped_accuracy": run.test_accuracy,
            "shipped_ece": run.scores["shipped"].ece,
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "choices": choices}


def on_runner(cfg):  # -> bench.plain.PlainRun
    """The composition inside a Prefect flow on the Dask runner ``cfg.parallel`` names, so the stages' tasks (the
    fold models with ``parallel.training``, the pseudo-labelling shards) go to the cluster; the cluster's start
    is in the wall time, not in the stages'."""
    from prefect import flow

    from bench.plain import run_config
    from weakflow.tasks.lib.parallel import with_runner

    @flow(name="bench-scale")
    def composition():
        return run_config(cfg)

    return with_runner(composition, cfg.parallel)()


def measure_bare(config: Path) -> dict:
    """In this process: one bare network (MLP 256-256, 60 epochs, batch 128) on the training rows."""
    import torch

    from bench.loop import bare_loop
    from weakflow.tasks.core.models import ModelSpec

    train = pd.read_parquet(config.parent / "train.parquet")
    x = train[[f"f{i}" for i in range(20)]].to_numpy(np.float32)
    y = train["annotator_0"].clip(lower=0).to_numpy(np.int64)  # any labels: the cost does not depend on them
    spec = ModelSpec(kind="mlp", num_features=20, num_classes=CLASSES, hidden=(256, 256))
    t0 = time.perf_counter()
    bare_loop(spec, x, y, 60, 128, torch.device("cpu"))
    return {"bare_s": time.perf_counter() - t0}


def run_child(kind: str, config: Path, overrides: list[str]) -> dict:
    """``kind`` (pipeline or bare) measured in a fresh process on ``config``; its JSON result."""
    out = subprocess.run([sys.executable, "-m", "bench.scale", "--child", kind, str(config), *overrides],
                         cwd=ROOT, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"{kind} on {config} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[2_000, 20_000, 100_000, 1_000_000])
    parser.add_argument("--quick", action="store_true", help="2,000 and 20,000 rows only")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--compare", action="append", default=[], metavar="KEY=VALUE",
                        help="also run with these overrides and count the choices that agree")
    parser.add_argument("--no-write", action="store_true", help="print the section; leave docs/benchmarks.md alone")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        kind, config, overrides = args.child[0], Path(args.child[1]), args.child[2:]
        print(json.dumps(measure_bare(config) if kind == "bare" else measure_pipeline(config, overrides)))
        return
    sizes = [2_000, 20_000] if args.quick else args.sizes
    rows_out, agree = [], []
    for size in sizes:
        for seed in args.seeds:
            with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp:
                config = make_data(size, seed, Path(tmp) / "data")
                bare = run_child("bare", config, [])["bare_s"]
                runs = {"default": run_child("pipeline", config, [f"seed={seed}", *args.overrides])}
                if args.compare:
                    runs["compared"] = run_child("pipeline", config, [f"seed={seed}", *args.overrides, *args.compare])
            for name, r in runs.items():
                training = sum(r["times"].get(s, 0.0) for s in TRAINING)
                rows_out.append({"rows": size, "seed": seed, "run": name, "bare": bare, "training": training, **r})
                print(json.dumps(rows_out[-1]), flush=True)
            if args.compare:
                a, b = runs["default"]["choices"], runs["compared"]["choices"]
                agree.append({"rows": size, "seed": seed, "same": sum(a[k] == b.get(k) for k in a), "of": len(a),
                              "differ": {k: (a[k], b.get(k)) for k in a if a[k] != b.get(k)},
                              "final_delta": (runs["default"]["final"] or 0) - (runs["compared"]["final"] or 0)})
    title = (f"## Cost with `{' '.join(args.compare)}` against the defaults (`bench.scale --compare`)" if args.compare
             else "## Cost curve: training time against one network as the weak rows grow (`bench.scale`)")
    lines = [title, "",
             "8 classes, 20 features, 3 annotators each confusing their own pair of classes, 400 gold rows, 2,000 "
             "test rows; the pipeline's composition with defaults"
             + (f" and `{' '.join(args.overrides)}`" if args.overrides else "")
             + "; one bare network = MLP 256-256, 60 epochs, batch 128, same rows, its own process.", "",
             "| rows | seed | run | wall s | gold_only s | weak_train s | full_train s | training / bare network | "
             "peak RSS MiB | final / gold-only % | shipped: accuracy %, ECE | choices |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows_out:
        t = r["times"]
        lines.append(f"| {r['rows']:,} | {r['seed']} | {r['run']} | {r['wall']:.0f} | {t.get('gold_only', 0):.0f} | "
                     f"{t.get('weak_train', 0):.0f} | {t.get('full_train', 0):.0f} | "
                     f"{r['training']:.0f} / {r['bare']:.0f} = **{r['training'] / r['bare']:.1f}×** | "
                     f"{r['peak_rss_mib']:,.0f} | {100 * (r['final'] or 0):.1f} / {100 * (r['gold_only'] or 0):.1f} | "
                     f"{100 * r['shipped_accuracy']:.1f}, {r['shipped_ece']:.3f} | "
                     f"{', '.join(f'{k} {v}' for k, v in r['choices'].items())} |")
    if agree:
        lines += ["", f"Compared with `{' '.join(args.compare)}`: "
                  + "; ".join(f"{a['rows']:,} rows seed {a['seed']}: {a['same']} of {a['of']} choices equal"
                              + (f" (differ: {a['differ']})" if a["differ"] else "")
                              + f", final accuracy {100 * a['final_delta']:+.2f} points" for a in agree)]
        deltas = [100 * a["final_delta"] for a in agree]
        lines += ["", f"Final accuracy, default minus compared, paired over {len(deltas)} run(s): mean "
                  f"{np.mean(deltas):+.2f} points, sd {np.std(deltas, ddof=1) if len(deltas) > 1 else 0:.2f}."]
    # a comparison of settings has its own section (one per compared setting), so the cost curve stays beside it
    section = "scale_compare_" + args.compare[0].split("=")[0].replace(".", "_") if args.compare else "scale"
    publish(section, "\n".join(lines), args.no_write, module="scale")


if __name__ == "__main__":
    main()
