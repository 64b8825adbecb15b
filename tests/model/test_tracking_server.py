"""`--tracking-uri` against a real `mlflow server` that the test starts and stops itself."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from mlflow import MlflowClient

from tests.conftest import fast_config, free_port



@pytest.fixture()
def mlflow_server(tmp_path):
    port = free_port()
    mlflow_bin = Path(sys.executable).parent / "mlflow"
    proc = subprocess.Popen(
        [str(mlflow_bin), "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}", "--artifacts-destination", str(tmp_path / "store")],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True,
        env={**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"},
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"mlflow server exited: {proc.stderr.read().decode()[-2000:]}")
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.5)
    else:
        raise RuntimeError("mlflow server did not become healthy in 120 s")
    yield url, tmp_path / "store"
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)


@pytest.mark.slow
def test_pipeline_against_a_real_tracking_server(prefect_harness, mlflow_server, tmp_path):
    from weakflow.flows.pipeline import training_pipeline

    url, store = mlflow_server
    cfg = fast_config(tmp_path / "ws", f"tracking.tracking_uri={url}")
    result = training_pipeline(cfg)
    assert result.tracking_uri == url
    client = MlflowClient(url)
    mv = client.get_model_version_by_alias(cfg.tracking.model_name, "champion")
    assert str(mv.version) == result.registration.version == "1"
    runs = client.search_runs([result.experiment_id], f"tags.mlflow.parentRunId = '{result.run_id}'")
    assert sorted(r.info.run_name for r in runs) == sorted([  # one run per stage
        "validate", "governance", "weak_labels", "gold_only", "weak_train", "pseudo_label", "pseudo_governance",
        "full_train", "select", "evaluate", "register", "publish"])
    # artifacts went through the server into its store, not into the local workspace
    assert any(store.rglob("MLmodel"))
    assert not (tmp_path / "ws" / "mlflow.db").exists()
