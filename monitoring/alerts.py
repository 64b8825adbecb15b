"""Alerts and feedback: what happens when drift is found, and the delayed gold labels that let a
drift check also measure quality.

Each detection does three things, once: a row in the ``alerts`` table that ``weakflow alerts`` lists
(written first, so it exists whatever happens next), a Prefect event ``weakflow.drift.detected`` (what
deployment triggers listen for; a failure to emit is logged and noted on the row, never raised), and an
optional webhook POST (retried with back-off; a failure is logged and recorded, never raised).
:func:`raise_once` does them in that order, and does none of them again for the same model version
within a cool-down (:func:`last_alert`): an unchanged drifted window must not re-alert (and restart
training) on every monitoring interval.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pandas as pd
import sqlalchemy as sa

from weakflow.deploy.prediction_log import ALERTS, FEEDBACK, PREDICTIONS, make_engine
from weakflow.monitoring.feedback import ClassesOf

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


WEBHOOK_STATUS_CHARS = 256  # the alerts table's ``webhook`` column


def post_webhook(url: str, payload: dict[str, Any], retries: int = 3, timeout: float = 5.0,
                 backoff: float = 0.5) -> str:
    """POST ``payload`` as JSON; retried on transport errors and 5xx. Never raises: returns "sent" or
    "failed: <why>" (a malformed URL or an unserialisable payload is a failure like any other)."""
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
        except httpx.TransportError as exc:  # connect, read, timeout ...: worth retrying
            why = f"{type(exc).__name__}: {exc}"
            if isinstance(exc, httpx.UnsupportedProtocol):
                break  # not an http(s) URL: will not get better
        except Exception as exc:  # noqa: BLE001 - InvalidURL, unserialisable payload ...: will not get better
            why = f"{type(exc).__name__}: {exc}"
            break
        log.warning("webhook %s attempt %d/%d failed: %s", url, attempt, retries, why)
        if attempt < retries:
            time.sleep(backoff * 2 ** (attempt - 1))
    log.error("webhook %s gave up: %s", url, why)
    return f"failed: {why}"[:WEBHOOK_STATUS_CHARS]


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
                report_uri=alert.report_uri, webhook=webhook[:WEBHOOK_STATUS_CHARS], message=alert.message))
            return int(result.inserted_primary_key[0])
    finally:
        engine.dispose()


def _utc(ts: datetime) -> datetime:
    return ts if ts.tzinfo is not None else ts.replace(tzinfo=timezone.utc)  # SQLite returns naive UTC


def last_alert(url: str, kind: str, name: str, version: str) -> datetime | None:
    """When the latest ``kind`` alert for this model version was raised (None: never)."""
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            ts = conn.execute(sa.select(sa.func.max(ALERTS.c.ts)).where(
                ALERTS.c.kind == kind, ALERTS.c.model_name == name, ALERTS.c.model_version == str(version))).scalar()
    finally:
        engine.dispose()
    if isinstance(ts, str):  # some drivers hand back SQLite's text
        ts = datetime.fromisoformat(ts)
    return _utc(ts) if ts is not None else None


def _update_alert(url: str, alert_id: int, **values: Any) -> None:
    engine = make_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(ALERTS.update().where(ALERTS.c.id == alert_id).values(**values))
    finally:
        engine.dispose()


@dataclass
class Raised:
    """What one detection did: either it alerted (alert row, event, webhook) or it was suppressed."""

    alert_id: int | None = None
    event_id: str | None = None
    webhook: str = ""
    suppressed: str = ""  # "alerted at ... (cool-down ...)" when nothing was raised

    @property
    def text(self) -> str:
        if self.suppressed:
            return f"suppressed: {self.suppressed}"
        event = f"event {self.event_id}" if self.event_id else "event not emitted"
        return f"alert {self.alert_id}, {event}, webhook {self.webhook or 'not configured'}"

    def as_dict(self) -> dict[str, Any]:
        return {"alert_id": self.alert_id, "event_id": self.event_id, "webhook": self.webhook,
                "suppressed": self.suppressed or None}


def raise_once(url: str, event_name: str, alert: Alert, payload: dict[str, Any], webhook_url: str | None = None,
               webhook_retries: int = 3, cooldown_minutes: float = 0.0, now: datetime | None = None) -> Raised:
    """One detection: unless this model version already had a ``alert.kind`` alert within the cool-down,
    write the alerts row, emit the event, post the webhook. Only the alerts-table write may raise (the
    row is what the cool-down and ``weakflow alerts`` rely on); event and webhook failures are logged
    and recorded on the row."""
    now = now or datetime.now(timezone.utc)
    if cooldown_minutes > 0:
        last = last_alert(url, alert.kind, alert.model_name, alert.model_version)
        if last is not None and now - last < timedelta(minutes=cooldown_minutes):
            why = (f"alerted at {last:%Y-%m-%d %H:%M:%S} UTC (cool-down {cooldown_minutes:g} min, until "
                   f"{last + timedelta(minutes=cooldown_minutes):%Y-%m-%d %H:%M:%S} UTC)")
            log.info("%s for %s v%s %s", alert.kind, alert.model_name, alert.model_version, f"suppressed: {why}")
            return Raised(suppressed=why)
    pending = "pending" if webhook_url else ""
    alert_id = record_alert(url, alert, pending)
    raised = Raised(alert_id=alert_id, webhook=pending)
    try:
        raised.event_id = emit_event_for(event_name, alert.model_name, alert.model_version,
                                         {**payload, "alert_id": alert_id})
        if raised.event_id is None:
            log.warning("%s for %s v%s: no Prefect API to emit to", event_name, alert.model_name, alert.model_version)
    except Exception as exc:  # noqa: BLE001 - e.g. EventTooLarge: the alert row and webhook still stand
        log.error("emitting %s for %s v%s failed: %s", event_name, alert.model_name, alert.model_version, exc)
        _update_alert(url, alert_id, message=f"{alert.message} [event not emitted: {type(exc).__name__}: {exc}]")
    if webhook_url:
        raised.webhook = post_webhook(webhook_url, {"event": event_name, **payload, "alert_id": alert_id},
                                      retries=webhook_retries)
        _update_alert(url, alert_id, webhook=raised.webhook)
    return raised


def finding(kind: str, drifted_columns: list[str], message: str) -> str:
    """What an alert found, in a few words for ``weakflow alerts``: a drift alert's drifted columns
    ("61 drifted: px_1, px_2, px_3 …"); a contamination alert's overlap counts, which its message holds
    ("evaluation_contamination 3 of 500 served rows, memorisation_exposure 0 of 500 served rows")."""
    if kind == "contamination":
        return (message or "").split(" [event not emitted", 1)[0] or "-"
    more = " …" if len(drifted_columns) > 3 else ""
    return f"{len(drifted_columns)} drifted: {', '.join(drifted_columns[:3])}{more}"


def list_alerts(url: str, limit: int = 50) -> pd.DataFrame:
    """The newest ``limit`` alerts; none (and nothing created) when the log database does not exist yet."""
    database = sa.engine.make_url(url).database
    if url.startswith("sqlite") and database not in (None, "", ":memory:") and not Path(database).exists():
        return pd.DataFrame(columns=[c.name for c in ALERTS.columns])
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(sa.select(ALERTS).order_by(ALERTS.c.id.desc()).limit(limit)).mappings().all()
    finally:
        engine.dispose()
    return pd.DataFrame(rows, columns=[c.name for c in ALERTS.columns])


def record_feedback(url: str, labels: pd.DataFrame, classes_of: ClassesOf | None = None) -> int:
    """Store gold labels for served rows (columns request_id, row_index, label) after checking every row
    (:func:`monitoring.feedback.check_feedback`: served keys, integer labels in the class set of the
    version that answered each row, by default read from the registry on the current tracking URI); any
    problem raises :class:`monitoring.feedback.FeedbackError` and stores nothing. Returns how many rows
    were stored (a row labelled twice keeps the last label; re-sending a label replaces it)."""
    from weakflow.monitoring.feedback import check_feedback

    if classes_of is None:
        from weakflow.deploy.model import registered_classes as classes_of
    engine = make_engine(url)
    try:
        def served(ids: list[str]) -> dict[tuple[str, int], tuple[str, str]]:
            with engine.connect() as conn:
                return {(r, int(i)): (name, str(version)) for r, i, name, version in conn.execute(
                    sa.select(PREDICTIONS.c.request_id, PREDICTIONS.c.row_index, PREDICTIONS.c.model_name,
                              PREDICTIONS.c.model_version).where(PREDICTIONS.c.request_id.in_(ids)))}

        latest = {(r, i): label for r, i, label in check_feedback(labels, served, classes_of)}  # the last wins
        keys = list(latest)
        with engine.begin() as conn:
            conn.execute(FEEDBACK.delete().where(FEEDBACK.c.request_id.in_(sorted({r for r, _ in keys}))).where(
                sa.tuple_(FEEDBACK.c.request_id, FEEDBACK.c.row_index).in_(keys)))
            now = datetime.now(timezone.utc)
            conn.execute(FEEDBACK.insert(), [{"request_id": r, "row_index": i, "label": str(label), "ts": now}
                                             for (r, i), label in latest.items()])
        return len(keys)
    finally:
        engine.dispose()
