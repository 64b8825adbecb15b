"""The pipeline's stages called as plain functions in one process: no Prefect, no MLflow.

Does the same computation as `weakflow run` (validation with Data Docs, governance checks, gold-only baseline,
weak training, pseudo-labels, full training, selection, evaluation, the review report (rendered to HTML and
Markdown, as the evaluate stage writes it), gate decision, model file, drift reference sample and model
card), so `bench.pipeline` measures what orchestration and tracking add, not compute. What stays on the
flow's side only: Prefect, MLflow logging and registry calls, the signature inference, the stage time limits.

    python -m bench.plain --workspace /tmp/ws
"""

from __future__ import annotations

import argparse
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class PlainRun:
    """What one plain-function run of the pipeline gives: test accuracy of the model it ships and of
    the candidates it trained, and seconds per stage."""

    test_accuracy: float  # the model the pipeline ships (registers)
    candidates: dict[str, float]  # test accuracy per candidate: gold_only, weak, final
    shipped: str  # which candidate was shipped
    times: dict[str, float] = field(default_factory=dict)
    scores: dict = field(default_factory=dict)  # tasks.evaluate.ModelScores per candidate and "shipped"


def run(workspace: Path, overrides: list[str]) -> dict[str, float]:
    from weakflow.tasks.lib.config import load_config

    return run_config(load_config(None, [f"tracking.workspace={workspace}", *overrides]), workspace).times


def run_config(cfg, workspace: Path) -> PlainRun:  # cfg: tasks.config.Config
    """The pipeline's stages on ``cfg`` (any data source) as plain functions, doing the same work as the flow
    (validation with Data Docs, governance, the cross-fitted candidates, selection, evaluation, the gate
    decision, the model file); the model file goes to ``workspace``."""
    from weakflow.deploy.gates import GateInput, decide
    from weakflow.deploy.model import save_weights
    from weakflow.tasks.core.models import calibrated
    from weakflow.tasks.evaluate import evaluate_models
    from weakflow.tasks.full_train import train_full
    from weakflow.tasks.gold_only import train_gold_only
    from weakflow.tasks.governance import check_all_pseudo, check_training
    from weakflow.tasks.pseudo_label import label_all
    from weakflow.tasks.select import choose
    from weakflow.tasks.validate import load_and_validate
    from weakflow.monitoring.reference import reference_sample
    from weakflow.tasks.register import model_card, provenance_of
    from weakflow.tasks.report.build import build_review, render_html, render_markdown
    from weakflow.tasks.report.review import Champion
    from weakflow.tasks.weak_labels import make_weak_labels
    from weakflow.tasks.weak_train import train_weak

    times: dict[str, float] = {}
    t = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        data, _ = load_and_validate(cfg, Path(tmp) / "docs")
    times["validate"] = time.perf_counter() - t
    t = time.perf_counter()
    data, checks = check_training(data, cfg)
    times["governance"] = time.perf_counter() - t
    t = time.perf_counter()
    labels = make_weak_labels(data, cfg)
    times["weak_labels"] = time.perf_counter() - t
    t = time.perf_counter()
    candidates = {"gold_only": train_gold_only(data, cfg)}
    times["gold_only"] = time.perf_counter() - t
    missing = labels.missing()
    pseudo = pseudo_checks = None
    if not missing:
        t = time.perf_counter()
        weak = train_weak(data, labels, cfg, gold_only=candidates["gold_only"])
        times["weak_train"] = time.perf_counter() - t
        t = time.perf_counter()
        pseudo, pseudo_checks = check_all_pseudo(data, label_all(data, weak, cfg, Path(workspace) / "pseudo"), cfg)
        times["pseudo_label"] = time.perf_counter() - t
        t = time.perf_counter()
        candidates |= {"weak": weak, "final": train_full(data, labels, weak, pseudo, cfg)}
        times["full_train"] = time.perf_counter() - t
    t = time.perf_counter()
    selection = choose(candidates, data.y(data.rows("gold")), cfg.selection.ship, cfg.selection.bootstrap_samples,
                       cfg.seed, missing)
    probs: dict = {}
    evaluation = evaluate_models(data, candidates, selection.chosen, cfg.device, probs, cfg.report.bootstrap_samples,
                                 cfg.seed)
    times["select_and_evaluate"] = time.perf_counter() - t
    network, spec = calibrated(selection.model.model, selection.model.spec, selection.model.temperature)
    if cfg.report.enabled:  # the evaluate stage's review (no registered champion here, as on a first run)
        t = time.perf_counter()
        gold_only = candidates["gold_only"]
        judge = calibrated(gold_only.model, gold_only.spec, gold_only.temperature)[0]
        review = build_review(data, cfg, network, probs, Champion(None), "plain", labels,
                              getattr(selection.model, "pseudo", None), selection, judge,
                              getattr(candidates.get("weak"), "refined_sources", None))
        (Path(workspace) / "report.html").write_text(render_html(review))
        (Path(workspace) / "report.md").write_text(render_markdown(review))
        times["report"] = time.perf_counter() - t
    t = time.perf_counter()
    decision = decide(GateInput(evaluation.shipped.accuracy, True, vs_gold_only=evaluation.vs_gold_only),
                      cfg.gates.min_accuracy)
    network = network.cpu().eval()
    save_weights(Path(workspace) / "model.pt", network, spec, data.schema, data.classes)
    reference_sample(data, network, seed=cfg.seed, device=cfg.device).to_parquet(Path(workspace) / "reference.parquet")
    provenance = provenance_of(labels, selection.model, checks, pseudo_checks)
    (Path(workspace) / "model_card.md").write_text(model_card(data, evaluation, cfg, provenance, "plain",
                                                              "champion" if decision.passed else "challenger",
                                                              decision.reason, None, selection.model, selection.reason))
    times["register"] = time.perf_counter() - t
    print(f"test accuracy {evaluation.shipped.accuracy:.4f} ({selection.chosen}), gates passed: {decision.passed}")
    tested = {"gold_only": evaluation.gold_only, "weak": evaluation.weak, "final": evaluation.final}
    return PlainRun(evaluation.shipped.accuracy, {k: v.accuracy for k, v in tested.items() if v is not None},
                    selection.chosen, times, {k: v for k, v in {**tested, "shipped": evaluation.shipped}.items()
                                              if v is not None})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workspace", type=Path, required=True)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()
    args.workspace.mkdir(parents=True, exist_ok=True)
    times = run(args.workspace, args.overrides)
    print("stage seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in times.items()))


if __name__ == "__main__":
    main()
