"""Monitoring steps: read the window and the champion's reference, check drift, alert.

Each is a plain function plus a thin Prefect task; reports go to the MLflow monitoring experiment
(tagged with the model version, which in turn gets a ``last_drift_check`` tag) and to an Evidently
workspace that ``evidently ui --workspace <dir>`` shows. The window holds only the predictions of the
version being checked: after a retrain, the old version's traffic is not compared with the new
champion's reference. Alerts go through :func:`monitoring.alerts.raise_once` (alerts row, event,
webhook; nothing again for the same version within ``monitoring.alert_cooldown_minutes``), and what
happened is tagged ``alert`` on the monitoring run.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd

from weakflow.monitoring.alerts import CONTAMINATION_EVENT, DRIFT_EVENT, Alert, raise_once
from weakflow.monitoring.drift import DriftResult, DriftRule, Verdict, decide, drift_report, load_window
from weakflow.tasks.lib.stage import stage_task
from weakflow.tasks.lib import tracking
from weakflow.tasks.lib.config import Config, FilesData


@dataclass
class Served:
    name: str
    version: str
    run_id: str
    reference: pd.DataFrame
    features: list[str]
    embeddings: list[str] = field(default_factory=list)  # a picture model's embedding columns (drift apart)


@dataclass
class Check:
    result: DriftResult
    verdict: Verdict
    run_id: str | None  # the MLflow monitoring run
    report_uri: str  # "" when no report was made (a "not checked" window)
    evidently_runs: list[str] = field(default_factory=list)  # snapshot ids added to the Evidently workspace


def log_url(cfg: Config) -> str:
    return cfg.prediction_log_url()


def load_served(cfg: Config) -> Served:
    """The version behind the serving alias and the drift reference logged with it at registration."""
    from weakflow.deploy.registry import alias_version

    client = mlflow.MlflowClient()
    name = cfg.tracking.model_name
    # no model or alias: RegistryError, one line naming model, alias, URI and what to run
    mv = client.get_model_version(name, alias_version(client, name, cfg.serve.alias, mlflow.get_tracking_uri()))
    with tempfile.TemporaryDirectory() as tmp:  # one download per check: never left behind
        reference = pd.read_parquet(client.download_artifacts(mv.run_id, "reference/reference.parquet", tmp))
    from weakflow.monitoring.reference import embedding_columns

    embeddings = embedding_columns(list(reference.columns))
    features = [c for c in reference.columns if c not in ("provenance", "prediction", "confidence", *embeddings)]
    return Served(name, str(mv.version), mv.run_id, reference, features, embeddings)


def check_drift(cfg: Config, served: Served, window: pd.DataFrame) -> tuple[DriftResult, Verdict]:
    m = cfg.monitoring
    rule = DriftRule(m.drift_share, m.prediction_drift, m.min_rows)
    if len(window) < m.min_rows:  # too few rows: no report, the rule says "not checked"
        empty = DriftResult(len(window), 0.0, [], None, False)
        return empty, decide(empty, rule)
    result = drift_report(served.reference, window, served.features, embeddings=served.embeddings)
    return result, decide(result, rule)


def evidently_workspace(cfg: Config) -> Path:
    return cfg.monitoring.evidently_workspace or cfg.tracking.workspace / "evidently"


def log_check(cfg: Config, served: Served, result: DriftResult, verdict: Verdict, experiment_id: str) -> Check:
    """MLflow run in the monitoring experiment + Evidently workspace snapshot; tags the model version."""
    client = mlflow.MlflowClient()
    snapshots = result.snapshot if isinstance(result.snapshot, tuple) else (result.snapshot,)
    with mlflow.start_run(run_name=f"drift-check-v{served.version}", experiment_id=experiment_id,
                          tags={"weakflow.stage": "monitoring", "model_name": served.name,
                                "model_version": served.version, "model_run_id": served.run_id,
                                "verdict": "drift" if verdict.drift else ("no_drift" if verdict.checked else "not_checked"),
                                "mlflow.note.content": verdict.text}) as run:
        mlflow.log_metrics({k: float(v) for k, v in result.summary().items() if isinstance(v, (int, float)) and v is not None})
        tracking.log_json(result.summary() | {"verdict": verdict.text}, "drift/summary.json")
        with tempfile.TemporaryDirectory() as tmp:
            for i, snap in enumerate(s for s in snapshots if s is not None):
                name = "drift" if i == 0 else "quality"
                snap.save_html(str(Path(tmp) / f"{name}_report.html"))
                (Path(tmp) / f"{name}_report.json").write_text(snap.json())
            mlflow.log_artifacts(tmp, "drift")
        report_uri = f"{run.info.artifact_uri}/drift/drift_report.html" if snapshots[0] is not None else ""
    client.set_model_version_tag(served.name, served.version, "last_drift_check",
                                 f"{run.info.run_id}: {verdict.text[:200]}")
    evidently_runs: list[str] = []
    if snapshots[0] is not None:
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from evidently.ui.workspace import Workspace

        ws = Workspace.create(str(evidently_workspace(cfg)))
        project = next((p for p in ws.list_projects() if p.name == f"weakflow-monitoring/{served.name}"), None) \
            or ws.create_project(f"weakflow-monitoring/{served.name}")
        for snap in snapshots:
            if snap is not None:
                evidently_runs.append(str(ws.add_run(project.id, snap, include_data=False).id))
    return Check(result, verdict, run.info.run_id, report_uri, evidently_runs)


def raise_alert(cfg: Config, served: Served, check: Check) -> dict[str, str | int | None]:
    """Alerts row, event and webhook, once per detection and not again for this model version within the
    cool-down; what happened is tagged ``alert`` on the monitoring run."""
    m = cfg.monitoring
    payload = {"model": served.name, "version": served.version, "drift_share": check.result.drift_share,
               "drifted_columns": check.result.drifted_columns, "prediction_drifted": check.result.prediction_drifted,
               "report": check.report_uri, "mlflow_run_id": check.run_id, "verdict": check.verdict.text}
    if check.result.embedding_score is not None:  # pictures: the model's embedding, judged apart
        payload |= {"embedding_drift_score": check.result.embedding_score,
                    "embedding_drifted": check.result.embedding_drifted}
    raised = raise_once(log_url(cfg), DRIFT_EVENT,
                        Alert("drift", served.name, served.version, check.result.drift_share,
                              check.result.drifted_columns, check.result.prediction_drifted, check.report_uri,
                              check.verdict.text),
                        payload, m.webhook_url, m.webhook_retries, m.alert_cooldown_minutes)
    if check.run_id is not None:
        mlflow.MlflowClient().set_tag(check.run_id, "alert", raised.text[:5000])
    return raised.as_dict()


def production_contamination(cfg: Config, served: Served, window: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """Served rows equal or near to test rows (evaluation contamination) and to training rows
    (memorisation exposure), with the request each came from."""
    from weakflow.data_checks.contamination import NearDuplicateIndex, exact_pairs, exact_text_pairs, joined_text, near_text_pairs
    from weakflow.deploy.serve import LOGGED_TEXT_CHARS
    from weakflow.tasks.lib.data import read_table
    from weakflow.tasks.lib.data import resolve_data_spec

    spec = resolve_data_spec(cfg)
    numeric, text = spec.feature_columns, spec.text_columns
    if spec.image_columns:
        return picture_contamination(spec, window)
    out = {}
    for name, path, config_field in (("evaluation_contamination", spec.test_path, "data.test_path"),
                                     ("memorisation_exposure", spec.train_path, "data.train_path")):
        table = read_table(path, config_field)
        if text:  # the log keeps the first LOGGED_TEXT_CHARS characters: compare those
            ref = table[[*numeric, *text]].copy()
            for column in text:
                ref[column] = ref[column].fillna("").astype(str).str[:LOGGED_TEXT_CHARS]
            pairs = pd.concat([exact_text_pairs(ref, window, numeric, text).assign(distance=0.0),
                               near_text_pairs(joined_text(ref, text), joined_text(window, text))], ignore_index=True)
        else:
            ref, wx = table[served.features].to_numpy(np.float32), window[served.features].to_numpy(np.float32)
            pairs = pd.concat([exact_pairs(ref, wx).assign(distance=0.0),
                               NearDuplicateIndex(ref, cfg.governance.near_factor).near_pairs(wx)], ignore_index=True)
        idx = pairs["row_index"].to_numpy()
        out[name] = pd.DataFrame({"reference_index": pairs["reference_index"].to_numpy(), "distance": pairs["distance"],
                                  "request_id": window["request_id"].to_numpy()[idx],
                                  "row_index": window["row_index"].to_numpy()[idx]})
    return out


def picture_contamination(spec: FilesData, window: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """Served pictures whose bytes equal a test picture file's (evaluation contamination) or a training one's
    (memorisation exposure), by the SHA-256 the prediction log keeps (it keeps no pixels, so near copies are
    the validation suite's perceptual-hash check, before training)."""
    import hashlib

    from weakflow.tasks.core.images import open_picture, resolve
    from weakflow.tasks.core.picture_stats import HASH
    from weakflow.tasks.lib.data import read_table

    column = spec.image_columns[0]
    logged = f"{column}:{HASH}"
    served = window[logged].astype(str).to_numpy() if logged in window.columns else np.array([], dtype=str)
    out = {}
    for name, path, config_field in (("evaluation_contamination", spec.test_path, "data.test_path"),
                                     ("memorisation_exposure", spec.train_path, "data.train_path")):
        table = read_table(path, config_field)
        index: dict[str, int] = {}
        for i, cell in enumerate(table[column].tolist()):
            try:
                with open_picture(resolve(cell, spec.image_root)) as handle:  # in blocks: any size costs no memory
                    index.setdefault(hashlib.file_digest(handle, "sha256").hexdigest(), i)
            except OSError:
                continue  # a file gone since training: nothing to compare it with
        hits = [(index[h], j) for j, h in enumerate(served) if h in index]
        ref_rows, rows = (np.array([a for a, _ in hits], dtype=int), np.array([b for _, b in hits], dtype=int))
        out[name] = pd.DataFrame({"reference_index": ref_rows, "distance": np.zeros(len(hits)),
                                  "request_id": window["request_id"].to_numpy()[rows] if len(hits) else [],
                                  "row_index": window["row_index"].to_numpy()[rows] if len(hits) else []})
    return out


def alert_text(alert: dict) -> str:
    """What one detection did, for the console: raised (row, event, webhook) or suppressed (why)."""
    if alert.get("suppressed"):
        return f"suppressed: {alert['suppressed']}"
    return (f"raised (alerts row {alert['alert_id']}, event {alert['event_id'] or 'not emitted'}, "
            f"webhook {alert['webhook'] or 'not configured'})")


@dataclass
class Contamination:
    """What the post-deployment contamination check found and did (printed by ``weakflow monitor``)."""

    counts: dict[str, int] = field(default_factory=dict)  # evaluation_contamination / memorisation_exposure rows
    text: str = ""  # "evaluation_contamination 3 of 500 served rows, ..." (also the alert's message)
    policy: str = "off"
    alert: dict[str, str | int | None] | None = None  # what raise_once did, under policy ``alert``

    @property
    def found(self) -> bool:
        return any(self.counts.values())

    def line(self) -> str:
        """One line for the console: the overlap counts and the alert (or why there is none)."""
        said = (f"alert {alert_text(self.alert)}" if self.alert else
                "no alert (governance.production=warn: version tag governance_post_deploy only)")
        return f"contamination: {self.text} | {said}"


def handle_contamination(cfg: Config, served: Served, window: pd.DataFrame, experiment_id: str) -> Contamination:
    """Run the post-deployment checks, log them, tag the model version; alert under policy ``alert``."""
    policy = cfg.governance.production
    if policy == "off" or window.empty:
        return Contamination(policy=policy)
    found = production_contamination(cfg, served, window)
    counts = {k: int(len(v)) for k, v in found.items()}
    with mlflow.start_run(run_name=f"contamination-check-v{served.version}", experiment_id=experiment_id,
                          tags={"weakflow.stage": "monitoring", "model_name": served.name,
                                "model_version": served.version}) as run:
        mlflow.log_metrics({f"{k}_rows": v for k, v in counts.items()} | {"window_rows": len(window)})
        for name, table in found.items():
            tracking.log_frame(table, "contamination", name)
    text = ", ".join(f"{k} {v} of {len(window)} served rows" for k, v in counts.items())
    mlflow.MlflowClient().set_model_version_tag(served.name, served.version, "governance_post_deploy",
                                                f"{run.info.run_id}: {text}")
    found = Contamination(counts, text, policy)
    if policy == "alert" and found.found:
        m = cfg.monitoring
        payload = {"model": served.name, "version": served.version, **counts, "mlflow_run_id": run.info.run_id}
        # the alert row keeps the counts in its message (drift_share/drifted_columns are drift's own)
        raised = raise_once(log_url(cfg), CONTAMINATION_EVENT,
                            Alert("contamination", served.name, served.version, 0.0, [], False,
                                  run.info.artifact_uri, text),
                            payload, m.webhook_url, m.webhook_retries, m.alert_cooldown_minutes)
        mlflow.MlflowClient().set_tag(run.info.run_id, "alert", raised.text[:5000])
        found.alert = raised.as_dict()
    return found


@stage_task("contamination_check")
def contamination_task(cfg: Config, served: Served, window: pd.DataFrame, experiment_id: str) -> Contamination:
    return handle_contamination(cfg, served, window, experiment_id)


@stage_task("load_window")
def load_window_task(cfg: Config, served: Served) -> pd.DataFrame:
    m = cfg.monitoring
    return load_window(log_url(cfg), served.features, rows=m.window_rows, hours=m.window_hours,
                       model_name=served.name, model_version=served.version, max_rows=m.max_rows, sample=m.sample_rows,
                       seed=cfg.seed, optional=served.embeddings)


@stage_task("load_reference")
def load_served_task(cfg: Config) -> Served:
    return load_served(cfg)


@stage_task("drift_check")
def drift_check_task(cfg: Config, served: Served, window: pd.DataFrame, experiment_id: str) -> Check:
    result, verdict = check_drift(cfg, served, window)
    return log_check(cfg, served, result, verdict, experiment_id)


@stage_task("alert")
def alert_task(cfg: Config, served: Served, check: Check) -> dict[str, str | int | None]:
    return raise_alert(cfg, served, check)
