"""What the review report holds: one :class:`Review` per pipeline run (numbers and figures), built by
``tasks/report/build.py`` and rendered by ``tasks/report/render.py``; typed results, below the stages."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pandas as pd
from torch import nn

from weakflow.tasks.core.bootstrap import BootstrapResult
from weakflow.tasks.lib.scores import ModelScores

CHALLENGER, CHAMPION, GOLD_ONLY, WEAK, FINAL = "challenger", "champion", "gold_only", "weak_model", "final_model"
LABELS = {CHALLENGER: "challenger (this run's shipped model)", CHAMPION: "champion", GOLD_ONLY: "gold-only model",
          WEAK: "weak model", FINAL: "final (pseudo-labelled) model"}
NO_CHAMPION = "No champion yet: this is the first model of"  # the report's wording, also checked by tests


@dataclass
class Champion:
    version: str | None  # None: the registry has no champion
    model: nn.Module | None = None
    error: str | None = None  # why it could not be scored on this split
    run_id: str | None = None
    loaded: Any = None  # deploy.model.Loaded: the network with its own input schema (text featuriser)
    seconds: float = 0.0  # what finding and loading it cost (the report's cost table)


@dataclass
class Figure:
    name: str  # file name beside the report, e.g. calibration_curve_plot.png
    alt: str
    png: bytes


@dataclass
class Review:
    model_name: str
    parent_run_id: str
    classes: list[int]
    test_rows: int
    data_version: str
    test_digest: str
    champion: Champion
    scores: dict[str, ModelScores]  # challenger, [champion], gold_only, weak_model
    boot: BootstrapResult
    robustness: pd.DataFrame  # model, corruption, severity, accuracy, clean_accuracy, drop
    robustness_note: str
    sources: pd.DataFrame  # per weak source: coverage, gold rows, accuracy and noise rate on gold
    noise_estimate: float | None
    pseudo: dict[str, Any]
    pseudo_per_class: pd.DataFrame
    issues: pd.DataFrame  # all weak rows believed mislabelled, most suspicious first
    issues_method: str
    weak_rows: int
    top_k: int
    figures: list[Figure] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)
    run_id: str | None = None  # the evaluate stage run holding the report
    gate: dict[str, str] | None = None  # after register: verdict, reason, version, alias
    thumbnails: list[bytes] = field(default_factory=list)  # PNG per top-k suspected row (image data)
    noise_basis: str = "gold"  # gold: sources' noise on gold rows; model: share of weak rows flagged
    shipped: str = "final"  # which candidate the select stage shipped (the challenger)
    selection_reason: str = ""
    selection: pd.DataFrame = field(default_factory=pd.DataFrame)  # candidates on cross-fitted gold
    source_noise: list[dict] = field(default_factory=list)  # gold_anchored: per source, confusion with intervals
    # anchored_refine: per source, the confusion the weak training refined on the weak rows (and learnt through)
    refined_noise: list[dict] = field(default_factory=list)
    text_features: str = ""  # the text_features stage's choice and why (both encoders' figures under auto)

    @property
    def has_champion(self) -> bool:
        return CHAMPION in self.scores

    @property
    def vs_champion(self) -> str:
        """better | worse | no clear difference (by the accuracy interval), or why there is no comparison."""
        if self.champion.version is None:
            return "no champion"
        if not self.has_champion:
            return "champion not scored"
        d = self.boot.delta(CHALLENGER, CHAMPION, "accuracy")
        assert d is not None
        return "better" if d.interval.low > 0 else "worse" if d.interval.high < 0 else "no clear difference"

    @property
    def label_issue_rate(self) -> float | None:
        return len(self.issues) / self.weak_rows if self.weak_rows else None
