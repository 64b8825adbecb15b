"""Shared bits of the benchmarks: machine description and writing a section of docs/benchmarks.md."""

from __future__ import annotations

import os
import platform
import re
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "benchmarks.md"


def machine() -> str:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        model = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                     if line.startswith("model name"))
        cpu = model
    except (OSError, StopIteration):
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (f"{os.cpu_count()} cores ({cpu}), {mem:.0f} GiB RAM, {gpu}; Python {platform.python_version()}, "
            f"torch {torch.__version__}")


def mean_std(values: list[float]) -> str:
    return f"{np.mean(values) * 100:.2f} ± {np.std(values) * 100:.2f}"


def write_section(name: str, body: str, module: str | None = None) -> None:
    """Replace (or append) the section between markers for ``name`` in docs/benchmarks.md."""
    command = "python -m bench." + (module or name) + (" " + " ".join(sys.argv[1:]) if sys.argv[1:] else "")
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    block = (f"<!-- bench:{name} -->\n{body.strip()}\n\n"
             f"_Machine: {machine()}. Command: `{command}`. Date: {stamp}. Commit: {commit or 'n/a'}._\n"
             f"<!-- /bench:{name} -->")
    DOC.parent.mkdir(exist_ok=True)
    text = DOC.read_text() if DOC.exists() else "# Benchmarks\n\nEvery section is written by the script it names.\n"
    pattern = re.compile(rf"<!-- bench:{name} -->.*?<!-- /bench:{name} -->", re.S)
    text = pattern.sub(lambda _: block, text) if pattern.search(text) else text.rstrip() + "\n\n" + block + "\n"
    DOC.write_text(text)
    print(block)


def publish(name: str, body: str, dry_run: bool, module: str | None = None) -> None:
    """Print the section (``dry_run``: a smoke or partial run) or write it into docs/benchmarks.md."""
    if dry_run:
        print(body)
    else:
        write_section(name, body, module)


def run_seeds(one_seed, seeds: int, overrides: list[str], prefix: str) -> list[dict]:
    """``one_seed(seed, folder, overrides)`` for seeds 0..seeds-1, each in its own temporary folder, each result
    printed as it comes (a long benchmark shows its progress)."""
    import tempfile

    rows = []
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        for seed in range(seeds):
            r = one_seed(seed, Path(tmp) / f"seed{seed}", overrides)
            rows.append(r)
            print(f"seed {seed}: " + ", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}"
                                               for k, v in r.items()), flush=True)
    return rows


def gold_only_recipe(cfg, spec, labels, root: Path,
                     ensemble_out: dict | None = None) -> tuple[np.ndarray, np.ndarray, list, float]:
    """The pipeline's gold-only recipe (same inputs, network, cross-fitted schedule) trained on the training file
    with its label column replaced by ``labels`` (a Series, None where a row has none): (test predictions of the
    refit, test labels, classes, seconds). What a benchmark's oracle and majority-vote columns train.
    ``ensemble_out`` (if given) receives under ``fold_ensemble`` the test predictions of the refit averaged with
    its fold models, what the pipeline ships where ``selection.fold_ensemble`` is on."""
    import tempfile
    import time

    import pandas as pd

    from weakflow.tasks.core.training import predict_proba
    from weakflow.tasks.gold_only import train_gold_only
    from weakflow.tasks.validate import load_and_validate

    train = pd.read_parquet(spec.train_path)
    train[spec.label_column] = np.asarray(labels, dtype=object)
    root.mkdir(parents=True, exist_ok=True)
    train.to_parquet(root / "train.parquet", index=False)
    cfg = cfg.model_copy(update={"data": spec.model_copy(update={"train_path": root / "train.parquet"})})
    t = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        data, _ = load_and_validate(cfg, Path(tmp) / "docs")
    if data.schema.text and cfg.text.encoder != "hashed":  # the text featurisation the pipeline's stage picks
        from weakflow.tasks import text_features
        from weakflow.tasks.lib.steps import RunContext

        data = text_features.compute(RunContext.of(cfg), data, cfg.text, cfg.gold_only.resolved(cfg.weak_train),
                                     cfg.selection).data
    model = train_gold_only(data, cfg)
    classes, x = np.asarray(data.classes, dtype=object), data.x(data.test)
    pred = classes[predict_proba(model.model, x).argmax(axis=1)]
    if ensemble_out is not None:
        from weakflow.tasks.core.models import fold_ensemble

        ensemble_out["fold_ensemble"] = classes[predict_proba(fold_ensemble(model.model, model.folds), x).argmax(axis=1)]
    return pred, data.test[spec.label_column].to_numpy(dtype=object), list(data.classes), time.perf_counter() - t
