"""Registry life cycle and the model server against a real temporary registry (two pipeline runs)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import mlflow
import pandas as pd
import pytest
from mlflow import MlflowClient

from weakflow.deploy import registry
from weakflow.deploy.prediction_log import count_rows
from weakflow.flows.cli import main
from tests.conftest import FAST, fast_config, free_port


@pytest.fixture(scope="module")
def two_versions(prefect_harness, tmp_path_factory):
    """v1 champion; v2 the same training but registered as challenger (its run demanded 100% accuracy)."""
    from weakflow.flows.pipeline import training_pipeline

    ws = tmp_path_factory.mktemp("ws")
    cfg = fast_config(ws)
    training_pipeline(cfg)
    training_pipeline(fast_config(ws, "gates.min_accuracy=1.0"))
    mlflow.set_tracking_uri(cfg.tracking.resolved_uri)
    return cfg


@pytest.fixture(autouse=True)
def registry_restored(two_versions):
    """Every test starts from the registry the fixture made and leaves it so: the champion alias, the
    challenger alias, the model's champion_history and every version's tags are put back afterwards, so
    promotions, rollbacks and hot reloads in one test cannot decide another's outcome (any order works)."""
    cfg = two_versions
    mlflow.set_tracking_uri(cfg.tracking.resolved_uri)  # the in-process server loads from the global URI
    client, name = MlflowClient(cfg.tracking.resolved_uri), cfg.tracking.model_name

    def snapshot() -> tuple[dict, dict, dict]:
        model = client.get_registered_model(name)
        return (dict(model.aliases), dict(model.tags),
                {mv.version: dict(mv.tags) for mv in client.search_model_versions(f"name = '{name}'")})

    aliases, model_tags, version_tags = snapshot()
    yield
    now_aliases, now_model_tags, now_version_tags = snapshot()
    for alias in set(now_aliases) - set(aliases):
        client.delete_registered_model_alias(name, alias)
    for alias, version in aliases.items():
        if now_aliases.get(alias) != version:
            client.set_registered_model_alias(name, alias, version)
    for key in set(now_model_tags) - set(model_tags):
        client.delete_registered_model_tag(name, key)
    for key, value in model_tags.items():
        if now_model_tags.get(key) != value:
            client.set_registered_model_tag(name, key, value)
    for version, tags in version_tags.items():
        now = now_version_tags.get(version, {})
        for key in set(now) - set(tags):
            client.delete_model_version_tag(name, version, key)
        for key, value in tags.items():
            if now.get(key) != value:
                client.set_model_version_tag(name, version, key, value)
    assert snapshot() == (aliases, model_tags, version_tags)


def cli(cfg, command: str, *rest: str) -> int:
    """The real console entry point, on the fixture's workspace and FAST settings (``rest`` wins)."""
    return main([command, "--workspace", str(cfg.tracking.workspace), *sum((["--set", o] for o in FAST), []), *rest])


def test_models_lists_versions_aliases_and_metrics(two_versions, capsys):
    cfg = two_versions
    frame = registry.list_versions(MlflowClient(cfg.tracking.resolved_uri), cfg.tracking.model_name)
    assert frame["version"].tolist() == [2, 1]
    assert frame["aliases"].tolist() == ["challenger", "champion"]
    assert frame["gate"].tolist() == ["failed", "passed"] and frame["test_accuracy"].between(0.5, 1).all()
    assert cli(cfg, "models") == 0
    out = capsys.readouterr().out
    assert "champion" in out and "challenger" in out


def test_promote_refused_by_the_gates_leaves_the_champion(two_versions, capsys):
    cfg = two_versions
    client = MlflowClient(cfg.tracking.resolved_uri)
    assert cli(cfg, "promote", "2", "--reason", "try", "--set", "gates.min_accuracy=1.0") == 1
    assert "not promoted" in capsys.readouterr().err and "below the minimum 1.0000" in \
        client.get_model_version(cfg.tracking.model_name, "2").tags["last_promotion_check"]
    assert registry.champion_version(client, cfg.tracking.model_name) == "1"
    assert cli(cfg, "promote", "7", "--reason", "x") == 1
    assert "has no version '7'" in capsys.readouterr().err


def test_promote_then_rollback_records_who_when_why(two_versions, capsys):
    cfg = two_versions
    client, name = MlflowClient(cfg.tracking.resolved_uri), cfg.tracking.model_name
    assert cli(cfg, "promote", "2", "--reason", "reviewed: same accuracy, newer data") == 0
    assert "v2 is champion (was v1)" in capsys.readouterr().out
    tags = client.get_model_version(name, "2").tags
    assert tags["promoted_reason"] == "reviewed: same accuracy, newer data"
    assert tags["previous_champion"] == "1" and tags["promoted_by"] and tags["promoted_at"]
    assert registry.champion_version(client, name) == "2"
    assert "challenger" not in client.get_registered_model(name).aliases  # v2 was the challenger
    assert cli(cfg, "rollback", "--reason", "canary errors") == 0
    assert registry.champion_version(client, name) == "1"
    v1 = client.get_model_version(name, "1").tags
    assert v1["rolled_back_reason"] == "canary errors" and v1["rolled_back_from"] == "2"
    assert v1["previous_champion"] == "none"  # its own history is kept, not overwritten by the step back
    assert cli(cfg, "rollback") == 1  # v1 was the first champion
    assert "no previous one" in capsys.readouterr().err


# --- the server -------------------------------------------------------------------------------------


def records(cfg, n: int, start: int = 0) -> list[dict]:
    from weakflow.tasks.lib.data import materialize_demo

    spec = materialize_demo(cfg.data, cfg.tracking.workspace / "data")
    test = pd.read_parquet(spec.test_path)
    return test[spec.feature_columns].iloc[start : start + n].astype(float).to_dict("records")


def test_server_in_process_answers_validates_and_logs(two_versions, tmp_path):
    from fastapi.testclient import TestClient

    from weakflow.deploy.serve import create_app

    cfg = two_versions
    log_url = f"sqlite:///{tmp_path / 'log.db'}"
    app = create_app(cfg.tracking.model_name, max_body_bytes=20_000, max_batch=8, poll_seconds=0, log_url=log_url)
    good = records(cfg, 5)
    answered = 0
    with TestClient(app) as client:
        r = client.post("/predict", json={"records": good})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["model_version"] == "1" and len(body["request_id"]) == 32
        assert len(body["predictions"]) == 5
        p = body["predictions"][0]
        assert set(p) == {"class", "confidence", "probabilities"}
        assert abs(sum(p["probabilities"].values()) - 1) < 1e-4 and p["confidence"] == max(p["probabilities"].values())
        answered += 5
        # one record per request, sequential and then concurrent (micro-batched): the same answers
        singles = [client.post("/predict", json={"records": [g]}).json()["predictions"][0] for g in good]
        with ThreadPoolExecutor(5) as pool:
            together = list(pool.map(lambda g: client.post("/predict", json={"records": [g]}).json()["predictions"][0],
                                     good))
        answered += 10
        for a, b in zip(singles, together):
            assert a["class"] == b["class"] and a["probabilities"] == pytest.approx(b["probabilities"], abs=2e-6)
        assert [p["class"] for p in singles] == [p["class"] for p in body["predictions"]]
        missing = {k: v for k, v in good[0].items() if k != "px_3"}
        cases = {
            "records[0].px_3": {"records": [missing]},
            "records[0].extra": {"records": [{**good[0], "extra": 1.0}]},
            "records[1].px_7": {"records": [good[0], {**good[1], "px_7": "seven"}]},
            "records": {"records": good * 2},  # 10 > max_batch 8
            "records.": {"records": []},
        }
        for field, payload in cases.items():
            r = client.post("/predict", json=payload)
            assert r.status_code == 422, (field, r.text)
            assert any(d["field"].startswith(field.rstrip(".")) for d in r.json()["detail"]), (field, r.json())
        for token in ("NaN", "Infinity", "-Infinity", "1e999", "1e39"):  # 1e39: finite JSON, beyond float32
            raw = json.dumps({"records": [good[0], {**good[1], "px_10": "@"}]}).replace('"@"', token)
            r = client.post("/predict", content=raw, headers={"content-type": "application/json"})
            assert r.status_code == 422 and r.json()["detail"][0]["field"] == "records[1].px_10", (token, r.text)
        r = client.post("/predict", content=b"{not json", headers={"content-type": "application/json"})
        assert r.status_code == 422
        r = client.post("/predict", content=b"x" * 20_001, headers={"content-type": "application/json"})
        assert r.status_code == 413
        health = client.get("/health").json()
        assert health["status"] == "ok" and health["prediction_log"]["writer_alive"]  # bad requests took nothing down
        assert health["rows_predicted"] == answered  # a refused request never reached the model
        assert client.app.state.weakflow["log"].flush(10) and count_rows(log_url) == answered
        info = client.get("/model").json()
        assert info["version"] == "1" and len(info["features"]) == 64 and info["classes"] == list(range(10))
        r = client.post("/predict", json={"records": good[:2]})
        assert r.status_code == 200
        answered += 2
    assert count_rows(log_url) == answered  # flushed at shutdown, bad requests never logged



def test_server_subprocess_hot_reload_under_traffic_and_flush_on_sigterm(two_versions, tmp_path):
    cfg = two_versions
    client, name = MlflowClient(cfg.tracking.resolved_uri), cfg.tracking.model_name
    port, log_db = free_port(), tmp_path / "served.db"
    cmd = [str(Path(sys.executable).parent / "weakflow"), "serve", "--port", str(port),
           "--workspace", str(cfg.tracking.workspace), "--set", "serve.poll_seconds=0.3",
           "--set", f"serve.prediction_log_url=sqlite:///{log_db}"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 90
        while time.time() < deadline:
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.3)
            assert proc.poll() is None, proc.stdout.read()
        else:
            pytest.fail("server did not come up")
        batch = records(cfg, 4)
        results: list[tuple[int, str | None]] = []
        stop = threading.Event()

        def hammer() -> None:
            with httpx.Client(timeout=10) as http:
                while not stop.is_set():
                    r = http.post(f"{url}/predict", json={"records": batch})
                    results.append((r.status_code, r.json().get("model_version") if r.status_code == 200 else r.text))

        with ThreadPoolExecutor(8) as pool:
            for _ in range(8):
                pool.submit(hammer)
            time.sleep(1.5)
            registry.move_champion(client, name, "2", "promoted", "test: reload under traffic")
            deadline = time.time() + 20
            while time.time() < deadline and not any(v == "2" for _, v in results[-50:]):
                time.sleep(0.2)
            time.sleep(1.0)
            stop.set()
        codes = {c for c, _ in results}
        versions = [v for c, v in results if c == 200]
        assert codes == {200}, [r for r in results if r[0] != 200][:3]
        assert "1" in versions and "2" in versions
        assert versions[-1] == "2"
        assert httpx.get(f"{url}/model").json()["reloads"] == 1
        # the demo traffic command against this real server, with delayed feedback for its rows
        assert cli(cfg, "simulate-traffic", "--url", url, "--shift", "noise", "--rows", "40", "--batch", "8",
                   "--feedback", "--set", f"serve.prediction_log_url=sqlite:///{log_db}") == 0
        proc.send_signal(signal.SIGTERM)
        # uvicorn shuts down gracefully, then re-raises SIGTERM so the exit status still says why
        assert proc.wait(timeout=30) in (0, -signal.SIGTERM)
        output = proc.stdout.read()
        served_rows = 4 * len(versions) + 40
        assert f"prediction log closed: {served_rows} rows written, 0 failed" in output, output[-2000:]
        assert count_rows(f"sqlite:///{log_db}") == served_rows
        from weakflow.monitoring.drift import load_window

        window = load_window(f"sqlite:///{log_db}", [f"px_{i}" for i in range(64)], rows=40)
        assert window["label"].notna().sum() == 40  # the feedback joined the served rows
    finally:  # the alias and history it moved are put back by registry_restored
        if proc.poll() is None:
            proc.kill()
