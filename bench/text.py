"""The SMS text demo over seeds: weakflow's default pipeline against gold-only, the labelling functions'
majority vote and a clean-label oracle with the same model.

Per seed the demo is materialised with that seed (frozen test split, ~5% gold, the rest unlabelled; the seven
keyword/regex rules of ``tasks.lib.demo_text.DEMO_RULES`` vote), and:

- ``weakflow``: the default pipeline (``bench.plain.run_config``: every stage as in ``weakflow run``), the
  model it ships, once per ``text.encoder`` (hashed, minilm, auto); ``gold_only``: the gold-only candidate
  of the same run;
- ``majority vote``: the rules applied to the test messages, the most voted class (ties and rows no rule
  fires on: the gold rows' most frequent class);
- ``oracle``: the pipeline's gold-only recipe (same featuriser, network, cross-fitted schedule and
  temperature) with every training message carrying its true label, with each featuriser.

G = (weakflow − best naive) / (oracle − best naive), best naive = max(gold_only, majority vote), on accuracy.

    python -m bench.text                 # 5 seeds, writes docs/benchmarks.md section "text"
    python -m bench.text --seeds 1 --no-write
    python -m bench.text --only auto      # rerun one setting; the others from bench/results/text-rows.json
"""

from __future__ import annotations

import argparse
import subprocess
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd

from bench.common import ROOT, gold_only_recipe, publish, run_seeds


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


def commit() -> str:
    return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()


def tfidf_lr(seed: int, root: Path) -> tuple[float, float]:
    """The clean-label reference outside the pipeline: scikit-learn's TF-IDF (word 1-2-grams, sublinear) and
    logistic regression on every training message with its true label, the same split: (accuracy, spam F1)."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    from weakflow.tasks.lib.config import load_config
    from weakflow.tasks.lib.data import resolve_data_spec

    spec = resolve_data_spec(load_config(None, ["data.source=demo_text", f"data.seed={seed}",
                                                f"tracking.workspace={root}"]))
    train, test = pd.read_parquet(spec.train_path), pd.read_parquet(spec.test_path)
    truth = pd.read_parquet(Path(spec.train_path).parent / "truth.parquet").set_index("row_id")["true_label"]
    model = make_pipeline(TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True), LogisticRegression(C=10, max_iter=2000))
    model.fit(train["text"].fillna(""), truth.loc[train["row_id"]].to_numpy().astype(str))
    return scores(model.predict(test["text"].fillna("")), test["label"].to_numpy(dtype=object).astype(str),
                  [str(c) for c in spec.classes])


ENCODERS = ("hashed", "minilm", "auto")  # text.encoder settings, each a whole pipeline run per seed
RUN = list(ENCODERS)  # the ones this invocation runs (--only)


def one_seed(seed: int, root: Path, overrides: list[str]) -> dict[str, float]:
    from bench.plain import run_config
    from weakflow.tasks.lib.config import load_config
    from weakflow.tasks.lib.data import resolve_data_spec

    out: dict = {}
    for encoder in RUN:  # each in its own workspace: every run embeds from scratch, as a first run does
        ws = root / f"ws-{encoder}"
        cfg = load_config(None, ["data.source=demo_text", f"data.seed={seed}", f"seed={seed}",
                                 f"tracking.workspace={ws}", f"text.encoder={encoder}", *overrides])
        spec = resolve_data_spec(cfg)  # the files the pipeline reads (the same for every encoder: data.seed)
        t = time.perf_counter()
        run = run_config(cfg, ws)
        wall = time.perf_counter() - t
        classes = list(spec.classes)
        f1 = {k: spam_f1(v.confusion, classes) for k, v in run.scores.items()}
        text = run.outcome.text
        out |= {f"{encoder}": run.test_accuracy, f"{encoder}_f1": f1["shipped"],
                f"{encoder}_gold_only": run.candidates["gold_only"], f"{encoder}_gold_only_f1": f1["gold_only"],
                f"{encoder}_s": wall, f"{encoder}_shipped": run.shipped,
                f"{encoder}_text_s": run.times.get("text_features", float("nan")),
                f"{encoder}_chosen": text.chosen if text is not None else "none",
                f"{encoder}_oof": dict(text.oof_accuracy) if text is not None else {},
                f"{encoder}_ran": f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC ({commit()})"}
        if encoder != "auto":
            o_acc, o_f1, o_s = oracle(cfg, spec, root / f"oracle-{encoder}")
            out |= {f"oracle_{encoder}": o_acc, f"oracle_{encoder}_f1": o_f1, f"oracle_{encoder}_s": o_s}
    test = pd.read_parquet(spec.test_path)
    gold = pd.read_parquet(spec.train_path)["label"].dropna()
    mv = majority_vote(test, cfg, spec, fallback=gold.value_counts().idxmax())
    mv_acc, mv_f1 = scores(mv, test["label"].to_numpy(dtype=object), classes)
    return out | {"mv": mv_acc, "mv_f1": mv_f1, "gold_rows": int(len(gold)),
                  "train_rows": int(len(pd.read_parquet(spec.train_path))), "test_rows": int(len(test))}


def gap(r: dict, encoder: str = "auto", oracle_of: str = "hashed") -> float:
    """G of ``encoder``'s run: against the best naive baseline (its own gold-only model, majority vote) and
    the ``oracle_of`` featurisation's clean-label oracle."""
    naive = max(r[f"{encoder}_gold_only"], r["mv"])
    top = r[f"oracle_{oracle_of}"]
    return (r[encoder] - naive) / (top - naive) if top - naive > 0.005 else float("nan")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--no-write", action="store_true", help="print the section; leave docs/benchmarks.md alone")
    parser.add_argument("--rows", type=Path, default=None, help="publish the per-seed results a run saved (JSON)")
    parser.add_argument("--only", nargs="+", choices=ENCODERS, default=None,
                        help="rerun these text.encoder settings, keep the saved run's others")
    args = parser.parse_args(argv)
    import json

    saved = ROOT / "bench" / "results" / "text-rows.json"
    if args.only:  # rerun some settings; the others' per-seed results come from the saved run
        RUN[:] = args.only
        rows = json.loads((args.rows or saved).read_text())
        fresh = run_seeds(one_seed, len(rows), args.overrides, "bench-text-")
        rows = [old | new for old, new in zip(rows, fresh)]
        args.seeds = len(rows)
    elif args.rows is not None:
        rows = json.loads(args.rows.read_text())
        args.seeds = len(rows)
    else:
        rows = run_seeds(one_seed, args.seeds, args.overrides, "bench-text-")
    import tempfile

    for seed, r in enumerate(rows):
        if "tfidf_lr" not in r:
            with tempfile.TemporaryDirectory() as tmp:
                r["tfidf_lr"], r["tfidf_lr_f1"] = tfidf_lr(seed, Path(tmp))
    saved.parent.mkdir(parents=True, exist_ok=True)
    saved.write_text(json.dumps(rows))
    frame = pd.DataFrame(rows)

    def ms(col: str) -> str:
        return f"{frame[col].mean() * 100:.2f} ± {frame[col].std(ddof=0) * 100:.2f}"

    labels = {"hashed": "hashed n-grams (`text.encoder=hashed`)", "minilm": "pretrained encoder (`text.encoder=minilm`)",
              "auto": "**default `text.encoder=auto`**"}
    lines = [
        f"## Text: the SMS spam demo ({args.seeds} seeds; test accuracy and spam F1 %, mean ± std)", "",
        f"Per seed: a frozen test split of 20% of the messages ({frame['test_rows'].mean():,.0f}, whole groups of copies), "
        "about 5% of the rest as gold "
        f"({frame['gold_rows'].mean():.0f} rows on average), the other {frame['train_rows'].mean() - frame['gold_rows'].mean():.0f} "
        "training messages unlabelled; the seven rules of `tasks.lib.demo_text.DEMO_RULES` vote. Each seed runs the "
        "whole default pipeline three times, once per `text.encoder`, each in a fresh workspace (nothing cached). "
        f"Overrides: `{' '.join(args.overrides) or 'none (defaults)'}`.", "",
        "| model | accuracy | spam F1 | G (vs the hashed oracle) | G (vs the encoder oracle) | pipeline wall s | text_features stage s |",
        "|---|---|---|---|---|---|---|"]
    for enc in ENCODERS:
        g_h, g_m = [gap(r, enc, "hashed") for r in rows], [gap(r, enc, "minilm") for r in rows]
        lines.append(f"| weakflow, {labels[enc]} (shipped model) | {ms(enc)} | {ms(enc + '_f1')} | "
                     f"{np.nanmean(g_h):.2f} (per seed {', '.join('n/a' if np.isnan(g) else f'{g:.2f}' for g in g_h)}) | "
                     f"{np.nanmean(g_m):.2f} | {frame[enc + '_s'].mean():.0f} ± {frame[enc + '_s'].std(ddof=0):.0f} | "
                     f"{frame[enc + '_text_s'].mean():.1f} |")
    for enc in ("hashed", "minilm"):
        lines.append(f"| gold-only, {labels[enc]} (same run's candidate) | {ms(enc + '_gold_only')} | "
                     f"{ms(enc + '_gold_only_f1')} | | | | |")
    lines.append(f"| majority vote of the rules | {ms('mv')} | {ms('mv_f1')} | | | | |")
    for enc in ("hashed", "minilm"):
        lines.append(f"| clean-label oracle, {labels[enc]} (the gold-only recipe, every training label true) | "
                     f"{ms('oracle_' + enc)} | {ms('oracle_' + enc + '_f1')} | | | {frame['oracle_' + enc + '_s'].mean():.0f} | |")
    lines.append(f"| reference outside the pipeline: scikit-learn TF-IDF (word 1-2-grams) + logistic regression, "
                 f"every training label true | {ms('tfidf_lr')} | {ms('tfidf_lr_f1')} | | | | |")
    chosen = ", ".join(f"{r['auto_chosen']} ({', '.join(f'{k} {v:.3f}' for k, v in r['auto_oof'].items())})" for r in rows)
    lines += ["", "G = (weakflow − max(its own run's gold-only, majority vote)) / (oracle − that), on accuracy. "
              f"`auto` chose per seed (cross-fitted gold-only accuracy of each): {chosen}. Shipped candidates: "
              + "; ".join(f"{enc} {', '.join(frame[enc + '_shipped'])}" for enc in ENCODERS) + ".",
              "", "When each setting ran (its seeds' first start; the oracles ran with hashed and minilm): "
              + "; ".join(f"{enc} {frame[enc + '_ran'].iloc[0]}" for enc in ENCODERS if enc + "_ran" in frame) + "."]
    publish("text", "\n".join(lines), dry_run=args.no_write)


if __name__ == "__main__":
    main()
