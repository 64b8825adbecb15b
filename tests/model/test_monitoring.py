"""Drift monitoring on real traffic through the in-process model server: detected for each shift, quiet
without one; alerts (Prefect event read back from the API, webhook to a local HTTP server, alerts row)
once per detection, and not again for the same model version within the cool-down."""

from __future__ import annotations

import json
import threading
import time
import uuid
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, HTTPServer

import numpy as np

import mlflow
import pandas as pd
import pytest
from mlflow import MlflowClient

from weakflow.monitoring.alerts import DRIFT_EVENT, Alert, list_alerts, post_webhook, raise_once, record_feedback
from weakflow.monitoring.drift import DriftResult, DriftRule, decide, drift_report
from weakflow.monitoring.traffic import send, shifted_rows
from weakflow.tasks.lib.data import materialize_demo
from tests.conftest import fast_config


def test_rule_on_hand_made_numbers():
    rule = DriftRule(drift_share=0.3, prediction_drift=True, min_rows=100)
    assert not decide(DriftResult(500, 0.29, ["a"], 0.2, False), rule).drift
    v = decide(DriftResult(500, 0.3, ["a", "b"], 0.2, False), rule)
    assert v.drift and "30% of feature columns drifted" in v.text and "a, b" in v.text
    assert decide(DriftResult(500, 0.0, [], 1e-6, True), rule).drift
    assert not decide(DriftResult(500, 0.0, [], 1e-6, True), DriftRule(0.3, prediction_drift=False)).drift
    few = decide(DriftResult(50, 0.9, ["a"], 1e-9, True), rule)
    assert not few.drift and not few.checked and "fewer than min_rows=100" in few.text


def test_drift_report_pins_its_tests_and_sees_a_changed_constant():
    """A reference over 1000 rows would make Evidently switch to distances; pinned, every value is a
    p-value. A column constant on both sides at a different value is drift; at the same value, ignored."""
    rng = np.random.default_rng(0)

    def frame(n, shift, const_d):
        return pd.DataFrame({"a": rng.normal(shift, 1, n), "b": rng.normal(0, 1, n), "c": 0.0, "d": const_d,
                             "prediction": rng.integers(0, 4, n)})

    ref, cur = frame(1500, 0.0, 0.0), frame(300, 1.0, 5.0)
    result = drift_report(ref, cur, ["a", "b", "c", "d"])
    methods = {m["config"]["column"]: m["config"]["method"] for m in result.snapshot.dict()["metrics"]
               if m["metric_name"].startswith("ValueDrift(")}
    assert methods == {"a": "ks", "b": "ks", "prediction": "chisquare"}
    assert result.drifted_columns == ["a", "d"] and result.drift_share == pytest.approx(2 / 3)
    assert 0.05 <= result.prediction_p <= 1 and not result.prediction_drifted
    quiet = drift_report(ref, frame(300, 0.0, 0.0), ["a", "b", "c", "d"])
    assert quiet.drifted_columns == [] and quiet.drift_share == 0.0
    from weakflow.monitoring.drift import _value_drifted

    assert _value_drifted("ks", 0.01, 0.05) and not _value_drifted("ks", 0.2, 0.05)
    assert _value_drifted("wasserstein", 0.2, 0.1) and not _value_drifted("jensenshannon", 0.05, 0.1)


def test_webhook_never_raises():
    assert post_webhook("http://[::1/hook", {"a": 1}, retries=3).startswith("failed: InvalidURL")
    assert post_webhook("hooks.example/none", {"a": 1}, retries=3).startswith("failed: UnsupportedProtocol")
    assert post_webhook("http://127.0.0.1:9/hook", {"a": object()}, retries=3).startswith("failed: TypeError")


def test_alert_row_once_per_detection_and_cool_down(prefect_harness, tmp_path):
    """The row is written even when the event cannot be emitted and the webhook URL is broken; a second
    detection for the same version within the cool-down raises nothing; another version, or after the
    cool-down, alerts again; cool-down 0 never suppresses.

    The first event fails in Prefect's real emitter: its payload (a drifted-column list of a very wide
    table) is over the server's event size limit, so ``emit_event`` raises ``EventTooLarge``. The later
    ones are emitted to the test harness's API and read back from it."""
    from prefect.settings import get_current_settings

    url = f"sqlite:///{tmp_path / 'log.db'}"
    name = f"cooldown-{uuid.uuid4().hex[:8]}"  # its own resources: no other test's events in the read-back
    since = datetime.now(timezone.utc)
    limit = get_current_settings().server.events.maximum_size_bytes
    wide = {"drifted_columns": [f"feature_{i:09d}" for i in range(limit // 12)]}  # over the limit as JSON
    alert = Alert("drift", name, "1", 0.5, ["px_1"], True, "uri", "DRIFT: test")
    t0 = datetime.now(timezone.utc)
    first = raise_once(url, DRIFT_EVENT, alert, wide, "http://[::1/hook", cooldown_minutes=60, now=t0)
    assert first.alert_id == 1 and first.event_id is None and first.webhook.startswith("failed: InvalidURL")
    assert first.text == f"alert 1, event not emitted, webhook {first.webhook}"
    row = list_alerts(url).iloc[0]
    assert row["webhook"] == first.webhook and "[event not emitted: EventTooLarge: " in row["message"]
    assert row["message"].startswith("DRIFT: test [event not emitted: ")
    again = raise_once(url, DRIFT_EVENT, alert, {"x": 1}, cooldown_minutes=60, now=t0 + timedelta(minutes=30))
    assert again.alert_id is None and again.text.startswith("suppressed: alerted at ") and "cool-down 60 min" in again.text
    other = raise_once(url, DRIFT_EVENT, Alert(**{**alert.__dict__, "model_version": "2"}), {"x": 1},
                       cooldown_minutes=60, now=t0 + timedelta(minutes=30))
    later = raise_once(url, DRIFT_EVENT, alert, {"x": 1}, cooldown_minutes=60, now=t0 + timedelta(minutes=61))
    off = raise_once(url, DRIFT_EVENT, alert, {"x": 1}, cooldown_minutes=0, now=t0 + timedelta(minutes=62))
    assert (other.alert_id, later.alert_id, off.alert_id) == (2, 3, 4)
    assert len(list_alerts(url)) == 4 and all(r.event_id for r in (other, later, off))
    assert not any("event not emitted" in m for m in list_alerts(url)["message"].iloc[:3])  # rows 4, 3, 2
    # what reached Prefect: one event per raised alert except the first, none for the suppressed detection
    v1 = drift_events(f"weakflow.model.{name}.v1", since)
    v2 = drift_events(f"weakflow.model.{name}.v2", since)
    assert sorted(str(e.id) for e in v1) == sorted([later.event_id, off.event_id])
    assert sorted(e.payload["alert_id"] for e in v1) == [3, 4]
    assert [str(e.id) for e in v2] == [other.event_id] and v2[0].payload["alert_id"] == 2


@pytest.fixture(scope="module")
def champion(prefect_harness, tmp_path_factory):
    from weakflow.flows.pipeline import training_pipeline

    ws = tmp_path_factory.mktemp("ws")
    cfg = fast_config(ws)
    training_pipeline(cfg)
    mlflow.set_tracking_uri(cfg.tracking.resolved_uri)
    spec = materialize_demo(cfg.data, ws / "data")
    return cfg, spec, pd.read_parquet(spec.test_path)


class Hook(BaseHTTPRequestHandler):
    received: list[dict] = []
    fail_first = 0

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        body = json.loads(self.rfile.read(int(self.headers["content-length"])))
        if Hook.fail_first > 0:
            Hook.fail_first -= 1
            self.send_response(503)
        else:
            Hook.received.append(body)
            self.send_response(200)
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


@pytest.fixture()
def webhook():
    server = HTTPServer(("127.0.0.1", 0), Hook)
    Hook.received, Hook.fail_first = [], 1  # the first attempt fails: the retry must deliver it
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/hook"
    server.shutdown()


def drift_events(resource_id: str, since: datetime, timeout: float = 30.0) -> list:
    """The ``weakflow.drift.detected`` events for a model version since ``since``, read back from the
    Prefect API. Events are sent and persisted asynchronously (the persister flushes every few seconds),
    so a barrier event is emitted after everything under test and awaited: the client sends over one
    connection in order and the server persists in order, so once the barrier is stored every earlier
    event is too, and the count is final (an extra event cannot arrive later)."""
    from prefect import get_client
    from prefect.events import emit_event
    from prefect.events.filters import EventFilter, EventNameFilter, EventOccurredFilter, EventResourceFilter

    barrier = emit_event(event="weakflow.test.barrier", resource={"prefect.resource.id": resource_id})
    assert barrier is not None, "no Prefect API to read events back from"
    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        while time.monotonic() < deadline:
            page = client.read_events(EventFilter(
                occurred=EventOccurredFilter(since=since, until=datetime.now(timezone.utc) + timedelta(minutes=1)),
                event=EventNameFilter(name=[DRIFT_EVENT, "weakflow.test.barrier"]),
                resource=EventResourceFilter(id=[resource_id])), limit=50)
            if any(e.id == barrier.id for e in page.events):
                return [e for e in page.events if e.event == DRIFT_EVENT]
            time.sleep(0.5)
    pytest.fail(f"the barrier event was not persisted within {timeout:.0f} s")


def write_old_version_rows(log_url: str, model_name: str, rows: pd.DataFrame, features: list[str]) -> None:
    """Rows as if served by an earlier version (here: shifted ones) - a window of v1 must not include them."""
    from weakflow.deploy.prediction_log import PREDICTIONS, make_engine

    engine = make_engine(log_url)
    now = datetime.now(timezone.utc)
    with engine.begin() as conn:
        conn.execute(PREDICTIONS.insert(), [
            {"ts": now, "request_id": f"old-{i}", "row_index": 0, "model_name": model_name, "model_version": "0",
             "features": json.dumps({f: float(v) for f, v in zip(features, row)}), "predicted_class": 0,
             "confidence": 0.99} for i, row in enumerate(rows[features].to_numpy())])
    engine.dispose()


def serve_traffic(cfg, log_url: str, rows: pd.DataFrame, spec):
    from fastapi.testclient import TestClient

    from weakflow.deploy.serve import create_app

    with TestClient(create_app(cfg.tracking.model_name, poll_seconds=0, log_url=log_url)) as client:
        return send(client, rows, spec.feature_columns, spec.label_column, batch=20)


@pytest.mark.parametrize("shift", ["none", "noise", pytest.param("brightness", marks=pytest.mark.slow),
                                   pytest.param("prior", marks=pytest.mark.slow)])  # ~10-20 s each
def test_drift_detected_for_each_shift_and_quiet_without(champion, tmp_path, webhook, shift):
    from weakflow.flows.monitor import monitoring_flow

    from evidently.ui.workspace import Workspace

    cfg, spec, test = champion
    since = datetime.now(timezone.utc)
    log_url = f"sqlite:///{tmp_path / 'log.db'}"
    traffic = serve_traffic(cfg, log_url, shifted_rows(test, spec.feature_columns, "label", shift, 360, seed=1), spec)
    assert traffic.answered == 18 and not traffic.errors
    if shift == "none":  # delayed gold labels for half the rows: quality joins the report
        mlflow.set_tracking_uri(cfg.tracking.resolved_uri)  # the labels are checked against v1's classes there
        record_feedback(log_url, pd.DataFrame(traffic.feedback[:180]))
        # and the newest rows are a previous version's, shifted: the v1 window must leave them out
        write_old_version_rows(log_url, cfg.tracking.model_name,
                               shifted_rows(test, spec.feature_columns, "label", "brightness", 200, seed=2),
                               spec.feature_columns)
    run_cfg = fast_config(cfg.tracking.workspace, f"serve.prediction_log_url={log_url}", "governance.production=warn",
                          "monitoring.window_rows=360", f"monitoring.webhook_url={webhook}",
                          f"monitoring.evidently_workspace={tmp_path / 'evidently'}")
    result = monitoring_flow(run_cfg)
    assert result.check.verdict.checked and result.check.result.rows == 360
    assert result.check.verdict.drift == (shift != "none"), result.check.verdict.text
    client = MlflowClient(cfg.tracking.resolved_uri)
    run = client.get_run(result.check.run_id)
    assert run.data.tags["model_version"] == "1" and run.data.tags["verdict"] == ("no_drift" if shift == "none" else "drift")
    arts = {a.path for a in client.list_artifacts(run.info.run_id, "drift")}
    assert {"drift/drift_report.html", "drift/drift_report.json", "drift/summary.json"} <= arts
    assert client.get_model_version(cfg.tracking.model_name, "1").tags["last_drift_check"].startswith(run.info.run_id)
    ws = Workspace(str(tmp_path / "evidently"))  # what `evidently ui` lists: this check's snapshot(s)
    [project] = [p for p in ws.list_projects() if p.name == f"weakflow-monitoring/{cfg.tracking.model_name}"]
    assert result.check.evidently_runs and set(result.check.evidently_runs) == {str(r) for r in ws.list_runs(project.id)}
    assert all(ws.get_run(project.id, r) is not None for r in result.check.evidently_runs)
    alerts = list_alerts(log_url)
    if shift == "none":
        assert alerts.empty and Hook.received == []
        assert result.check.result.quality["labelled_rows"] == 180 and result.check.result.quality["accuracy"] > 0.8
        assert {"drift/quality_report.html"} <= arts
    else:
        assert len(alerts) == 1 and alerts.loc[0, "webhook"] == "sent" and alerts.loc[0, "model_version"] == "1"
        assert len(Hook.received) == 1  # retried once after the 503, delivered once
        hook = Hook.received[0]
        assert hook["event"] == "weakflow.drift.detected" and hook["version"] == "1"
        assert hook["drift_share"] == pytest.approx(alerts.loc[0, "drift_share"])
        assert result.alert["event_id"] is not None and result.alert["suppressed"] is None
        assert run.data.tags["alert"].startswith(f"alert {alerts.loc[0, 'id']}, event {result.alert['event_id']}")
    resource = f"weakflow.model.{cfg.tracking.model_name}.v1"
    if shift == "prior":  # the same check through the console script: within the cool-down, nothing is raised
        from weakflow.flows.cli import main
        from tests.conftest import FAST

        args = ["--workspace", str(cfg.tracking.workspace), *sum((["--set", o] for o in FAST), []),
                "--set", f"serve.prediction_log_url={log_url}", "--set", "monitoring.window_rows=360",
                "--set", "governance.production=warn",
                "--set", f"monitoring.evidently_workspace={tmp_path / 'evidently'}"]
        assert main(["monitor", *args]) == 0
        assert len(list_alerts(log_url)) == 1 and len(Hook.received) == 1  # suppressed: no row, no webhook
        [again] = client.search_runs([run.info.experiment_id], "tags.verdict = 'drift'", order_by=["start_time DESC"],
                                     max_results=1)
        assert again.info.run_id != run.info.run_id and again.data.tags["alert"].startswith("suppressed: alerted at ")
        assert "(cool-down 360 min" in again.data.tags["alert"]
        assert main(["alerts", *args]) == 0
    events = drift_events(resource, since)  # exactly one per detection, none without
    assert [str(e.id) for e in events] == ([] if shift == "none" else [result.alert["event_id"]])
    if events:
        assert events[0].payload["mlflow_run_id"] == run.info.run_id and events[0].payload["alert_id"] == alerts.loc[0, "id"]


def test_too_few_rows_make_no_report_and_no_alert(champion, tmp_path):
    from weakflow.flows.monitor import monitoring_flow

    cfg, _, _ = champion
    log_url = f"sqlite:///{tmp_path / 'log.db'}"  # nothing served yet
    run_cfg = fast_config(cfg.tracking.workspace, f"serve.prediction_log_url={log_url}",
                          f"monitoring.evidently_workspace={tmp_path / 'evidently'}")
    result = monitoring_flow(run_cfg)
    assert not result.check.verdict.checked and result.alert is None and result.check.result.rows == 0
    assert result.check.report_uri == "" and result.check.evidently_runs == []
    client = MlflowClient(cfg.tracking.resolved_uri)
    assert {a.path for a in client.list_artifacts(result.check.run_id, "drift")} == {"drift/summary.json"}
    assert client.get_run(result.check.run_id).data.tags["verdict"] == "not_checked" and list_alerts(log_url).empty


def test_served_test_and_training_rows_raise_a_contamination_alert(champion, tmp_path, capfd):
    """Through the console script, as a user runs it: `weakflow monitor` prints the contamination alert
    with its overlap counts, and `weakflow alerts` lists them on the alert's line."""
    from weakflow.flows.cli import main
    from tests.conftest import FAST

    cfg, spec, test = champion
    train = pd.read_parquet(spec.train_path)
    unlabeled = train[train["provenance"] == "unlabeled"].head(50).assign(label=0)
    noise = shifted_rows(test, spec.feature_columns, "label", "noise", 150, seed=3)
    rows = pd.concat([test.head(100), unlabeled[test.columns], noise], ignore_index=True)
    log_url = f"sqlite:///{tmp_path / 'log.db'}"
    assert serve_traffic(cfg, log_url, rows, spec).answered == 15
    args = ["--workspace", str(cfg.tracking.workspace), *sum((["--set", o] for o in FAST), []),
            "--set", f"serve.prediction_log_url={log_url}", "--set", "monitoring.window_rows=300",
            "--set", f"monitoring.evidently_workspace={tmp_path / 'evidently'}"]  # the default policy: alert
    capfd.readouterr()
    assert main(["monitor", *args]) == 0
    out = capfd.readouterr().out.splitlines()
    alerts = list_alerts(log_url)
    [alert] = alerts[alerts["kind"] == "contamination"].to_dict("records")
    counts = "evaluation_contamination 100 of 300 served rows, memorisation_exposure 50 of 300 served rows"
    assert out[-2].startswith(f"contamination: {counts} | alert raised (alerts row {alert['id']}, event "), out
    assert out[-1].startswith(f"{cfg.tracking.model_name} v1: ")  # the drift verdict stays the last line
    tag = MlflowClient(cfg.tracking.resolved_uri).get_model_version(cfg.tracking.model_name, "1").tags
    assert counts in tag["governance_post_deploy"] and alert["message"] == counts
    assert main(["alerts", *args]) == 0
    [line] = [x for x in capfd.readouterr().out.splitlines() if x.lstrip().startswith(f"{alert['id']} ")]
    assert " contamination " in line and line.rstrip().endswith(counts), line
