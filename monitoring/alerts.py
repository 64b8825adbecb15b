"""Alerts and feedback: what happens when drift is found, and the delayed gold labels that let a
drift check also measure quality.

Each detection does three things, once: a Prefect event ``weakflow.drift.detected`` (what deployment
triggers listen for), an optional webhook POST (retried with back-off; a failure is logged and recorded,
never raised), and a row in the ``alerts`` table that ``weakflow alerts`` lists.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import pandas as pd
import sqlalchemy as sa

from deploy.prediction_log import ALERTS, FEEDBACK, PREDICTIONS, make_engine

log = logging.getLogger("weakflow.monitoring")
DRIFT_EVENT = "weakflow.drift.detected"
CONTAMINATION_EVENT = "weakflow.contamination.detected"


def model_resource(name: str, version: str) -> dict[str, str]:
    return {"prefect.resource.id": f"weakflow.model.{name}.v{version}", "prefect.resource.name": f"{name} v{version}",
            "weakflow.model.name": name, "weakflow.model.version": str(version)}


def emit_event_for(event_name: str, name: str, version: str, payload: dict[str, Any]) -> str | None:
    """A Prefect event about a model version; returns its id (None when no API is reachable)."""
    from prefect.events import emit_event

    event = emit_event(event=event_name, resource=model_resource(name, version), payload=payload)
    return str(event.id) if event is not None else None


def emit_drift_event(name: str, version: str, payload: dict[str, Any]) -> str | None:
    """The event the retraining deployment triggers on."""
    return emit_event_for(DRIFT_EVENT, name, version, payload)


def post_webhook(url: str, payload: dict[str, Any], retries: int = 3, timeout: float = 5.0,
                 backoff: float = 0.5) -> str:
    """POST ``payload`` as JSON; retried on errors and 5xx. Returns "sent" or "failed: <why>"."""
    import httpx

    why = ""
    for attempt in range(1, retries + 1):
        try:
            r = httpx.post(url, json=payload, timeout=timeout)
            if r.status_code < 400:
                return "sent"
            why = f"HTTP {r.status_code}"
            if r.status_code < 500:
                break  # the receiver rejects it: retrying will not help
        except httpx.HTTPError as exc:
            why = f"{type(exc).__name__}: {exc}"
        log.warning("webhook %s attempt %d/%d failed: %s", url, attempt, retries, why)
        if attempt < retries:
            time.sleep(backoff * 2 ** (attempt - 1))
    log.error("webhook %s gave up: %s", url, why)
    return f"failed: {why}"


@dataclass
class Alert:
    kind: str
    model_name: str
    model_version: str
    drift_share: float
    drifted_columns: list[str]
    prediction_drifted: bool
    report_uri: str
    message: str


def record_alert(url: str, alert: Alert, webhook: str) -> int:
    engine = make_engine(url)
    try:
        with engine.begin() as conn:
            result = conn.execute(ALERTS.insert().values(
                ts=datetime.now(timezone.utc), kind=alert.kind, model_name=alert.model_name,
                model_version=alert.model_version, drift_share=alert.drift_share,
                drifted_columns=json.dumps(alert.drifted_columns), prediction_drifted=alert.prediction_drifted,
                report_uri=alert.report_uri, webhook=webhook, message=alert.message))
            return int(result.inserted_primary_key[0])
    finally:
        engine.dispose()


def list_alerts(url: str, limit: int = 50) -> pd.DataFrame:
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(sa.select(ALERTS).order_by(ALERTS.c.id.desc()).limit(limit)).mappings().all()
    finally:
        engine.dispose()
    return pd.DataFrame(rows, columns=[c.name for c in ALERTS.columns])


def record_feedback(url: str, labels: pd.DataFrame) -> int:
    """Store gold labels for served rows (columns request_id, row_index, label); unknown request ids
    are refused with their ids. Returns how many rows were stored (re-sending a label replaces it)."""
    need = {"request_id", "row_index", "label"}
    if not need <= set(labels.columns):
        raise ValueError(f"feedback needs columns {sorted(need)}; got {sorted(labels.columns)}")
    engine = make_engine(url)
    try:
        with engine.begin() as conn:
            ids = list(labels["request_id"].astype(str).unique())
            known = {(r, int(i)) for r, i in conn.execute(
                sa.select(PREDICTIONS.c.request_id, PREDICTIONS.c.row_index).where(PREDICTIONS.c.request_id.in_(ids)))}
            keys = list(zip(labels["request_id"].astype(str), labels["row_index"].astype(int)))
            unknown = [k for k in keys if k not in known]
            if unknown:
                raise ValueError(f"no logged prediction for (request_id, row_index) {unknown[:5]}")
            conn.execute(FEEDBACK.delete().where(FEEDBACK.c.request_id.in_(ids)).where(
                sa.tuple_(FEEDBACK.c.request_id, FEEDBACK.c.row_index).in_(keys)))
            now = datetime.now(timezone.utc)
            conn.execute(FEEDBACK.insert(), [{"request_id": r, "row_index": i, "label": int(lab), "ts": now}
                                             for (r, i), lab in zip(keys, labels["label"])])
        return len(keys)
    finally:
        engine.dispose()
