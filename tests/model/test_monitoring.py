"""Drift monitoring on real traffic through the in-process model server: detected for each shift, quiet
without one; alerts (Prefect event, webhook to a local HTTP server, alerts row) once per detection."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import mlflow
import pandas as pd
import pytest
from mlflow import MlflowClient

from monitoring.alerts import list_alerts, record_feedback
from monitoring.drift import DriftResult, DriftRule, decide
from monitoring.traffic import send, shifted_rows
from tasks.data import materialize_demo
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


@pytest.fixture(scope="module")
def champion(prefect_harness, tmp_path_factory):
    from flows.pipeline import training_pipeline

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


def serve_traffic(cfg, log_url: str, rows: pd.DataFrame, spec):
    from fastapi.testclient import TestClient

    from deploy.serve import create_app

    with TestClient(create_app(cfg.tracking.model_name, poll_seconds=0, log_url=log_url)) as client:
        return send(client, rows, spec.feature_columns, spec.label_column, batch=20)


@pytest.mark.parametrize("shift", ["none", "noise", "brightness", "prior"])
def test_drift_detected_for_each_shift_and_quiet_without(champion, tmp_path, webhook, shift):
    from flows.monitor import monitoring_flow

    cfg, spec, test = champion
    log_url = f"sqlite:///{tmp_path / 'log.db'}"
    traffic = serve_traffic(cfg, log_url, shifted_rows(test, spec.feature_columns, "label", shift, 360, seed=1), spec)
    assert traffic.answered == 18 and not traffic.errors
    if shift == "none":  # delayed gold labels for half the rows: quality joins the report
        record_feedback(log_url, pd.DataFrame(traffic.feedback[:180]))
    run_cfg = fast_config(cfg.tracking.workspace, f"serve.prediction_log_url={log_url}",
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
    assert any((tmp_path / "evidently").rglob("*.json"))  # the Evidently workspace got the snapshot
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
        assert result.alert["event_id"] is not None
    if shift == "prior":  # the same check through the console script, then the alerts listing
        from flows.cli import main
        from tests.conftest import FAST

        args = ["--workspace", str(cfg.tracking.workspace), *sum((["--set", o] for o in FAST), []),
                "--set", f"serve.prediction_log_url={log_url}", "--set", "monitoring.window_rows=360",
                "--set", f"monitoring.evidently_workspace={tmp_path / 'evidently'}"]
        assert main(["monitor", *args]) == 0
        assert len(list_alerts(log_url)) == 2  # one per detection: the flow above and this command
        assert main(["alerts", *args]) == 0


def test_served_test_and_training_rows_raise_a_contamination_alert(champion, tmp_path):
    from flows.monitor import monitoring_flow

    cfg, spec, test = champion
    train = pd.read_parquet(spec.train_path)
    unlabeled = train[train["provenance"] == "unlabeled"].head(50).assign(label=0)
    noise = shifted_rows(test, spec.feature_columns, "label", "noise", 150, seed=3)
    rows = pd.concat([test.head(100), unlabeled[test.columns], noise], ignore_index=True)
    log_url = f"sqlite:///{tmp_path / 'log.db'}"
    assert serve_traffic(cfg, log_url, rows, spec).answered == 15
    run_cfg = fast_config(cfg.tracking.workspace, f"serve.prediction_log_url={log_url}", "monitoring.window_rows=300",
                          "governance.production=alert", f"monitoring.evidently_workspace={tmp_path / 'evidently'}")
    result = monitoring_flow(run_cfg)
    assert result.contamination == {"evaluation_contamination": 100, "memorisation_exposure": 50}
    alerts = list_alerts(log_url)
    assert (alerts["kind"] == "contamination").sum() == 1
    tag = MlflowClient(cfg.tracking.resolved_uri).get_model_version(cfg.tracking.model_name, "1").tags
    assert "evaluation_contamination 100 of 300 served rows" in tag["governance_post_deploy"]
