"""deploy/servers.sh end to end: a real Prefect server and MLflow server, a pipeline run against both,
the model server on their champion, and a clean stop that flushes the prediction log."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import httpx
import pandas as pd
import pytest
from mlflow import MlflowClient

from weakflow.deploy.prediction_log import count_rows
from tests.conftest import FAST, free_port

ROOT = Path(__file__).resolve().parents[2]



@pytest.mark.slow
def test_servers_script_runs_the_pieces_for_real(tmp_path):
    ports = {"PREFECT_PORT": free_port(), "MLFLOW_PORT": free_port(), "SERVE_PORT": free_port()}
    env = {**os.environ, "WEAKFLOW_SERVERS_DIR": str(tmp_path / "servers"), "WEAKFLOW_VENV": str(ROOT / ".venv"),
           "WEAKFLOW_DB": "sqlite",  # the default store; tests/model/test_postgres_stack.py covers PostgreSQL
           **{k: str(v) for k, v in ports.items()}}

    def script(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
        return subprocess.run(["bash", str(ROOT / "deploy" / "servers.sh"), *args], env=env, cwd=ROOT,
                              capture_output=True, text=True, timeout=timeout)

    try:
        started = script("start")
        assert started.returncode == 0, started.stderr + started.stdout
        trained = script("train", *sum((["--set", o] for o in FAST), []), timeout=600)
        assert trained.returncode == 0, trained.stderr[-3000:]
        mlflow_url = f"http://127.0.0.1:{ports['MLFLOW_PORT']}"
        mv = MlflowClient(mlflow_url).get_model_version_by_alias("weakflow-classifier", "champion")
        assert str(mv.version) == "1"
        flows = httpx.post(f"http://127.0.0.1:{ports['PREFECT_PORT']}/api/flow_runs/filter", json={}).json()
        assert [f["state_type"] for f in flows] == ["COMPLETED"]  # the run was orchestrated by the real server
        served = script("serve")
        assert served.returncode == 0, served.stderr + served.stdout
        data = next((tmp_path / "servers" / "workspace" / "data").glob("demo-*"))
        record = pd.read_parquet(data / "test.parquet").drop(columns=["label"]).iloc[0].astype(float).to_dict()
        r = httpx.post(f"http://127.0.0.1:{ports['SERVE_PORT']}/predict", json={"records": [record, record]})
        assert r.status_code == 200 and r.json()["model_version"] == "1"
        scheduled = script("schedule")
        assert scheduled.returncode == 0, scheduled.stderr + scheduled.stdout
        deployments = httpx.post(f"http://127.0.0.1:{ports['PREFECT_PORT']}/api/deployments/filter", json={}).json()
        assert sorted(d["name"] for d in deployments) == ["interval", "scheduled"]
        training = next(d for d in deployments if d["name"] == "scheduled")
        assert [s["schedule"]["cron"] for s in training["schedules"]] == ["0 3 * * *"]
        status = script("status").stdout
        assert "serve running" in status and "schedule running" in status
    finally:
        stopped = script("stop")
    assert stopped.returncode == 0, stopped.stderr
    status = script("status").stdout
    assert "serve not running" in status and "schedule not running" in status
    assert count_rows(f"sqlite:///{tmp_path / 'servers' / 'predictions.db'}") == 2
