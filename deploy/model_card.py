"""The model card registered with every version: where its labels came from, how noisy they were, what
the checks found, how it scored, and what it is (not) for. Markdown, built from plain values."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class CardInputs:
    model_name: str
    version: str
    alias: str
    gate_reason: str
    provenance: dict[str, int]  # training rows by label source (gold, weak, unlabeled)
    pseudo_kept: int
    pseudo_policy: str
    pseudo_precision: float | None
    sources: list[dict]  # per weak source: source, coverage, accuracy (on gold)
    validation: str  # the validate stage's recorded result, in words
    governance: dict[str, object]  # check -> its result (printed: "N found; action")
    dropped: dict[str, int]
    metrics: dict[str, float]  # test accuracy, macro-F1, ECE, gold-only, weak
    weak_method: str
    strategy: str
    test_rows: int
    limits: list[str] = field(default_factory=list)
    pseudo_set: str = "the weak model's pseudo set"  # which set pseudo_kept/pseudo_precision describe
    governance_verdict: str = ""  # passed | warned
    shipped: str = "final"  # which candidate this version is (gold_only | weak | final)
    shipped_reason: str = ""  # why the pipeline shipped it (the select stage's words)


def render(c: CardInputs) -> str:
    noise = [f"| {s['source']} | {s.get('coverage', float('nan')):.2f} | "
             + (f"{1 - s['accuracy']:.2f}" if s.get("accuracy") is not None and s["accuracy"] == s["accuracy"] else "n/a")
             + " |" for s in c.sources]
    gov = [f"| {k} | {v} |" for k, v in c.governance.items()] or ["| (none run) | |"]
    m = c.metrics
    lines = [
        f"# Model card: {c.model_name} v{c.version} ({c.alias})", "",
        f"Gate decision: {c.gate_reason}.", "",
        f"Which model: the {c.shipped} candidate" + (f" ({c.shipped_reason})" if c.shipped_reason else "") + ".", "",
        "## Training data and label provenance", "",
        "| label source | rows |", "|---|---|",
        *[f"| {k} | {v} |" for k, v in c.provenance.items()],
        f"| pseudo-labelled ({c.pseudo_policy}; {c.pseudo_set}) | {c.pseudo_kept} |", "",
        f"Dropped by governance policies: {c.dropped or 'none'}. Weak-training method `{c.weak_method}`, "
        f"full-training strategy `{c.strategy}`. Pseudo-label precision on held-out gold rows ({c.pseudo_set}): "
        + (f"{c.pseudo_precision:.3f}" if c.pseudo_precision is not None else
           "n/a (not measured: none kept on held-out gold rows, or the labelling model trained on them)") + ".", "",
        "## Estimated weak-label noise (disagreement with gold rows)", "",
        "| source | coverage | estimated noise rate |", "|---|---|---|", *noise, "",
        f"## Validation\n\n{c.validation}", "",
        "## Contamination and leakage checks", "",
        *([f"Verdict: {c.governance_verdict}.", ""] if c.governance_verdict else []),
        "| check | result |", "|---|---|", *gov, "",
        f"## Evaluation on the frozen gold test split ({c.test_rows} rows)", "",
        "| model | accuracy | macro-F1 | ECE |", "|---|---|---|---|",
        f"| this model | {m['accuracy']:.4f} | {m['macro_f1']:.4f} | {m['ece']:.4f} |",
        f"| gold-only baseline | {m['gold_only_accuracy']:.4f} | {m['gold_only_macro_f1']:.4f} | |",
        f"| weak model | {m['weak_accuracy']:.4f} | | |" if m["weak_accuracy"] == m["weak_accuracy"]
        else "| weak model | not trained | | |", "",
        "## Intended use and limits", "",
        "- Intended: the classification task of its training data, on inputs with the same feature schema "
        "and distribution as the reference logged with this version (monitored for drift).",
        "- Trained mostly on weak and pseudo labels: errors that every weak source shares are invisible to "
        "the checks above; the gold test split is small, so accuracy differences under ~1 point are noise.",
        *[f"- {limit}" for limit in c.limits],
    ]
    return "\n".join(lines) + "\n"
