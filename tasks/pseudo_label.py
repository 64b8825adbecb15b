"""Stage pseudo_label: the weak model's calibrated, confident predictions become labels, once per model.

Every weak model (each fold model and the refit) labels the candidates for the final model of its own
fold; thresholds and measured precision come from held-out gold predictions. The scoring is
tasks/lib/pseudo_labels.py (every self-training round relabels with it too); the recording of a set is
tasks/lib/pseudo_records.py.
"""

from __future__ import annotations

import mlflow

from weakflow.tasks.lib import tracking
from weakflow.tasks.lib.config import ParallelConfig, PseudoLabelConfig
from weakflow.tasks.lib.data import PipelineData
from weakflow.tasks.lib.modeling import TrainedModel
from weakflow.tasks.lib.pseudo_labels import CrossPseudo, label_all
from weakflow.tasks.lib.pseudo_records import log_pseudo_labels
from weakflow.tasks.lib.steps import RunContext, Stage


def compute(ctx: RunContext, data: PipelineData, weak: TrainedModel, section: PseudoLabelConfig,
            parallel: ParallelConfig, soft: bool) -> CrossPseudo:
    """Every weak model's pseudo set, written under the run's ``pseudo`` folder; ``soft`` (the final stage
    distils) also writes each kept row's calibrated probabilities."""
    return label_all(data, weak, section, parallel, ctx.device, ctx.folder("pseudo"), soft=soft)


def log_settings(ctx: RunContext, data: PipelineData, weak: TrainedModel, section: PseudoLabelConfig,
             parallel: ParallelConfig, soft: bool) -> None:
    tracking.log_section(section, "pseudo_label")
    mlflow.log_params({"parallel.runner": parallel.runner, "parallel.shards": parallel.resolved_shards})


def record(pseudo: CrossPseudo, ctx: RunContext, data: PipelineData, weak: TrainedModel, section: PseudoLabelConfig,
           parallel: ParallelConfig, soft: bool) -> None:
    log_pseudo_labels(pseudo.refit, data)
    mlflow.log_metrics({f"fold{f}_kept": p.kept_count for f, p in enumerate(pseudo.folds)})


STAGE = Stage("pseudo_label", compute, record, settings=log_settings)
