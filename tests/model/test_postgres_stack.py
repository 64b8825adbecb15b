"""The stack on PostgreSQL, for real: `WEAKFLOW_DB=postgres bash deploy/servers.sh start` starts a local
PostgreSQL (deploy/postgres.sh), the MLflow tracking server with its backend store in it and the Prefect
server with its database in it; one pipeline run against both; then the registry read through MLflow and
straight from the two PostgreSQL databases. Without PostgreSQL installed the test skips, or fails when
WEAKFLOW_REQUIRE_SERVICES=1 (CI, which installs it: .ci/run)."""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import tempfile
from pathlib import Path

import httpx
import pytest
from mlflow import MlflowClient

from tests.conftest import FAST, free_port

ROOT = Path(__file__).resolve().parents[2]
MODEL = "weakflow-classifier"


def _require_postgres() -> None:
    check = subprocess.run(["bash", str(ROOT / "deploy" / "postgres.sh"), "check"], capture_output=True, text=True,
                           timeout=30)
    if check.returncode != 0:
        reason = f"PostgreSQL is not available: {check.stderr.strip()}"
        if os.environ.get("WEAKFLOW_REQUIRE_SERVICES") == "1":
            pytest.fail(f"{reason} (WEAKFLOW_REQUIRE_SERVICES=1: this test must run)")
        pytest.skip(reason)


def _query(url: str, sql: str) -> list[tuple]:
    import psycopg2

    with psycopg2.connect(url, connect_timeout=10) as conn, conn.cursor() as cur:
        cur.execute(sql)
        rows = cur.fetchall()
    conn.close()
    return rows


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_pipeline_on_postgresql_backed_mlflow_and_prefect_servers(tmp_path):
    _require_postgres()
    # Not under tmp_path: as root the cluster runs as the `postgres` OS user, which cannot enter pytest's
    # root-only temp folder. The script makes this folder its own.
    pg_dir = Path(tempfile.mkdtemp(prefix="weakflow-pg-"))
    servers = tmp_path / "servers"
    ports = {"PREFECT_PORT": free_port(), "MLFLOW_PORT": free_port(), "PG_PORT": free_port()}
    password = f"pw-{secrets.token_hex(6)}"  # not the default, so the URLs really carry PG_PASSWORD
    env = {**os.environ, "WEAKFLOW_DB": "postgres", "WEAKFLOW_SERVERS_DIR": str(servers), "WEAKFLOW_PG_DIR": str(pg_dir),
           "WEAKFLOW_VENV": str(ROOT / ".venv"), "PG_PASSWORD": password, **{k: str(v) for k, v in ports.items()}}
    env.pop("PREFECT_API_DATABASE_CONNECTION_URL", None)
    env.pop("MLFLOW_BACKEND_STORE_URI", None)
    pg = f"weakflow:{password}@127.0.0.1:{ports['PG_PORT']}"

    def script(name: str, *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
        return subprocess.run(["bash", str(ROOT / "deploy" / name), *args], env=env, cwd=ROOT,
                              capture_output=True, text=True, timeout=timeout)

    stopped = None
    try:
        started = script("servers.sh", "start")
        assert started.returncode == 0, started.stderr + started.stdout
        assert f"postgres up: 127.0.0.1:{ports['PG_PORT']}" in started.stdout
        trained = script("servers.sh", "train", *sum((["--set", o] for o in FAST), []), timeout=700)
        assert trained.returncode == 0, trained.stderr[-3000:] + trained.stdout[-2000:]

        # the registry, through the MLflow server
        client = MlflowClient(f"http://127.0.0.1:{ports['MLFLOW_PORT']}")
        mv = client.get_model_version_by_alias(MODEL, "champion")
        assert str(mv.version) == "1"
        assert mv.tags["validation"] == "passed" and mv.tags["governance"] == "passed"
        assert mv.tags["gate_verdict"] == "passed"

        # ... and where it really lives: MLflow's tables in the `mlflow` database
        mlflow_db = f"postgresql://{pg}/mlflow"
        assert _query(mlflow_db, "SELECT name FROM registered_models") == [(MODEL,)]
        assert _query(mlflow_db, "SELECT name, version FROM model_versions") == [(MODEL, 1)]
        assert _query(mlflow_db, "SELECT alias, version FROM registered_model_aliases") == [("champion", 1)]
        tags = dict(_query(mlflow_db, "SELECT key, value FROM model_version_tags WHERE version = 1"))
        assert tags["validation"] == "passed" and tags["governance"] == "passed"
        [(n_runs,)] = _query(mlflow_db, "SELECT count(*) FROM runs WHERE status = 'FINISHED'")
        assert n_runs >= 10  # the parent run and one per stage

        # the run was orchestrated by the Prefect server, whose state is in the `prefect` database
        flows = httpx.post(f"http://127.0.0.1:{ports['PREFECT_PORT']}/api/flow_runs/filter", json={}).json()
        assert [f["state_type"] for f in flows] == ["COMPLETED"]
        prefect_db = f"postgresql://{pg}/prefect"
        assert _query(prefect_db, "SELECT f.name, r.state_type::text FROM flow_run r JOIN flow f ON f.id = r.flow_id"
                      ) == [("weakflow-training", "COMPLETED")]
        [(n_tasks,)] = _query(prefect_db, "SELECT count(*) FROM task_run WHERE state_type = 'COMPLETED'")
        assert n_tasks >= 9

        # no SQLite store anywhere; the artifacts went through the server into its folder
        assert not list(servers.rglob("*.db")), list(servers.rglob("*.db"))
        assert any((servers / "mlartifacts").rglob("MLmodel"))
        status = script("servers.sh", "status").stdout
        assert f"postgres running (port {ports['PG_PORT']}" in status
    finally:
        try:
            stopped = script("servers.sh", "stop", timeout=180)
        finally:
            if (pg_dir / "data" / "postmaster.pid").exists():  # servers.sh stop failed: stop the cluster anyway
                script("postgres.sh", "stop", timeout=120)
            shutil.rmtree(pg_dir, ignore_errors=True)
    assert stopped.returncode == 0, stopped.stderr
    assert "postgres stopped" in stopped.stdout
