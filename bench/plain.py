"""The pipeline's stages called as plain functions in one process: no Prefect, no MLflow.

Does the same computation as `weakflow run` (validation with Data Docs, governance checks, weak training, pseudo-labels,
full training, gold-only baseline, evaluation, gate decision, model file), so `bench.pipeline` can
measure what orchestration and tracking add.

    python -m bench.plain --workspace /tmp/ws
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path


def run(workspace: Path, overrides: list[str]) -> dict[str, float]:
    from deploy.gates import GateInput, decide
    from deploy.model import save_weights
    from tasks.config import load_config
    from tasks.evaluate import evaluate_models, train_gold_only
    from tasks.full_train import train_full
    from tasks.governance import check_pseudo, check_training
    from tasks.pseudo_label import make_pseudo_labels
    from tasks.validate import load_and_validate
    from tasks.weak_labels import make_weak_labels
    from tasks.weak_train import train_weak

    cfg = load_config(None, [f"tracking.workspace={workspace}", *overrides])
    times: dict[str, float] = {}
    t = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        data, _ = load_and_validate(cfg, Path(tmp) / "docs")
    times["validate"] = time.perf_counter() - t
    t = time.perf_counter()
    data, _ = check_training(data, cfg)
    times["governance"] = time.perf_counter() - t
    t = time.perf_counter()
    labels = make_weak_labels(data, cfg)
    times["weak_labels"] = time.perf_counter() - t
    t = time.perf_counter()
    weak = train_weak(data, labels, cfg)
    times["weak_train"] = time.perf_counter() - t
    t = time.perf_counter()
    pseudo = make_pseudo_labels(data, weak.model, cfg)
    pseudo, _ = check_pseudo(data, pseudo, cfg)
    times["pseudo_label"] = time.perf_counter() - t
    t = time.perf_counter()
    final = train_full(data, pseudo, cfg)
    times["full_train"] = time.perf_counter() - t
    t = time.perf_counter()
    gold_only = train_gold_only(data, cfg)
    evaluation = evaluate_models(data, weak, final, gold_only, cfg.device)
    times["evaluate"] = time.perf_counter() - t
    t = time.perf_counter()
    decision = decide(GateInput(evaluation.final.accuracy, True), cfg.gates.min_accuracy)
    save_weights(workspace / "model.pt", final.model.cpu(), final.spec, data.features, data.classes)
    times["register"] = time.perf_counter() - t
    print(f"test accuracy {evaluation.final.accuracy:.4f}, gates passed: {decision.passed}")
    return times


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
