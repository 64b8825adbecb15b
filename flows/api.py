"""The Python API: what the CLI does, for notebooks and other programs.

    from weakflow.flows import api

    cfg = api.config("my.yaml", weak_train__epochs=20)      # or api.config({"data": {...}}), or api.config()
    result = api.run(cfg)                                   # the whole pipeline (Prefect + MLflow)
    print(result.version, result.alias, result.shipped, result.metrics["test_accuracy"])
    model = api.load_model(cfg)                             # the champion (or version=..., alias=...)
    scores = model.predict(frame)                           # prediction, confidence, prob_<class>

Every function raises the same errors the CLI reports in one line: ``weakflow.tasks.lib.config.ConfigError`` for
a bad setting, ``weakflow.tasks.lib.data.DataError`` for bad data (nothing is registered then),
``weakflow.deploy.registry.RegistryError`` for a missing model, version or alias.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from weakflow.tasks.lib.config import Config, ConfigError, load_config, parse_config, relative_to, set_key

if TYPE_CHECKING:  # batch_predict imports MLflow and pyarrow: only load_model needs them
    from weakflow.tasks.batch_predict import ScoringModel as Model


def config(source: str | Path | dict[str, Any] | Config | None = None, overrides: dict[str, Any] | None = None,
           **settings: Any) -> Config:
    """A validated config from a YAML file, a dict shaped like that file, or the defaults (``None``), with
    ``overrides`` as ``{"weak_train.epochs": 20}`` and keyword settings as ``weak_train__epochs=20``
    (``__`` for the dots) applied on top."""
    items = {**(overrides or {}), **{k.replace("__", "."): v for k, v in settings.items()}}
    if isinstance(source, Config):
        raw: dict[str, Any] = source.model_dump(mode="json")
        origin = "config object"
    elif isinstance(source, dict):  # a deep copy: the settings below must not reach into the caller's dict
        raw, origin = relative_to(copy.deepcopy(source), Path.cwd()), "dict"
    elif source is None or isinstance(source, (str, Path)):
        base = load_config(source)  # the file's errors first, with its name
        if not items:
            return base
        raw, origin = base.model_dump(mode="json"), str(source) if source else "defaults"
    else:
        raise ConfigError(f"config source: expected a YAML path, a dict or a Config, found {type(source).__name__}")
    for key, value in items.items():
        set_key(raw, key, value, f"setting {key!r}")
    return parse_config(raw, source=origin)


@dataclass(frozen=True)
class RunResult:
    """One pipeline run: where it is in MLflow, what it registered, and how the shipped model scored."""

    run_id: str
    experiment_id: str
    tracking_uri: str
    model_name: str
    version: str
    alias: str  # "champion", or "challenger" when a gate refused it (``gate_reason`` says why)
    gate_reason: str
    shipped: str  # the candidate the select stage shipped: "gold_only", "weak" or "final"
    metrics: dict[str, float]  # test_accuracy, test_macro_f1, test_ece, gold_only_test_accuracy, lift_over_gold_only
    summary: list[tuple[str, str]]  # (stage, one line) as the CLI prints it

    def load_model(self) -> Model:
        """The version this run registered."""
        return load_model(None, version=self.version, name=self.model_name, tracking_uri=self.tracking_uri)


def run(cfg: Config | None = None) -> RunResult:
    """Run the pipeline on ``cfg`` (default: the built-in demo) on the task runner ``cfg.parallel`` names."""
    from weakflow.flows.pipeline import run_training

    cfg = cfg or config()
    result = run_training(cfg)
    ev, reg = result.evaluation, result.registration
    metrics = {"test_accuracy": ev.shipped.accuracy, "test_macro_f1": ev.shipped.macro_f1, "test_ece": ev.shipped.ece,
               "gold_only_test_accuracy": ev.gold_only.accuracy, "lift_over_gold_only": ev.lift_over_gold_only}
    return RunResult(result.run_id, result.experiment_id, result.tracking_uri, reg.model_name, reg.version, reg.alias,
                     reg.decision.reason, ev.shipped_name, metrics, list(result.stages))


def load_model(cfg: Config | None = None, *, version: str | None = None, alias: str | None = None,
               name: str | None = None, tracking_uri: str | None = None) -> Model:
    """The version given, else the one ``alias`` names, else ``serve.alias`` (champion), of ``name`` (default
    ``tracking.model_name``) in the config's tracking store (or ``tracking_uri``)."""
    import mlflow

    from weakflow.tasks.batch_predict import resolve_scoring_model

    cfg = cfg or config()
    uri = tracking_uri or cfg.tracking.resolved_uri
    mlflow.set_tracking_uri(uri)  # read the registry only: nothing is created in the workspace
    return resolve_scoring_model(name or cfg.tracking.model_name, version, alias or cfg.serve.alias, uri)
