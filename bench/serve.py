"""`weakflow serve` against `mlflow models serve --env-manager local` on the same registered model.

Both servers run on loopback, one uvicorn worker each, one after the other in one run. The load is
32 concurrent keep-alive HTTP/1.1 clients (a lean asyncio client in this process, so the generator
costs little of the 2 cores), each sending one-record requests back to back for ``--seconds`` after a
warm-up. Recorded: requests/s, p50/p99 latency, non-200 answers, and for weakflow the prediction-log
rows after a SIGTERM versus records answered.

    python -m bench.serve                 # trains a small demo model first if the workspace has none
    python -m bench.serve --seconds 5 --no-write
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from bench.common import ROOT, publish

WS = ROOT / "bench" / "results" / "serve-ws"
NAME = "weakflow-classifier"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ensure_model() -> str:
    """The workspace's champion version, training a quick demo model first when there is none."""
    import mlflow

    uri = f"sqlite:///{(WS / 'mlflow.db').resolve()}"
    mlflow.set_tracking_uri(uri)
    try:
        return str(mlflow.MlflowClient().get_model_version_by_alias(NAME, "champion").version)
    except mlflow.exceptions.MlflowException:
        subprocess.run([str(Path(sys.executable).parent / "weakflow"), "run", "--workspace", str(WS),
                        "--set", "weak_train.epochs=20", "--set", "full_train.epochs=20"], check=True, cwd=ROOT)
        return str(mlflow.MlflowClient().get_model_version_by_alias(NAME, "champion").version)


def sample_record() -> dict:
    from tasks.config import DemoData
    from tasks.data import materialize_demo

    spec = materialize_demo(DemoData(), WS / "data")
    return pd.read_parquet(spec.test_path)[spec.feature_columns].iloc[0].astype(float).to_dict()


def wait_up(port: int, proc: subprocess.Popen, path: str, timeout: float = 120) -> None:
    import httpx

    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited early with status {proc.returncode}; see its log in {WS}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}{path}", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            time.sleep(0.3)
    raise RuntimeError("server did not come up")


async def _client(port: int, request: bytes, until: float, record_from: float, lat: list[float],
                  bad: list[int], ok: list[int]) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        while time.perf_counter() < until:
            t0 = time.perf_counter()
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                          if line.lower().startswith(b"content-length:"))
            await reader.readexactly(length)
            t1 = time.perf_counter()
            if head.startswith(b"HTTP/1.1 200"):
                ok[0] += 1  # every answered request, warm-up included
            if t0 >= record_from:
                lat.append(t1 - t0)
                if not head.startswith(b"HTTP/1.1 200"):
                    bad.append(int(head[9:12]))
    finally:
        writer.close()


def load(port: int, path: str, body: dict, clients: int, seconds: float, warmup: float) -> dict:
    payload = json.dumps(body).encode()
    request = (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
               f"Content-Length: {len(payload)}\r\n\r\n").encode() + payload
    lat: list[float] = []
    bad: list[int] = []
    ok = [0]
    start = time.perf_counter()

    async def main() -> None:
        await asyncio.gather(*(_client(port, request, start + warmup + seconds, start + warmup, lat, bad, ok)
                               for _ in range(clients)))

    asyncio.run(main())
    ms = np.asarray(lat) * 1000
    return {"requests": len(lat), "rps": len(lat) / seconds, "p50_ms": float(np.percentile(ms, 50)),
            "p99_ms": float(np.percentile(ms, 99)), "errors": len(bad), "answered_total": ok[0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    version = ensure_model()
    record = sample_record()
    uri = f"sqlite:///{(WS / 'mlflow.db').resolve()}"
    bin_dir = Path(sys.executable).parent  # on PATH: mlflow models serve execs `uvicorn` by name
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "PYTHONUNBUFFERED": "1",
           "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}
    results = {}
    log_db = WS / "bench-predictions.db"
    log_db.unlink(missing_ok=True)

    port = free_port()
    ours = subprocess.Popen([str(bin_dir / "weakflow"), "serve", "--port", str(port), "--workspace", str(WS),
                             "--set", "serve.poll_seconds=0", "--set", f"serve.prediction_log_url=sqlite:///{log_db}"],
                            env=env, stdout=(WS / "weakflow-serve.log").open("w"), stderr=subprocess.STDOUT, text=True)
    try:
        wait_up(port, ours, "/health")
        results["weakflow serve"] = load(port, "/predict", {"records": [record]}, args.clients, args.seconds, args.warmup)
        ours.send_signal(signal.SIGTERM)
        ours.wait(timeout=60)
    finally:
        if ours.poll() is None:
            ours.kill()
    from deploy.prediction_log import count_rows

    logged = count_rows(f"sqlite:///{log_db}")
    port = free_port()
    theirs = subprocess.Popen([str(bin_dir / "mlflow"), "models", "serve", "-m", f"models:/{NAME}/{version}",
                               "--env-manager", "local", "-p", str(port), "-h", "127.0.0.1"],
                              # to a file: its access log filled an unread pipe in 20 s and stalled the server
                              env=env, stdout=(WS / "mlflow-serve.log").open("w"), stderr=subprocess.STDOUT, text=True)
    try:
        wait_up(port, theirs, "/ping")
        results["mlflow models serve"] = load(port, "/invocations", {"dataframe_records": [record]}, args.clients,
                                              args.seconds, args.warmup)
    finally:
        theirs.send_signal(signal.SIGTERM)
        try:
            theirs.wait(timeout=30)
        except subprocess.TimeoutExpired:
            theirs.kill()
    # every answered request (warm-up included) was one record; the log must hold each of them
    print(json.dumps(results, indent=2), f"\nlogged rows {logged}")
    ours_r, theirs_r = results["weakflow serve"], results["mlflow models serve"]
    lines = [f"## Model server: `weakflow serve` vs `mlflow models serve` ({args.clients} concurrent clients, "
             f"1-record requests, {args.seconds:g} s after {args.warmup:g} s warm-up, loopback)", "",
             "| server | requests/s | p50 ms | p99 ms | non-200 |", "|---|---|---|---|---|"]
    for name, r in results.items():
        lines.append(f"| {name} | {r['rps']:.0f} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} | {r['errors']} |")
    lines += ["", f"Throughput ratio weakflow / MLflow: **{ours_r['rps'] / theirs_r['rps']:.2f}×** (target ≥ 2× at "
              f"p99 ≤ 50 ms). Prediction-log rows after SIGTERM: {logged:,}; one-record requests weakflow "
              f"answered with 200 (warm-up included): {ours_r['answered_total']:,}"
              f"{' (equal: no row lost)' if logged == ours_r['answered_total'] else ' (**rows lost**)'}.",
              f"Model: demo CNN `{NAME}` v{version}; both servers are one uvicorn worker; the load generator shares "
              "the 2 cores."]
    body = "\n".join(lines)
    publish("serve", body, dry_run=args.no_write)


if __name__ == "__main__":
    main()
