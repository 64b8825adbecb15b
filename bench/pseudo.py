"""Pseudo-labelling matrix: full-training strategy x threshold policy, at several noise settings and seeds.

Per (noise, seed) the weak model is trained once with the default method; then every policy labels the
candidates (1293 weak + unlabeled rows) and every strategy trains the final model on gold + those
labels. Recorded per cell: final test accuracy, pseudo-labels kept, and the precision of the set the final
model actually trained on (for ``self_train`` the chosen round's set, not the weak model's) against the
demo's hidden true labels (``truth.parquet``, never read by the pipeline) and as estimated on held-out gold.
``fixed (no calibration)`` repeats the fixed policy without temperature scaling, for the calibration's
effect. Stages are the pipeline's plain functions (no Prefect/MLflow). Each finished cell is appended
to ``bench/results/pseudo.jsonl`` (git-ignored), so an interrupted run resumes where it stopped.

    python -m bench.pseudo            # 4 noise settings x 3 seeds x (3 policies x 4 strategies + 1), ~1 h on 2 cores
    python -m bench.pseudo --quick    # smoke: 40% symmetric, 1 seed, 15 epochs, not written to the docs
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import pandas as pd

from bench.common import ROOT, mean_std, publish
from weakflow.tasks.lib.config import load_config
from weakflow.tasks.core.training import predict_proba
from weakflow.tasks.lib.data import ROW_ID
from weakflow.tasks.gold_only import train_gold_only
from weakflow.tasks.full_train import FinalSetup, train_full
from weakflow.tasks.lib.pseudo_labels import label_all
from weakflow.tasks.lib.steps import RunContext
from weakflow.tasks.validate import load_and_validate
from weakflow.tasks.weak_labels import make_weak_labels
from weakflow.tasks import weak_train

NOISES = [("symmetric", 0.2), ("symmetric", 0.4), ("symmetric", 0.6), ("instance", 0.4)]
POLICIES = ["fixed", "per_class", "target_precision"]
STRATEGIES = ["augment", "pretrain_finetune", "self_train", "distill"]
UNCALIBRATED = ("fixed (no calibration)", "augment")
RESULTS = ROOT / "bench" / "results" / "pseudo.jsonl"
# rows written before precision was measured on the set actually trained on lack this key; they are rerun
PRECISION_OF = "trained_set"


def cells() -> list[tuple[str, str]]:
    return [(p, s) for p in POLICIES for s in STRATEGIES] + [UNCALIBRATED]


def precision_true(kept: pd.DataFrame, truth: pd.Series) -> float:
    """Share of ``kept`` pseudo-labels equal to the hidden true label (NaN: empty set)."""
    if not len(kept):
        return float("nan")
    return float((kept["pseudo_label"].to_numpy() == truth.loc[kept[ROW_ID]].to_numpy()).mean())


def current(row: dict) -> bool:
    return row.get("precision_of") == PRECISION_OF


def run_setting(kind: str, rate: float, seed: int, extra: list[str], workspace: Path, done: set[tuple],
                out: Path) -> None:
    base = [f"seed={seed}", f"data.seed={seed}", f"data.noise.seed={seed}", f"data.noise.kind={kind}",
            f"data.noise.rate={rate}", f"tracking.workspace={workspace}", *extra]
    cfg = load_config(None, base)
    data, _ = load_and_validate(cfg)
    truth = pd.read_parquet(Path(data.spec.train_path).parent / "truth.parquet").set_index(ROW_ID)["true_label"]
    x_test, y_test = data.x(data.test), data.y(data.test)

    def accuracy(model) -> float:
        return float((predict_proba(model, x_test, device=cfg.device).argmax(1) == y_test).mean())

    labels = make_weak_labels(data, cfg)
    weak = weak_train.compute(RunContext.of(cfg), data, labels, None, cfg.weak_train, cfg.selection,
                              cfg.weak_labels.confusion_strength)
    context = {"weak": accuracy(weak.model), "gold_only": accuracy(train_gold_only(data, cfg).model)}
    for policy, strategy in cells():
        key = (kind, rate, seed, policy, strategy)
        if key in done:
            continue
        overrides = [*base, f"full_train.strategy={strategy}",
                     f"pseudo_label.policy={'fixed' if policy == UNCALIBRATED[0] else policy}"]
        if policy == UNCALIBRATED[0]:
            overrides.append("pseudo_label.calibrate=false")
        cell_cfg = load_config(None, overrides)
        t0 = time.perf_counter()
        sets = label_all(data, weak, cell_cfg.pseudo_label, cell_cfg.parallel, cell_cfg.device, workspace / "pseudo",
                         soft=strategy == "distill")
        pseudo = sets.refit
        final = train_full(data, labels, weak, sets, FinalSetup(RunContext.of(cell_cfg), cell_cfg.full_train,
                                                                cell_cfg.selection, cell_cfg.pseudo_label,
                                                                cell_cfg.parallel, cell_cfg.governance))
        wall = time.perf_counter() - t0
        # the set the returned model trained on: for self_train the chosen round's, else the weak model's
        trained = final.pseudo if final.pseudo is not None else pseudo
        holdout = trained.holdout_precision  # None for a student's set: it trained on the gold holdout
        row = {
            "kind": kind, "rate": rate, "seed": seed, "policy": policy, "strategy": strategy,
            "precision_of": PRECISION_OF, "accuracy": accuracy(final.model), "kept": pseudo.kept_count,
            "precision_true": precision_true(trained.kept, truth),
            "precision_holdout": holdout if holdout is not None else float("nan"),
            "precision_true_weak": precision_true(pseudo.kept, truth),
            "kept_final": trained.kept_count, "rounds": len(final.rounds.rounds) if final.rounds else 0,
            "temperature": pseudo.calibration.temperature, "ece_holdout_before": pseudo.calibration.ece.get("holdout_before"),
            "ece_holdout_after": pseudo.calibration.ece.get("holdout_after"), "wall_s": wall, **context,
        }
        print(json.dumps(row), flush=True)
        with out.open("a") as f:
            f.write(json.dumps(row) + "\n")


def pct(values: pd.Series) -> str:
    return mean_std(values.dropna().tolist()) if values.notna().any() else "n/a"


def render(df: pd.DataFrame, seeds: int) -> str:
    lines = [f"## Pseudo-labelling: strategy × threshold policy ({seeds} seeds, demo digits, 10% gold, CNN, "
             "weak model `gce`; mean ± std)", "",
             "Columns: final test accuracy %; pseudo-labels kept of 1293 candidates (for `self_train`, kept by the "
             "weak model → by the chosen round's set); precision % of the set the final model trained on (for "
             "`self_train` the chosen round's set) against the hidden true labels, and as estimated on held-out "
             "gold rows (what the pipeline itself can see; n/a when a self-training student relabelled the set, "
             "since the student trained on those gold rows). Policies: `fixed` 0.9; "
             "`per_class` FlexMatch-style from base 0.9, floor 0.5; `target_precision` p = 0.95 on gold dev, "
             "min support 3, floor 0.5, fallback 0.9. All after temperature scaling except the last row.", ""]
    overall = df.groupby(["policy", "strategy"], sort=False)["accuracy"].mean().sort_values(ascending=False)
    for (kind, rate), part in df.groupby(["kind", "rate"], sort=False):
        lines += [f"### {kind} {rate:.0%} noise (weak model {pct(part['weak'])}, gold-only {pct(part['gold_only'])})", "",
                  "| policy | strategy | test accuracy % | kept | precision true % | precision est. on gold % |",
                  "|---|---|---|---|---|---|"]
        best = part.groupby(["policy", "strategy"])["accuracy"].mean().idxmax()
        for (policy, strategy), cell in part.groupby(["policy", "strategy"], sort=False):
            acc = pct(cell["accuracy"])
            acc = f"**{acc}**" if (policy, strategy) == best else acc
            kept = f"{cell['kept'].mean():.0f}" + (f" → {cell['kept_final'].mean():.0f}" if strategy == "self_train" else "")
            lines.append(f"| {policy} | {strategy} | {acc} | {kept} | {pct(cell['precision_true'])} | "
                         f"{pct(cell['precision_holdout'])} |")
        lines.append("")
    lines += ["### Mean test accuracy over all noise settings and seeds", "",
              "| rank | policy | strategy | mean test accuracy % |", "|---|---|---|---|"]
    for i, ((policy, strategy), acc) in enumerate(overall.items(), 1):
        lines.append(f"| {i} | {policy} | {strategy} | {acc * 100:.2f} |")
    cal = df[df["policy"] == "fixed"]
    lines += ["", f"Temperature scaling: T = {cal['temperature'].mean():.2f} on average; ECE on held-out gold "
              f"{cal['ece_holdout_before'].mean():.4f} before → {cal['ece_holdout_after'].mean():.4f} after. "
              f"Mean wall per cell (pseudo-labelling + full training): {df['wall_s'].mean():.1f} s."]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="40%% symmetric, 1 seed, 15 epochs; docs untouched")
    parser.add_argument("--fresh", action="store_true", help="ignore results of earlier (interrupted) runs")
    parser.add_argument("--render-only", action="store_true", help="rewrite the docs section from the results file")
    args = parser.parse_args()
    out = RESULTS.with_name("pseudo-quick.jsonl") if args.quick else RESULTS
    out.parent.mkdir(parents=True, exist_ok=True)
    if args.fresh and out.exists():
        out.unlink()
    noises, seeds = ([("symmetric", 0.4)], 1) if args.quick else (NOISES, args.seeds)
    extra = ["weak_train.epochs=15", "full_train.epochs=15", "full_train.finetune_epochs=10"] if args.quick else []
    if not args.render_only:
        done = {tuple(r[k] for k in ("kind", "rate", "seed", "policy", "strategy"))
                for r in map(json.loads, out.read_text().splitlines()) if current(r)} if out.exists() else set()
        with tempfile.TemporaryDirectory() as tmp:
            for kind, rate in noises:
                for seed in range(seeds):
                    if all((kind, rate, seed, p, s) in done for p, s in cells()):
                        continue
                    run_setting(kind, rate, seed, extra, Path(tmp), done, out)
    df = pd.DataFrame([r for r in map(json.loads, out.read_text().splitlines()) if current(r)])
    if df.empty:
        raise SystemExit(f"{out} has no rows measured on the trained set ({PRECISION_OF}); run without --render-only")
    df = df[df["seed"] < seeds]
    body = render(df, seeds)
    publish("pseudo", body, dry_run=args.quick)


if __name__ == "__main__":
    main()
