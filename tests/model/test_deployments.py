"""The deployments against a real `prefect server` the test starts: the cron deployment gets a scheduled
run, and a `weakflow.drift.detected` event for the model starts a training flow run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import FAST, free_port

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent



def wait_for(fn, timeout: float, what: str):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = fn()
        if value:
            return value
        time.sleep(1)
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")


def test_deployments_run_one_at_a_time_and_the_trigger_cools_down(tmp_path):
    """No server needed: what `weakflow deploy` would register. A drift trigger must not pile up training
    runs: one active run per deployment (a second is cancelled), one trigger firing per model version per
    cool-down."""
    from datetime import timedelta

    from prefect.client.schemas.objects import ConcurrencyLimitStrategy

    from weakflow.flows.deployments import build_deployments
    from tests.conftest import fast_config

    cfg = fast_config(tmp_path, "monitoring.alert_cooldown_minutes=90")
    training, monitoring = build_deployments(cfg, "0 3 * * *", 600)
    for d in (training, monitoring):
        assert d.concurrency_limit == 1
        assert d.concurrency_options.collision_strategy == ConcurrencyLimitStrategy.CANCEL_NEW
    [trigger] = training.triggers
    assert trigger.within == timedelta(minutes=90) and trigger.for_each == {"prefect.resource.id"}
    assert trigger.expect == {"weakflow.drift.detected"} and trigger.posture == "Reactive"


@pytest.mark.slow
def test_schedule_and_drift_trigger_on_a_real_prefect_server(tmp_path):
    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect"), "PREFECT_API_URL": api,
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1",
           "PREFECT_API_SERVICES_SCHEDULER_LOOP_SECONDS": "2"}
    server = subprocess.Popen([str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    runner = None
    try:
        wait_for(lambda: _ok(f"{api}/health"), 120, "the Prefect server")
        sets = sum((["--set", o] for o in FAST), [])
        runner = subprocess.Popen([str(BIN / "weakflow"), "deploy", "--workspace", str(tmp_path / "ws"), "--cron",
                                   "0 3 * * *", "--interval", "3600", *sets], env=env, cwd=ROOT,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
        deployments = wait_for(lambda: _post(f"{api}/deployments/filter", {}) if len(
            _post(f"{api}/deployments/filter", {})) == 2 else None, 120, "two deployments")
        by_name = {d["name"]: d for d in deployments}
        assert set(by_name) == {"scheduled", "interval"}
        training = by_name["scheduled"]
        scheduled = wait_for(lambda: [r for r in _runs(api, training["id"]) if r["state_type"] == "SCHEDULED"],
                             90, "a scheduled run of the cron deployment")
        assert scheduled[0]["expected_start_time"][11:16] == "03:00"
        automations = _post(f"{api}/automations/filter", {})
        assert any("weakflow.drift.detected" in str(a["trigger"]) for a in automations)
        assert training["global_concurrency_limit"]["limit"] == 1
        assert training["concurrency_options"]["collision_strategy"] == "CANCEL_NEW"
        before = {r["id"] for r in _runs(api, training["id"])}
        emit = ("from monitoring.alerts import emit_drift_event; "
                "print(emit_drift_event('weakflow-classifier', '1', {'drift_share': 0.5, 'drifted_columns': ['px_1']}))")
        subprocess.run([sys.executable, "-c", emit], env=env, cwd=ROOT, check=True, timeout=60)
        triggered = wait_for(lambda: [r for r in _runs(api, training["id"]) if r["id"] not in before
                                      and r["state_type"] != "SCHEDULED" or (r["id"] not in before and
                                      r["expected_start_time"][11:16] != "03:00")], 90, "a drift-triggered run")
        assert triggered[0]["parameters"]["cfg"]["tracking"]["model_name"] == "weakflow-classifier"
    finally:
        for proc in (runner, server):
            if proc is not None and proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)


def _ok(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _post(url: str, body: dict) -> list:
    try:
        return httpx.post(url, json=body, timeout=5).json()
    except httpx.HTTPError:
        return []


def _runs(api: str, deployment_id: str) -> list[dict]:
    return _post(f"{api}/flow_runs/filter", {"flow_runs": {"deployment_id": {"any_": [deployment_id]}}})
