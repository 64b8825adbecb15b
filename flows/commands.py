"""One handler per ``weakflow`` command, ``(arguments, config) -> exit status``, and :data:`HANDLERS`, the
table ``flows/cli.py`` looks a command up in. Each imports what it needs when it runs (``--help`` stays
instant); what it prints is ``flows/console.py``'s."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

from weakflow.flows import console

if TYPE_CHECKING:
    import pandas as pd

    from weakflow.flows.api import RunResult
    from weakflow.flows.monitor import MonitorResult
    from weakflow.tasks.lib.config import Config


def _run(args: argparse.Namespace, cfg: Config) -> int:

    result = _pipeline(cfg)
    console.show(console.run_summary(result), console.run_model(result),
                 console.run_links(result, Path(sys.executable).parent / "mlflow"))
    return 0


def _validate(args: argparse.Namespace, cfg: Config) -> int:
    from weakflow.tasks.lib.data import DataError
    from weakflow.tasks.validate import load_and_validate

    try:
        data, report = load_and_validate(cfg)
    except DataError as exc:  # the validation report: what failed, where
        print(f"\n{exc}", file=sys.stderr)
        return 1
    print(console.validated(report.summary(), data.provenance_counts(), len(data.test)))
    return 0


def _lfs(args: argparse.Namespace, cfg: Config) -> int:
    """The per-source table, example rows, and one MLflow run unless --no-log."""
    from weakflow.tasks.lfs import EXPERIMENT, log_run, run_lfs
    from weakflow.tasks.lib.data import DataError

    try:
        result = run_lfs(cfg, rows=args.rows, shards=args.shards, examples=args.examples)
    except DataError as exc:  # LabelingFunctionError too: one line naming the source, column or file
        print(f"lfs: {console.one_line(exc)}", file=sys.stderr)
        return 1
    console.show(console.lfs_header(result), console.lfs_table(result), *console.lfs_examples(result.examples),
                 wide=True)
    if not args.no_log:
        run_id, uri = log_run(cfg, result, {"rows": args.rows, "shards": args.shards, "examples": args.examples})
        print(f"logged to MLflow: experiment {EXPERIMENT}, run {run_id} ({uri})")
    return 0


def _predict(args: argparse.Namespace, cfg: Config) -> int:
    from weakflow.tasks.batch_predict import batch_predict
    from weakflow.tasks.lib.data import DataError

    try:
        job = batch_predict(cfg, args.input, args.output, version=args.version, alias=args.alias,
                            chunk_rows=args.chunk_rows, image_root=args.image_root)
    except DataError as exc:
        print(f"{console.one_line(exc)}\nnothing written to {args.output}", file=sys.stderr)
        return 1
    print(console.scored(job))
    return 0


def _show_config(args: argparse.Namespace, cfg: Config) -> int:
    from weakflow.tasks.lib.config import dump_config

    print(dump_config(cfg), end="")
    return 0


def _tracking(cfg: Config) -> ModuleType:
    """The mlflow module, on the configured tracking store (a registry command; the class set of a served version)."""
    import mlflow

    mlflow.set_tracking_uri(cfg.tracking.resolved_uri)
    return mlflow


def _models(args: argparse.Namespace, cfg: Config) -> int:
    from weakflow.deploy.registry import list_versions

    frame = list_versions(_tracking(cfg).MlflowClient(), cfg.tracking.model_name)
    print(console.versions(cfg.tracking.model_name, cfg.tracking.resolved_uri, frame))
    return 0


def _promote(args: argparse.Namespace, cfg: Config) -> int:
    from weakflow.deploy.registry import promote
    from weakflow.tasks.lib.data import dataset_digest
    from weakflow.tasks.register import score_version
    from weakflow.tasks.validate import load_and_validate

    client, name = _tracking(cfg).MlflowClient(), cfg.tracking.model_name
    data, _ = load_and_validate(cfg)
    result = promote(client, name, args.version, args.reason, lambda v: score_version(name, v, data),
                     cfg.gates.min_accuracy, cfg.gates.max_regression, dataset_digest(data.test), force=args.force)
    print(console.promoted(name, result))
    return 0


def _rollback(args: argparse.Namespace, cfg: Config) -> int:
    from weakflow.deploy.registry import rollback

    old, new = rollback(_tracking(cfg).MlflowClient(), cfg.tracking.model_name, args.reason)
    print(console.rolled_back(cfg.tracking.model_name, old, new))
    return 0


def _serve(args: argparse.Namespace, cfg: Config) -> int:
    import logging

    import uvicorn

    from weakflow.deploy.registry import alias_version
    from weakflow.deploy.serve import create_app

    s = cfg.serve
    version = alias_version(_tracking(cfg).MlflowClient(), cfg.tracking.model_name, s.alias, cfg.tracking.resolved_uri)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    app = create_app(cfg.tracking.model_name, s.alias, s.max_body_bytes, s.max_batch, s.poll_seconds,
                     cfg.prediction_log_url(), body_timeout_s=s.body_timeout_seconds, max_text_chars=s.max_text_chars,
                     header_timeout_s=s.header_timeout_seconds, max_header_bytes=s.max_header_bytes,
                     max_image_bytes=s.max_image_bytes)
    host, port = args.host or s.host, args.port or s.port
    print(console.serving(cfg.tracking.model_name, s.alias, version, host, port), flush=True)
    # http=: the protocol that bounds each request's head (slow or huge headers), which the app never sees
    uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False, http=app.http_protocol)
    return 0


def _simulate_traffic(args: argparse.Namespace, cfg: Config) -> int:
    import httpx
    import pandas as pd

    from weakflow.monitoring.traffic import send, shifted_rows
    from weakflow.tasks.lib.data import resolve_data_spec

    spec = resolve_data_spec(cfg)
    test = pd.read_parquet(spec.test_path) if spec.test_path.suffix != ".csv" else pd.read_csv(spec.test_path)
    rows = shifted_rows(test, spec.feature_columns, spec.label_column, args.shift, args.rows, args.seed)
    url = args.url or f"http://{cfg.serve.host}:{cfg.serve.port}"
    with httpx.Client(base_url=url, timeout=30) as client:
        result = send(client, rows, spec.feature_columns, spec.label_column, args.batch)
    print(console.traffic(result, args.rows, args.shift, url))
    if args.feedback and result.feedback and not _store_feedback(cfg, pd.DataFrame(result.feedback)):
        return 1
    return 0 if not result.errors else 1


def _store_feedback(cfg: Config, feedback: pd.DataFrame) -> bool:
    """simulate-traffic --feedback: the answered rows' gold labels, once the server has logged them."""
    from weakflow.deploy.prediction_log import wait_logged

    url = cfg.prediction_log_url()
    # the server logs off the request path: wait (bounded) for the answered rows to be committed
    missing = wait_logged(url, list(zip(feedback["request_id"], feedback["row_index"].astype(int))))
    if missing:
        print(console.not_logged(missing, url), file=sys.stderr)
        return False
    from weakflow.monitoring.alerts import record_feedback
    from weakflow.monitoring.feedback import FeedbackError

    _tracking(cfg)  # the class set of the version behind each row
    try:
        print(f"stored {record_feedback(url, feedback)} feedback labels")
    except FeedbackError as exc:
        print(f"simulate-traffic: feedback not stored: {exc}", file=sys.stderr)
        return False
    return True


def _monitor(args: argparse.Namespace, cfg: Config) -> int:
    from weakflow.deploy.registry import alias_version

    _tracking(cfg)
    # before the flow starts: no model or alias is one line, not a failed flow run's traceback
    alias_version(None, cfg.tracking.model_name, cfg.serve.alias, cfg.tracking.resolved_uri)
    result = _monitoring(cfg)
    # the verdict is the command's output (its last line, after the contamination finding if any); a
    # window below monitoring.min_rows ("not checked") is an answer, not an error, so it exits 0 like
    # drift and no drift (see `weakflow monitor --help`)
    print("\n".join(result.lines(cfg.tracking.model_name)))
    return 0


def _alerts(args: argparse.Namespace, cfg: Config) -> int:
    from weakflow.monitoring.alerts import list_alerts

    print(console.alerts(list_alerts(cfg.prediction_log_url()), cfg.prediction_log_url()))
    return 0


def _feedback(args: argparse.Namespace, cfg: Config) -> int:
    from weakflow.monitoring.alerts import record_feedback
    from weakflow.monitoring.feedback import FeedbackError, read_feedback

    _tracking(cfg)  # the class set of the version behind each row
    try:
        stored = record_feedback(cfg.prediction_log_url(), read_feedback(args.file))
    except FeedbackError as exc:  # the whole file is checked first: one line, nothing stored, exit 1
        print(f"feedback: {args.file}: {exc}", file=sys.stderr)
        return 1
    print(f"stored {stored} feedback label(s) in {cfg.prediction_log_url()}")
    return 0


def _deploy(args: argparse.Namespace, cfg: Config) -> int:
    from prefect.settings import PREFECT_API_URL

    if not PREFECT_API_URL.value():
        print(console.DEPLOY_NEEDS_SERVER, file=sys.stderr)
        return 2
    from weakflow.flows.deployments import serve_deployments

    serve_deployments(cfg, args.cron, args.interval)
    return 0


# how `run` and `monitor` run their flows in this process

def _pipeline(cfg: Config) -> RunResult:
    """``weakflow run``: the training pipeline (``weakflow.flows.api.run``) with Prefect's temporary API
    (a subprocess, seconds to start) coming up while this process imports the pipeline."""
    from weakflow.flows.runtime import (drain_prefect, prestart_prefect_api, quiet_expected_errors, warm_imports)

    api_ready = prestart_prefect_api(cfg.limits.prefect_startup_seconds)
    from weakflow.flows import api
    import weakflow.flows.pipeline  # noqa: F401  (torch, MLflow, sklearn: ~3 s, imported while the API starts)

    warm_imports()  # after torch and scipy are whole (see its docstring)

    quiet_expected_errors()
    api_ready()
    result = api.run(cfg)  # on the task runner parallel.runner names
    drain_prefect()
    return result


def _monitoring(cfg: Config) -> MonitorResult:
    """``weakflow monitor``: the monitoring flow once, its logs and events sent before it returns."""
    from weakflow.flows.monitor import monitoring_flow
    from weakflow.flows.runtime import drain_prefect, start_prefect_api

    start_prefect_api(cfg.limits.prefect_startup_seconds)
    result = monitoring_flow(cfg)
    drain_prefect()
    return result


HANDLERS: dict[str, Callable[[argparse.Namespace, Config], int]] = {
    "run": _run, "validate": _validate, "lfs": _lfs, "predict": _predict, "show-config": _show_config,
    "models": _models, "promote": _promote, "rollback": _rollback, "serve": _serve,
    "simulate-traffic": _simulate_traffic, "monitor": _monitor, "alerts": _alerts, "feedback": _feedback,
    "deploy": _deploy}
