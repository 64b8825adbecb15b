"""The Python API: what the CLI does, for notebooks and other programs; reached as ``import weakflow``.

    import weakflow

    cfg = weakflow.config("my.yaml", weak_train__epochs=20)  # or weakflow.config({"data": {...}}), or config()
    result = weakflow.run(cfg)                               # the whole pipeline (Prefect + MLflow)
    print(result.version, result.alias, result.shipped, result.metrics["test_accuracy"])
    model = weakflow.load_model(cfg)                         # the champion (or version=..., alias=...)
    scores = model.predict(frame)                            # prediction, confidence, prob_<class>

Every function raises the same errors the CLI reports in one line: ``weakflow.ConfigError`` for a bad
setting, ``weakflow.DataError`` for bad data (nothing is registered then), ``weakflow.RegistryError`` for a
missing model, version or alias. :func:`run` raises ``weakflow.PrefectStartupError`` when Prefect's temporary
API server does not answer within ``limits.prefect_startup_seconds`` (only without ``PREFECT_API_URL``).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
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
    if overrides is not None and not isinstance(overrides, Mapping):
        raise ConfigError(f"overrides: expected a dict of dotted keys and values, e.g. {{'weak_train.epochs': 20}}, "
                          f"found {type(overrides).__name__} {_short(overrides)}")
    bad_keys = [k for k in (overrides or {}) if not isinstance(k, str) or not k.strip()]
    if bad_keys:
        raise ConfigError(f"overrides: every key is a dotted setting name such as 'weak_train.epochs', found "
                          f"{_short(bad_keys)}")
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
    from weakflow.flows.runtime import start_prefect_api

    cfg = _config_argument(cfg, "run")
    # Prefect's temporary API (no PREFECT_API_URL) gets limits.prefect_startup_seconds to answer, or a
    # one-line PrefectStartupError naming that setting; it is then the only one this process starts
    start_prefect_api(cfg.limits.prefect_startup_seconds)
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

    from weakflow.tasks.batch_predict import chosen_version, resolve_scoring_model

    cfg = _config_argument(cfg, "load_model")
    version, alias = chosen_version(version, alias, cfg.serve.alias)  # both, or an empty one: ConfigError
    for label, value in (("name", name), ("tracking_uri", tracking_uri)):
        if value is not None and (not isinstance(value, str) or not value.strip()):
            raise ConfigError(f"load_model: {label} {_short(value)}: expected a non-empty string, or leave it out")
    uri = tracking_uri or cfg.tracking.resolved_uri
    mlflow.set_tracking_uri(uri)  # read the registry only: nothing is created in the workspace
    return resolve_scoring_model(name or cfg.tracking.model_name, version, alias, uri, cfg.serve.max_text_chars)


def _config_argument(cfg: object, function: str) -> Config:
    """``cfg`` when it is a Config, the defaults for None; anything else is a ConfigError saying what to pass
    (a YAML path or a dict goes through :func:`config` first)."""
    if cfg is None:
        return config()
    if not isinstance(cfg, Config):
        raise ConfigError(f"{function}: expected a Config (from weakflow.config(...)) or None, found "
                          f"{type(cfg).__name__} {_short(cfg)}; for a YAML file or a dict, pass "
                          f"weakflow.config({_short(cfg)})")
    return cfg


def _short(value: object, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}..."
