"""`weakflow serve` against `mlflow models serve --env-manager local` on the same registered model.

Both servers run on loopback, one after the other in one run, with the same resources:

- one uvicorn worker process each (weakflow: ``uvicorn.run`` in-process; MLflow: ``--workers 1``);
- one torch intra-op thread each (``OMP_NUM_THREADS=1``/``MKL_NUM_THREADS=1`` for both processes;
  weakflow also calls ``torch.set_num_threads(1)``); without it MLflow's server ran up to 6 concurrent
  predictions (asyncio's default thread pool, min(32, cores + 4) threads) with 2 torch threads each on
  2 cores;
- no HTTP access log on either (weakflow: ``access_log=False``; MLflow: ``UVICORN_ACCESS_LOG=false``,
  which its ``uvicorn`` command reads), log level warning on both.

What differs is what each server is, and the output says so: weakflow validates each record against the
model's schema, batches the requests of one event-loop turn into one forward pass on the event loop, and
writes **every prediction to its SQLite prediction log** (one background thread: work MLflow's server does
not do at all); MLflow's server parses ``dataframe_records`` into a pandas DataFrame and runs the pyfunc
(the same ``WeakflowClassifier``) once per request in its thread pool, logging nothing per prediction.

The load is 32 concurrent keep-alive HTTP/1.1 clients (a lean asyncio client in this process, so the
generator costs little of the 2 cores), each sending one-record requests back to back for ``--seconds``
after a warm-up. Recorded: requests/s, p50/p99 latency, non-200 answers, and for weakflow the
prediction-log rows after a SIGTERM versus records answered.

    python -m bench.serve                 # trains a small demo model first if the workspace has none
    python -m bench.serve --seconds 5 --no-write
    python -m bench.serve --workspace DIR --seconds 2 --warmup 1 --no-write   # a smoke run on DIR's champion
    python -m bench.serve --pictures      # one 28x28 PNG per request, beside a numeric model (section serve_pictures)

``--pictures``: three random-weight models (serving cost does not depend on the weights) behind ``weakflow serve``,
one after the other under the same load in one run: the picture demo's network (residual CNN, width 64, 28x28
grey, 10 classes) sent one Fashion-MNIST test picture per request as a base64 PNG, the same network four times
over (the refit averaged with its 3 fold models, as pictures ship by default: ``selection.fold_ensemble``), and a
numeric model (MLP 256x256 over the digits' 64 pixel columns) sent one record of numbers per request.
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


# The same resources for both servers (see the module docstring): one torch intra-op thread each ...
SAME_RESOURCES = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
# ... and for MLflow's uvicorn (started by `mlflow models serve` as a command that reads UVICORN_* variables)
# the logging weakflow's has: no access log line per request, warnings and up.
MLFLOW_ONLY = {"MLFLOW_MODELS_WORKERS": "1", "UVICORN_ACCESS_LOG": "false", "UVICORN_LOG_LEVEL": "warning"}
SIDES = {
    "weakflow serve": "1 uvicorn worker process; 1 torch thread; no access log; each record validated against the "
                      "model's feature schema; requests of one event-loop turn share one forward pass on the event "
                      "loop; every answered record written to the SQLite prediction log by one background thread",
    "mlflow models serve": "1 uvicorn worker process (--workers 1); 1 torch thread (OMP_NUM_THREADS=1); no access "
                           "log (UVICORN_ACCESS_LOG=false); `dataframe_records` parsed into a pandas DataFrame and "
                           "the same pyfunc (WeakflowClassifier) run once per request in asyncio's default thread "
                           "pool (up to min(32, cores + 4) at once); no prediction log (it has none)",
}


def set_workspace(path: Path) -> None:
    """Use ``path`` instead of :data:`WS` (its registry, demo data, logs)."""
    global WS
    WS = Path(path)
    WS.mkdir(parents=True, exist_ok=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ensure_model(text: bool | str = False) -> str:
    """The workspace's champion version, training a quick demo model first when there is none (``text``:
    the SMS text model, registered with random weights: serving cost does not depend on them; "text-minilm":
    its text through the pretrained encoder)."""
    import mlflow

    uri = f"sqlite:///{(WS / 'mlflow.db').resolve()}"
    mlflow.set_tracking_uri(uri)
    try:
        return str(mlflow.MlflowClient().get_model_version_by_alias(NAME, "champion").version)
    except mlflow.exceptions.MlflowException:
        if text:
            from bench.predict import register

            register(WS, text if isinstance(text, str) else "text", NAME)
            mlflow.set_tracking_uri(uri)
            return str(mlflow.MlflowClient().get_model_version_by_alias(NAME, "champion").version)
        subprocess.run([str(Path(sys.executable).parent / "weakflow"), "run", "--workspace", str(WS),
                        "--set", "weak_train.epochs=20", "--set", "full_train.epochs=20"], check=True, cwd=ROOT)
        return str(mlflow.MlflowClient().get_model_version_by_alias(NAME, "champion").version)


def sample_record(text: bool = False) -> dict:
    if text:  # a typical message (the median length of the shipped collection's)
        from weakflow.tasks.lib.demo_text import read_sms_spam

        texts = read_sms_spam()["text"]
        return {"text": texts.iloc[int((texts.str.len() - texts.str.len().median()).abs().argmin())]}
    from weakflow.tasks.lib.config import DemoData
    from weakflow.tasks.lib.data import materialize_demo

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


def register_random(ws: Path, kind: str) -> None:
    """A random-weight model of ``kind`` ('pictures' or 'numeric') registered as :data:`NAME`'s champion in
    ``ws``'s registry (artifacts under ``ws``), where ``weakflow serve --workspace ws`` finds it."""
    import tempfile

    import mlflow
    import torch

    from weakflow.deploy.model import save_weights
    from weakflow.tasks.core.images import ImageFeaturizer, ImageFormat
    from weakflow.tasks.core.models import ModelSpec, build_model
    from weakflow.tasks.core.schema import InputSchema

    ws.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(f"sqlite:///{(ws / 'mlflow.db').resolve()}")
    client = mlflow.MlflowClient()
    try:
        client.get_model_version_by_alias(NAME, "champion")
        return
    except mlflow.exceptions.MlflowException:
        pass
    if client.get_experiment_by_name("bench-serve") is None:
        client.create_experiment("bench-serve", artifact_location=(ws / "mlartifacts").resolve().as_uri())
    mlflow.set_experiment("bench-serve")
    torch.manual_seed(0)
    if kind.startswith("pictures"):  # what the picture demo trains: resnet, cnn_width 64, 28x28 grey
        schema = InputSchema([], [], None, ImageFeaturizer("image", ImageFormat(28, 1)))
        # pictures_ensemble: the refit and its 3 fold models averaged, as the demo ships (selection.fold_ensemble)
        spec = ModelSpec("resnet", 28 * 28, 10, hidden=(64,), image_shape=(1, 28, 28),
                         ensemble=4 if kind == "pictures_ensemble" else 1)
    else:
        schema = InputSchema([f"px_{i}" for i in range(64)], [])
        spec = ModelSpec("mlp", 64, 10, hidden=(256, 256))
    model = build_model(spec).eval()
    with tempfile.TemporaryDirectory() as tmp, mlflow.start_run(run_name=f"bench-serve-{kind}"):
        path = Path(tmp) / "model.pt"
        save_weights(path, model, spec, schema, list(range(10)))
        info = mlflow.pyfunc.log_model(name="model", python_model=str(ROOT / "deploy" / "pyfunc_entry.py"),
                                       artifacts={"weights": str(path)}, pip_requirements=[])
    version = mlflow.register_model(info.model_uri, NAME).version
    client.set_registered_model_alias(NAME, "champion", version)


def picture_record() -> tuple[dict, int]:
    """One Fashion-MNIST test picture as the base64 PNG a client sends, and the PNG's size in bytes."""
    import base64
    import io

    from PIL import Image

    from weakflow.tasks.lib.demo_images import read_fashion

    pictures, _ = read_fashion("test")
    out = io.BytesIO()
    Image.fromarray(np.asarray(pictures[0], dtype=np.uint8)).save(out, format="PNG")
    return {"image": base64.b64encode(out.getvalue()).decode()}, len(out.getvalue())


def serve_once(ws: Path, env: dict, body: dict, args: argparse.Namespace) -> tuple[dict, int]:
    """``weakflow serve`` on ``ws``'s champion under the load; its figures and the log rows after SIGTERM."""
    from weakflow.deploy.prediction_log import count_rows

    bin_dir = Path(sys.executable).parent
    log_db = ws / "bench-predictions.db"
    log_db.unlink(missing_ok=True)
    port = free_port()
    proc = subprocess.Popen([str(bin_dir / "weakflow"), "serve", "--port", str(port), "--workspace", str(ws),
                             "--set", "serve.poll_seconds=0", "--set", f"serve.prediction_log_url=sqlite:///{log_db}"],
                            env=env, stdout=(ws / "weakflow-serve.log").open("w"), stderr=subprocess.STDOUT, text=True)
    try:
        wait_up(port, proc, "/health")
        result = load(port, "/predict", body, args.clients, args.seconds, args.warmup)
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    return result, count_rows(f"sqlite:///{log_db}")


def main_pictures(args: argparse.Namespace) -> None:
    """Pictures beside numbers, same load, same run (section serve_pictures)."""
    base = args.workspace or WS.parent / "serve-pictures-ws"
    bin_dir = Path(sys.executable).parent
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
           **SAME_RESOURCES}
    record, png_bytes = picture_record()
    numeric = {f"px_{i}": float(v) for i, v in enumerate(np.random.default_rng(0).integers(0, 17, 64))}
    results: dict[str, tuple[dict, int]] = {}
    for kind, body in (("pictures", {"records": [record]}), ("pictures_ensemble", {"records": [record]}),
                       ("numeric", {"records": [numeric]})):
        register_random(base / kind, kind)
        results[kind] = serve_once(base / kind, env, body, args)
    print(json.dumps(results, indent=2))
    lines = [f"## Model server on pictures: `weakflow serve`, one 28x28 PNG per request, beside a numeric model "
             f"({args.clients} concurrent clients, {args.seconds:g} s after {args.warmup:g} s warm-up, loopback)", "",
             "| model | request | requests/s | p50 ms | p99 ms | non-200 | log rows after SIGTERM | answered "
             "(warm-up included) |", "|---|---|---|---|---|---|---|---|"]
    what = {"pictures": f"one base64 PNG ({png_bytes} bytes)",
            "pictures_ensemble": "the same PNG; 4 networks averaged (refit + 3 fold models, as the demo ships)",
            "numeric": "64 numbers"}
    for kind, (r, logged) in results.items():
        lost = "equal: no row lost" if logged == r["answered_total"] else "**rows lost**"
        lines.append(f"| {kind} | {what[kind]} | {r['rps']:.0f} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} | "
                     f"{r['errors']} | {logged:,} | {r['answered_total']:,} ({lost}) |")
    ratio = results["pictures"][0]["rps"] / results["numeric"][0]["rps"]
    four = results["pictures_ensemble"][0]["rps"] / results["pictures"][0]["rps"]
    lines += ["", f"Pictures / numbers throughput: **{ratio:.2f}x**; four picture networks averaged / one: "
              f"**{four:.2f}x**. Per picture the server checks and decodes the "
              "base64 text, decodes the PNG with Pillow (pixel and byte limits), computes its SHA-256 and descriptors "
              "for the prediction log (never the bytes), and runs the residual CNN (width 64, 28x28 grey, random "
              "weights, batch norm folded into the convolutions at load) in the event loop's micro-batch, whose "
              "picture embedding is logged too; the numeric model is an MLP 256x256 over 64 numbers "
              "(random weights). 1 uvicorn worker, 1 torch thread each; the load generator shares the cores."]
    publish("serve_pictures", "\n".join(lines), dry_run=args.no_write, module="serve")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument("--text", action="store_true",
                        help="the SMS text model, one message per request, weakflow serve only (section serve_text)")
    parser.add_argument("--pictures", action="store_true",
                        help="a picture model (one 28x28 PNG per request) beside a numeric one, weakflow serve only "
                             "(section serve_pictures)")
    parser.add_argument("--workspace", type=Path, default=None,
                        help=f"workspace with the model registry (default {WS}; a demo model is trained when it "
                             "has no champion)")
    args = parser.parse_args()
    if args.pictures:
        os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
        return main_pictures(args)
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    if args.text:
        rows = {}
        for kind in ("text", "text-minilm"):
            set_workspace(args.workspace / kind if args.workspace else
                          WS.parent / ("serve-text-ws" if kind == "text" else "serve-minilm-ws"))
            ensure_model(kind)
            rows[kind] = serve_text(args)
        return publish_text(rows, sample_record(True), args)
    set_workspace(args.workspace or WS)
    version = ensure_model(False)
    record = sample_record(args.text)
    uri = f"sqlite:///{(WS / 'mlflow.db').resolve()}"
    bin_dir = Path(sys.executable).parent  # on PATH: mlflow models serve execs `uvicorn` by name
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "PYTHONUNBUFFERED": "1",
           "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}", **SAME_RESOURCES}
    print("setup:\n" + "\n".join(f"  {name}: {what}" for name, what in SIDES.items()), flush=True)
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
    from weakflow.deploy.prediction_log import count_rows

    logged = count_rows(f"sqlite:///{log_db}")
    port = free_port()
    theirs = subprocess.Popen([str(bin_dir / "mlflow"), "models", "serve", "-m", f"models:/{NAME}/{version}",
                               "--env-manager", "local", "-p", str(port), "-h", "127.0.0.1", "--workers", "1"],
                              env={**env, **MLFLOW_ONLY},
                              # to a file: an access log (if switched on) filled an unread pipe in 20 s and
                              # stalled the server
                              stdout=(WS / "mlflow-serve.log").open("w"), stderr=subprocess.STDOUT, text=True)
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
              f"Model: `{NAME}` v{version} from `{WS.relative_to(ROOT) if WS.is_relative_to(ROOT) else WS}`; the "
              "load generator shares the 2 cores.", "",
              "What each side does (same resources: one uvicorn worker process, one torch intra-op thread, no "
              "access log, log level warning):", ""]
    lines += [f"- **{name}**: {what}" for name, what in SIDES.items()]
    body = "\n".join(lines)
    publish("serve", body, dry_run=args.no_write)


def serve_text(args: argparse.Namespace) -> tuple[dict, int]:
    """The workspace's champion behind ``weakflow serve`` under load: (load figures, prediction-log rows)."""
    uri = f"sqlite:///{(WS / 'mlflow.db').resolve()}"
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "PYTHONUNBUFFERED": "1", **SAME_RESOURCES}
    result, logged = serve_once(WS, env, {"records": [sample_record(True)]}, args)
    print(WS.name, result, flush=True)
    return result, logged


def publish_text(rows: dict[str, tuple[dict, int]], record: dict, args: argparse.Namespace) -> None:
    names = {"text": "hashed n-grams (word/char n-grams -> TF-IDF -> 64 LSA directions + 4 descriptors)",
             "text-minilm": "pretrained encoder all-MiniLM-L6-v2 (384 dimensions + 4 descriptors)"}
    lines = [f"## Model server on text: `weakflow serve` with the SMS text model ({args.clients} concurrent clients, "
             f"one message per request, {args.seconds:g} s after {args.warmup:g} s warm-up, loopback)", "",
             "| text features | requests/s | p50 ms | p99 ms | non-200 | prediction-log rows after SIGTERM | "
             "answered (warm-up included) |", "|---|---|---|---|---|---|---|"]
    for kind, (r, logged) in rows.items():
        lines.append(f"| {names[kind]} | {r['rps']:.0f} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} | {r['errors']} | "
                     f"{logged:,} | {r['answered_total']:,}"
                     f"{' (equal: no row lost)' if logged == r['answered_total'] else ' (**rows lost**)'} |")
    lines += ["", f"The message ({len(record['text'])} characters, the collection's median length) is featurised per "
              "request inside the server's micro-batches: the texts of every request that reaches the server in one "
              "event-loop turn go through the featuriser together (the encoder: 32 texts per forward pass, nothing "
              "cached, so every request is encoded), then one forward pass of the network; each log row keeps the "
              "first 200 characters and the text features. 1 uvicorn worker, 1 torch thread; the load generator "
              "shares the 2 cores. Model: random weights (the cost does not depend on them)."]
    publish("serve_text", "\n".join(lines), dry_run=args.no_write, module="serve")


if __name__ == "__main__":
    main()
