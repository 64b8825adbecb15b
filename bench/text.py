"""The SMS text demo over seeds: weakflow's default pipeline against gold-only, the labelling functions'
majority vote and a clean-label oracle with the same model.

Per seed the demo is materialised with that seed (frozen test split, ~5% gold, the rest unlabelled; the seven
keyword/regex rules of ``tasks.lib.demo_text.DEMO_RULES`` vote), and:

- ``weakflow``: the default pipeline (``bench.plain.run_config``: every stage as in ``weakflow run``), the
  model it ships; ``gold_only``: the gold-only candidate of the same run;
- ``majority vote``: the rules applied to the test messages, the most voted class (ties and rows no rule
  fires on: the gold rows' most frequent class);
- ``oracle``: the pipeline's gold-only recipe (same featuriser, network, cross-fitted schedule and
  temperature) with every training message carrying its true label.

G = (weakflow − best naive) / (oracle − best naive), best naive = max(gold_only, majority vote), on accuracy.

    python -m bench.text                 # 5 seeds, writes docs/benchmarks.md section "text"
    python -m bench.text --seeds 1 --no-write
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pandas as pd

from bench.common import gold_only_recipe, publish, run_seeds


def spam_f1(confusion: np.ndarray, classes: list, positive: str = "spam") -> float:
    i = classes.index(positive)
    tp, fp, fn = confusion[i, i], confusion[:, i].sum() - confusion[i, i], confusion[i, :].sum() - confusion[i, i]
    return float(2 * tp / max(2 * tp + fp + fn, 1))


def scores(pred: np.ndarray, truth: np.ndarray, classes: list) -> tuple[float, float]:
    confusion = np.array([[np.sum((truth == a) & (pred == b)) for b in classes] for a in classes])
    return float((pred == truth).mean()), spam_f1(confusion, classes)


def majority_vote(test: pd.DataFrame, cfg, spec, fallback: str) -> np.ndarray:
    from weakflow.tasks.lib.labeling import apply_sources
    from weakflow.tasks.lib.rules import configured_rules

    votes = apply_sources(test, spec, configured_rules(cfg), [], list(spec.classes), spec.abstain)
    counts = np.stack([(votes == c).sum(axis=1).to_numpy() for c in spec.classes], axis=1)
    best = counts.max(axis=1, keepdims=True)
    winners = (counts == best) & (best > 0)
    pred = np.full(len(test), fallback, dtype=object)
    single = winners.sum(axis=1) == 1
    pred[single] = np.asarray(spec.classes, dtype=object)[winners[single].argmax(axis=1)]
    return pred


def oracle(cfg, spec, root: Path) -> tuple[float, float, float]:
    """The gold-only recipe with every training row's true label: (accuracy, spam F1, seconds)."""
    train = pd.read_parquet(spec.train_path)
    truth = pd.read_parquet(Path(spec.train_path).parent / "truth.parquet").set_index("row_id")["true_label"]
    pred, truth_test, classes, seconds = gold_only_recipe(cfg, spec, truth.loc[train["row_id"]].to_numpy(), root)
    return (*scores(pred, truth_test, classes), seconds)


def one_seed(seed: int, root: Path, overrides: list[str]) -> dict[str, float]:
    from bench.plain import run_config
    from weakflow.tasks.lib.config import load_config
    from weakflow.tasks.lib.data import resolve_data_spec

    cfg = load_config(None, ["data.source=demo_text", f"data.seed={seed}", f"seed={seed}",
                             f"tracking.workspace={root / 'ws'}", *overrides])
    spec = resolve_data_spec(cfg)  # the files the pipeline reads
    t = time.perf_counter()
    run = run_config(cfg, root / "ws")
    wall = time.perf_counter() - t
    classes = list(spec.classes)
    test = pd.read_parquet(spec.test_path)
    gold = pd.read_parquet(spec.train_path)["label"].dropna()
    mv = majority_vote(test, cfg, spec, fallback=gold.value_counts().idxmax())
    mv_acc, mv_f1 = scores(mv, test["label"].to_numpy(dtype=object), classes)
    o_acc, o_f1, o_s = oracle(cfg, spec, root / "oracle")
    f1 = {k: spam_f1(v.confusion, classes) for k, v in run.scores.items()}
    return {"weakflow": run.test_accuracy, "weakflow_f1": f1["shipped"], "gold_only": run.candidates["gold_only"],
            "gold_only_f1": f1["gold_only"], "weak": run.candidates.get("weak", float("nan")),
            "final": run.candidates.get("final", float("nan")), "mv": mv_acc, "mv_f1": mv_f1, "oracle": o_acc,
            "oracle_f1": o_f1, "pipeline_s": wall, "oracle_s": o_s, "shipped": run.shipped,
            "gold_rows": int(len(gold)), "train_rows": int(len(pd.read_parquet(spec.train_path))),
            "test_rows": int(len(test))}


def gap(r: dict) -> float:
    naive = max(r["gold_only"], r["mv"])
    return (r["weakflow"] - naive) / (r["oracle"] - naive) if r["oracle"] - naive > 0.005 else float("nan")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--no-write", action="store_true", help="print the section; leave docs/benchmarks.md alone")
    args = parser.parse_args(argv)
    rows = run_seeds(one_seed, args.seeds, args.overrides, "bench-text-")
    frame = pd.DataFrame(rows)

    def ms(col: str) -> str:
        return f"{frame[col].mean() * 100:.2f} ± {frame[col].std(ddof=0) * 100:.2f}"

    gaps = [gap(r) for r in rows]
    lines = [
        f"## Text: the SMS spam demo ({args.seeds} seeds; test accuracy and spam F1 %, mean ± std)", "",
        f"Per seed: a frozen test split of 20% of the messages ({frame['test_rows'].mean():,.0f}, whole groups of copies), "
        "about 5% of the rest as gold "
        f"({frame['gold_rows'].mean():.0f} rows on average), the other {frame['train_rows'].mean() - frame['gold_rows'].mean():.0f} "
        "training messages unlabelled; the seven rules of `tasks.lib.demo_text.DEMO_RULES` vote. "
        f"Overrides: `{' '.join(args.overrides) or 'none (defaults)'}`.", "",
        "| model | accuracy | spam F1 |", "|---|---|---|",
        f"| **weakflow default pipeline (shipped model)** | **{ms('weakflow')}** | **{ms('weakflow_f1')}** |",
        f"| gold-only (same run's candidate) | {ms('gold_only')} | {ms('gold_only_f1')} |",
        f"| majority vote of the rules | {ms('mv')} | {ms('mv_f1')} |",
        f"| clean-label oracle (same featuriser, network and schedule; every training label true) | {ms('oracle')} | "
        f"{ms('oracle_f1')} |", "",
        f"Gap closed G = (weakflow − max(gold-only, majority vote)) / (oracle − that): per seed "
        f"{', '.join('n/a' if np.isnan(g) else f'{g:.2f}' for g in gaps)}; mean **{np.nanmean(gaps):.2f}**, "
        f"median {np.nanmedian(gaps):.2f}. Shipped: {', '.join(frame['shipped'])}. Candidates' accuracy: weak "
        f"{ms('weak')}, final {ms('final')}.", "",
        f"Training time (the whole default pipeline as plain functions, validation to model file, 2 CPU cores): "
        f"{frame['pipeline_s'].mean():.0f} ± {frame['pipeline_s'].std(ddof=0):.0f} s per run; the oracle "
        f"{frame['oracle_s'].mean():.0f} s.",
    ]
    publish("text", "\n".join(lines), dry_run=args.no_write)


if __name__ == "__main__":
    main()
