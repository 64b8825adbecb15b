"""The ``weakflow`` command line. Heavy imports happen inside the commands, so ``--help`` is instant."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

EXAMPLES = """\
examples:
  weakflow run                                   # the demo: digits, 40% symmetric weak-label noise
  weakflow run --config my.yaml                  # your own Parquet/CSV files (see README, "Bring your own data")
  weakflow run --set data.noise.rate=0.6 --set weak_train.method=clid_mu
  weakflow run --tracking-uri http://127.0.0.1:5000
  weakflow validate --config my.yaml             # only the data checks, no training
  weakflow run --set data.source=demo_text       # the text demo: SMS spam from seven keyword/regex rules
  weakflow lfs --config my.yaml                  # what each weak source / rule / labelling function does
  weakflow predict --input new.parquet --output scored.parquet   # batch scoring with the champion
  weakflow show-config --set pseudo_label.threshold=0.95
  weakflow models                                # registered versions, aliases, key metrics
  weakflow promote 3 --reason "reviewed in the MLflow UI"   # through the gates
  weakflow rollback --reason "bad predictions"   # champion back to the previous one
  weakflow serve --port 8000                     # the champion over HTTP, hot reload, prediction log
  weakflow simulate-traffic --shift noise        # demo requests (shifted) to a running server
  weakflow monitor                               # drift check of the prediction log, alerts on drift
  weakflow alerts                                # past drift and contamination alerts
  weakflow feedback labels.csv                   # delayed gold labels (request_id,row_index,label)
  weakflow deploy --cron "0 3 * * *"             # Prefect deployments: schedule, monitoring, retrain on drift
"""


def _quiet_telemetry() -> None:
    """Offline defaults, set at command time (never at import)."""
    for key, value in {"PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1",
                       "MLFLOW_DISABLE_TELEMETRY": "true", "GX_ANALYTICS_ENABLED": "false",
                       "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}.items():
        os.environ.setdefault(key, value)
    import multiprocessing

    # A library's process pool must never fork this process: Prefect's and MLflow's threads may hold a lock
    # at that instant, and the child waits on it forever (tasks/core/label_issues.py). Spawn starts clean.
    if multiprocessing.get_start_method(allow_none=True) is None:
        multiprocessing.set_start_method("spawn")


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", "-c", type=Path, help="YAML config file (default: built-in demo settings)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override one config key, e.g. --set weak_train.epochs=20 (repeatable)")
    p.add_argument("--tracking-uri", help="MLflow tracking URI, e.g. http://127.0.0.1:5000 (default: SQLite in the workspace)")
    p.add_argument("--workspace", type=Path, help="folder for mlflow.db, artifacts and generated data")


def _command(sub, name: str, help: str, examples: list[str], description: str | None = None) -> argparse.ArgumentParser:
    """One sub-command with its examples in ``--help`` and the shared config flags."""
    p = sub.add_parser(name, help=help, description=description, formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog="examples:\n" + "".join(f"  {e}\n" for e in examples))
    _add_config_args(p)
    return p


def _at_least(low: int):  # -> Callable[[str], int]
    """An argparse type: an integer >= ``low``."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer >= {low}, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"expected an integer >= {low}, got {value}")
        return value
    return parse


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="weakflow", description="Train production models from weak labels, tracked in MLflow, orchestrated by Prefect.",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _command(sub, "run", "run the whole training pipeline",
             ["weakflow run", "weakflow run --config my.yaml --set full_train.epochs=80"],
             "validate -> governance -> weak_labels -> gold_only -> weak_train -> pseudo_label -> "
             "pseudo_governance -> full_train -> select -> evaluate -> register -> publish")
    _command(sub, "validate", "run only the data validation suite", ["weakflow validate --config my.yaml"])
    lfs = _command(
        sub, "lfs", "apply the weak sources to the training file and measure each",
        ["weakflow lfs --config my.yaml", "weakflow lfs --rows 10000 --examples 5 --no-log",
         "weakflow lfs --shards 4   # a big file: 4 processes"],
        "Applies every weak label column, rule (weak_labels.rules) and labelling function\n"
        "(weak_labels.labeling_functions) to the training file and prints, per source: the class(es) it votes,\n"
        "coverage, overlap and conflict (shares of all rows), votes, its accuracy on the gold rows it voted on\n"
        "with a 95% Wilson interval, and example rows where it fires and where it is wrong on gold (rows count\n"
        "from 0, the header not counted). Nothing is validated beyond the columns it reads, nothing trained.\n"
        "The table and examples are also logged as one run of the MLflow experiment weakflow-lfs.\n\n"
        "exit status: 0; 1 for bad input (a missing column, a rule that cannot run, an unreadable file: one\n"
        "line saying which); 2 for a config error.")
    lfs.add_argument("--examples", type=_at_least(0), default=3, metavar="N",
                     help="example rows per source where it fires, and as many where it is wrong (default 3)")
    lfs.add_argument("--rows", type=_at_least(1), metavar="N", help="apply to the first N rows only")
    lfs.add_argument("--shards", type=_at_least(1), default=1, metavar="K",
                     help="apply in K row ranges, each in its own process (spawned), for big files (default 1)")
    lfs.add_argument("--no-log", action="store_true", help="print only; log nothing to MLflow")
    predict = _command(
        sub, "predict", "score a Parquet or CSV file with a registered model, in chunks",
        ["weakflow predict --input new.parquet --output scored.parquet",
         "weakflow predict --input messages.csv --output scored.csv --version 3"],
        "Reads the input in chunks (bounded memory, any size), checks its columns against the model's inputs\n"
        "before scoring, and writes row_id (the input's own row_id column, else the row's position from 0),\n"
        "prediction, confidence and prob_<class> per class. The output appears only when every row is scored\n"
        "(a failed job leaves none behind); an output that is the input (the same path or file) is refused.\n"
        "Values are checked as the server checks them (finite float32 numbers; texts at most\n"
        "serve.max_text_chars). The job is logged as a run of the MLflow experiment\n"
        "<tracking.experiment>-predict: input SHA-256, rows, model version, duration, rows/s.\n\n"
        "exit status: 0; 1 for bad input (a missing column or a bad value: one line naming the file, column and\n"
        "rows) or no such model/version/alias; 2 for a config error (e.g. an empty --alias).")
    predict.add_argument("--input", required=True, type=Path, help="Parquet (.parquet) or CSV (.csv) file to score")
    predict.add_argument("--output", required=True, type=Path, help="where to write the scores (.parquet or .csv)")
    which = predict.add_mutually_exclusive_group()
    which.add_argument("--version", help="model version to use")
    which.add_argument("--alias", help="model alias to use (default serve.alias, champion)")
    predict.add_argument("--chunk-rows", type=_at_least(1), default=100_000, metavar="N",
                         help="rows scored at a time (default 100000)")
    _command(sub, "show-config", "print the effective config as YAML",
             ["weakflow show-config > my.yaml", "weakflow show-config --set data.noise.rate=0.2"])
    _command(sub, "models", "list registered versions, aliases and key metrics",
             ["weakflow models", "weakflow models --tracking-uri http://127.0.0.1:5000"])
    promote = _command(
        sub, "promote", "make a version champion, only if the gates pass",
        ['weakflow promote 3 --reason "reviewed: better on classes 3 and 8"'],
        "Re-scores the version and the current champion on the configured frozen gold test split and moves the "
        "champion alias only if every gate passes (validation, governance, not worse than the champion, and "
        "gates.min_accuracy when set) and the champion did not move meanwhile. A refusal names each gate and how "
        "to pass it knowingly. Who, when and why are recorded as version tags.")
    promote.add_argument("version", help="model version number to promote")
    promote.add_argument("--reason", required=True, help="why (recorded on the version)")
    promote.add_argument("--force", action="store_true",
                         help="promote past failed accuracy gates (min_accuracy, champion), never past validation "
                              "or governance; recorded as the version tags gate_verdict=overridden and gate_override")
    rollback = _command(sub, "rollback", "move champion back to the version it replaced",
                        ['weakflow rollback --reason "spike in low-confidence predictions"'])
    rollback.add_argument("--reason", default="manual rollback", help="why (recorded on the version)")
    serve = _command(
        sub, "serve", "serve the champion over HTTP (FastAPI + uvicorn)",
        ["weakflow serve", "weakflow serve --port 9000 --set serve.poll_seconds=2",
         "curl -s localhost:8000/predict -H 'content-type: application/json' -d @request.json"],
        "POST /predict, GET /health, GET /model. Swaps the model when the alias moves (polls every "
        "serve.poll_seconds); logs every prediction to serve.prediction_log_url (default: SQLite in the "
        "workspace). Stops cleanly on SIGTERM/Ctrl-C after flushing the log.")
    serve.add_argument("--host", help="bind address (default serve.host, 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (default serve.port, 8000)")
    traffic = _command(
        sub, "simulate-traffic", "send demo requests, optionally shifted, to a running server",
        ["weakflow simulate-traffic --shift none --rows 500",
         "weakflow simulate-traffic --shift brightness --url http://127.0.0.1:8000 --feedback"],
        "Rows come from the demo's held-out test split. Shifts: none, noise (Gaussian sensor noise), "
        "brightness (dimmer, lower contrast), prior (60%% of rows from classes 0 and 1).")
    traffic.add_argument("--shift", choices=["none", "noise", "brightness", "prior"], default="none")
    traffic.add_argument("--url", default=None, help="server base URL (default http://serve.host:serve.port)")
    traffic.add_argument("--rows", type=int, default=500, help="records to send (default 500)")
    traffic.add_argument("--batch", type=int, default=10, help="records per request (default 10)")
    traffic.add_argument("--seed", type=int, default=0)
    traffic.add_argument("--feedback", action="store_true",
                         help="also record the rows' gold labels as delayed feedback (waits for the server's log)")
    _command(sub, "monitor", "run the monitoring flow once (drift check, alert on drift)",
             ["weakflow monitor", "weakflow monitor --set monitoring.window_hours=24"],
             "Checks the prediction log's window for the version behind serve.alias against the reference\n"
             "logged with it, and alerts on drift. The last line is the verdict: 'DRIFT: ...', 'no drift: ...'\n"
             "or 'not checked: N rows in the window, fewer than min_rows=M'.\n\n"
             "exit status: 0 whenever the check ran, whatever its verdict: a window below monitoring.min_rows\n"
             "is a quiet period, not a failure, and a cron job must not report it as one (the verdict is also\n"
             "the monitoring run's `verdict` tag); 1 when it could not run (e.g. no registry, no such model or\n"
             "no version with the alias: one line saying which and what to run); 2 for a config error.")
    _command(sub, "alerts", "list drift and contamination alerts", ["weakflow alerts"])
    feedback = _command(sub, "feedback", "record delayed gold labels for served predictions",
                        ["weakflow feedback labels.csv   # columns request_id,row_index,label"],
                        "Checks the whole file before storing anything: every (request_id, row_index) must be\n"
                        "a logged prediction and every label a class (an integer or a name) of the model version that answered\n"
                        "that row (read from the registry). Any problem: one line naming the file, the column, the\n"
                        "rows (data rows counted from 1, the header not counted) and the values; exit status 1,\n"
                        "nothing stored. A row labelled twice keeps the last label.")
    feedback.add_argument("file", type=Path, help="CSV or Parquet with request_id, row_index, label")
    deploy = _command(
        sub, "deploy", "register the Prefect deployments and run them (until Ctrl-C)",
        ['PREFECT_API_URL=http://127.0.0.1:4200/api weakflow deploy --cron "0 3 * * *" --interval 900'],
        "Needs a running Prefect server (PREFECT_API_URL). Registers training on --cron, monitoring every "
        "--interval seconds, and retraining when a weakflow.drift.detected event names this model (at most "
        "once per model version per monitoring.alert_cooldown_minutes), then executes their runs.")
    deploy.add_argument("--cron", default="0 3 * * *", help="training schedule (default 03:00 daily)")
    deploy.add_argument("--interval", type=float, default=900.0, help="monitoring interval in seconds (default 900)")
    return parser


def _load(args: argparse.Namespace):  # -> Config
    from weakflow.tasks.lib.config import load_config

    overrides = list(args.overrides)
    if args.tracking_uri:
        overrides.append(f"tracking.tracking_uri={args.tracking_uri}")
    if args.workspace:
        overrides.append(f"tracking.workspace={args.workspace}")
    return load_config(args.config, overrides)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _quiet_telemetry()
    from weakflow.tasks.lib.config import ConfigError
    from weakflow.tasks.lib.data import DataError

    try:
        cfg = _load(args)
        if args.command == "show-config":
            from weakflow.tasks.lib.config import dump_config

            print(dump_config(cfg), end="")
            return 0
        if args.command == "validate":
            return _validate(cfg)
        if args.command == "lfs":
            return _lfs(args, cfg)
        if args.command == "predict":
            return _predict(args, cfg)
        if args.command in ("models", "promote", "rollback", "serve"):
            return _registry_command(args, cfg)
        if args.command in ("simulate-traffic", "monitor", "alerts", "feedback", "deploy"):
            return _monitoring_command(args, cfg)
        return _run(cfg)
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return 2
    except RuntimeError as exc:  # RegistryError, StageTimeout, PrefectStartupError: a clear one-line reason
        from weakflow.deploy.registry import RegistryError
        from weakflow.flows.runtime import PrefectStartupError
        from weakflow.tasks.lib.stage import StageTimeout

        if not isinstance(exc, (RegistryError, StageTimeout, PrefectStartupError)):
            raise
        print(f"{args.command}: {exc}", file=sys.stderr)
        return 1
    except DataError as exc:
        if args.command == "validate":
            print(f"\n{exc}", file=sys.stderr)
        else:
            print(f"\nrun stopped before training: {exc}\nnothing was registered; the current champion is unchanged.",
                  file=sys.stderr)
        return 1


def _validate(cfg) -> int:
    from weakflow.tasks.validate import load_and_validate

    data, report = load_and_validate(cfg)
    print(f"validation passed: {report.summary()}; rows {data.provenance_counts()}, test {len(data.test)}")
    return 0


def _predict(args: argparse.Namespace, cfg) -> int:
    from weakflow.tasks.batch_predict import batch_predict
    from weakflow.tasks.lib.data import DataError

    try:
        job = batch_predict(cfg, args.input, args.output, version=args.version, alias=args.alias,
                            chunk_rows=args.chunk_rows)
    except DataError as exc:
        print(f"{' '.join(str(exc).split())}\nnothing written to {args.output}", file=sys.stderr)
        return 1
    print(f"scored {job.rows} rows of {job.input} with {job.model_name} version {job.model_version} in "
          f"{job.seconds:.1f} s ({job.rows_per_second:,.0f} rows/s) -> {job.output}; MLflow run {job.run_id}")
    return 0


def _lfs(args: argparse.Namespace, cfg) -> int:
    """``weakflow lfs``: the per-source table (rich), example rows, and one MLflow run unless --no-log."""
    from rich import box
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from weakflow.tasks.lib.data import DataError
    from weakflow.tasks.lfs import EXPERIMENT, log_run, run_lfs

    try:
        result = run_lfs(cfg, rows=args.rows, shards=args.shards, examples=args.examples)
    except DataError as exc:  # LabelingFunctionError too: one line naming the source, column or file
        print(f"lfs: {' '.join(str(exc).split())}", file=sys.stderr)
        return 1
    print(f"{len(result.table)} source(s) applied to {result.rows} rows of {result.path} ({result.gold_rows} gold) "
          f"in {result.seconds:.2f} s ({result.shards} process{'es' if result.shards > 1 else ''}); "
          f"classes {result.classes}, abstain {result.abstain!r}")
    table = Table(title="weakflow lfs: weak sources", box=box.SIMPLE_HEAD, caption_justify="left",
                  caption="coverage, overlap, conflict: shares of all rows; accuracy: on the gold rows a source "
                          "voted on (right/voted), with its 95% Wilson interval")
    longest = max([len(s) for s in result.table["source"]] + [6])
    table.add_column("source", overflow="fold", min_width=min(longest, 32))
    for name in ("votes for", "coverage", "overlap", "conflict", "votes", "gold", "accuracy [95% CI]"):
        table.add_column(name, justify="left" if name == "votes for" else "right", no_wrap=True)
    for row in result.table.to_dict("records"):
        accuracy = (f"{row['accuracy']:.3f} [{row['accuracy_low']:.3f}, {row['accuracy_high']:.3f}]"
                    if row["gold_rows"] else "n/a")
        table.add_row(escape(row["source"]), escape(row["polarity"] or "-"), f"{row['coverage']:.3f}",
                      f"{row['overlap']:.3f}", f"{row['conflict']:.3f}", str(row["votes"]),
                      f"{row['gold_correct']}/{row['gold_rows']}", accuracy)
    console = Console()
    # not a terminal (a pipe, a log file): no width to fit, so do not squeeze the table into 80 columns
    (console if console.is_terminal else Console(width=200)).print(table)
    if len(result.examples):  # plain print: rich would wrap the rows and read brackets in them as markup
        print("examples (rows count from 0, the header not counted):")
        for source, group in result.examples.groupby("source", sort=False):
            print(f"  {source}")
            for ex in group.to_dict("records"):
                said = f"votes {ex['vote']}" + (f", gold {ex['gold']}" if ex["gold"] else "")
                print(f"    {ex['kind']:5}  row {ex['row']}: {said}: {ex['text']}")
    if not args.no_log:
        run_id, uri = log_run(cfg, result, {"rows": args.rows, "shards": args.shards, "examples": args.examples})
        print(f"logged to MLflow: experiment {EXPERIMENT}, run {run_id} ({uri})")
    return 0


def _registry_command(args: argparse.Namespace, cfg) -> int:
    import mlflow

    from weakflow.deploy import registry

    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    mlflow.set_tracking_uri(cfg.tracking.resolved_uri)
    client = mlflow.MlflowClient()
    name = cfg.tracking.model_name
    if args.command == "models":
        frame = registry.list_versions(client, name)
        print(f"{name} in {cfg.tracking.resolved_uri}")
        print(frame.to_string(index=False, na_rep="", float_format=lambda v: f"{v:.4f}"))
        return 0
    if args.command == "promote":
        from weakflow.tasks.lib.data import dataset_digest
        from weakflow.tasks.register import score_version
        from weakflow.tasks.validate import load_and_validate

        data, _ = load_and_validate(cfg)
        result = registry.promote(client, name, args.version, args.reason, lambda v: score_version(name, v, data),
                                  cfg.gates.min_accuracy, cfg.gates.max_regression, dataset_digest(data.test),
                                  force=args.force)
        said = result.decision.reason if result.decision.passed else f"forced past: {result.decision.reason}"
        print(f"{name} v{result.version} is champion (was v{result.previous or 'none'}): {said}")
        return 0
    if args.command == "rollback":
        old, new = registry.rollback(client, name, args.reason)
        print(f"{name}: champion rolled back from v{old} to v{new}")
        return 0
    return _serve(args, cfg)


def _monitoring_command(args: argparse.Namespace, cfg) -> int:
    import pandas as pd

    if args.command == "alerts":
        from weakflow.monitoring.alerts import list_alerts

        import json

        frame = list_alerts(cfg.prediction_log_url())
        if frame.empty:
            print(f"no alerts in {cfg.prediction_log_url()}")
            return 0
        from weakflow.monitoring.alerts import finding

        frame["finding"] = [finding(kind, json.loads(cols or "[]"), message)
                            for kind, cols, message in zip(frame["kind"], frame["drifted_columns"], frame["message"])]
        drift = frame["kind"] == "drift"  # share and prediction drift mean nothing for a contamination alert
        frame["drift_share"] = [f"{v:.2f}" if d else "-" for v, d in zip(frame["drift_share"], drift)]
        frame["prediction_drifted"] = [str(bool(v)) if d else "-" for v, d in zip(frame["prediction_drifted"], drift)]
        frame["ts"] = pd.to_datetime(frame["ts"]).dt.strftime("%Y-%m-%d %H:%M:%S")
        print(frame[["id", "ts", "kind", "model_name", "model_version", "drift_share", "prediction_drifted",
                     "webhook", "finding"]].to_string(index=False, justify="left"))
        print(f"reports: {frame['report_uri'].iloc[0]} (latest)")
        return 0
    if args.command == "feedback":
        import mlflow

        from weakflow.monitoring.alerts import record_feedback
        from weakflow.monitoring.feedback import FeedbackError, read_feedback

        mlflow.set_tracking_uri(cfg.tracking.resolved_uri)  # the class set of the version behind each row
        try:
            stored = record_feedback(cfg.prediction_log_url(), read_feedback(args.file))
        except FeedbackError as exc:  # the whole file is checked first: one line, nothing stored, exit 1
            print(f"feedback: {args.file}: {exc}", file=sys.stderr)
            return 1
        print(f"stored {stored} feedback label(s) in {cfg.prediction_log_url()}")
        return 0
    if args.command == "simulate-traffic":
        return _simulate(args, cfg)
    if args.command == "monitor":
        import mlflow

        from weakflow.deploy.registry import alias_version

        uri = cfg.tracking.resolved_uri
        mlflow.set_tracking_uri(uri)
        # before the flow starts: no model or alias is one line, not a failed flow run's traceback
        alias_version(None, cfg.tracking.model_name, cfg.serve.alias, uri)
        from weakflow.flows import runtime
        from weakflow.flows.monitor import monitoring_flow

        runtime.start_prefect_api(cfg.limits.prefect_startup_seconds)
        result = monitoring_flow(cfg)
        runtime.drain_prefect()
        # the verdict is the command's output (its last line, after the contamination finding if any); a
        # window below monitoring.min_rows ("not checked") is an answer, not an error, so it exits 0 like
        # drift and no drift (see `weakflow monitor --help`)
        print("\n".join(result.lines(cfg.tracking.model_name)))
        return 0
    from prefect.settings import PREFECT_API_URL

    if not PREFECT_API_URL.value():
        print("weakflow deploy needs a running Prefect server (PREFECT_API_URL, e.g. http://127.0.0.1:4200/api): "
              "Prefect's temporary API runs no scheduler and forgets the deployments when this process ends. "
              "`bash deploy/servers.sh start` starts one.", file=sys.stderr)
        return 2
    from weakflow.flows.deployments import serve_deployments

    serve_deployments(cfg, args.cron, args.interval)
    return 0


def _simulate(args: argparse.Namespace, cfg) -> int:
    import httpx
    import pandas as pd

    from weakflow.monitoring.alerts import record_feedback
    from weakflow.monitoring.traffic import send, shifted_rows
    from weakflow.tasks.lib.data import resolve_data_spec

    spec = resolve_data_spec(cfg)
    test = pd.read_parquet(spec.test_path) if spec.test_path.suffix != ".csv" else pd.read_csv(spec.test_path)
    rows = shifted_rows(test, spec.feature_columns, spec.label_column, args.shift, args.rows, args.seed)
    url = args.url or f"http://{cfg.serve.host}:{cfg.serve.port}"
    with httpx.Client(base_url=url, timeout=30) as client:
        result = send(client, rows, spec.feature_columns, spec.label_column, args.batch)
    print(f"sent {result.requests} requests ({args.rows} rows, shift {args.shift}) to {url}: {result.answered} answered "
          f"by version(s) {sorted(result.versions)}, {len(result.errors)} failed")
    for err in result.errors[:3]:
        print(f"  {err}")
    if args.feedback and result.feedback:
        import mlflow

        from weakflow.deploy.prediction_log import wait_logged

        feedback = pd.DataFrame(result.feedback)
        # the server logs off the request path: wait (bounded) for the answered rows to be committed
        missing = wait_logged(cfg.prediction_log_url(), list(zip(feedback["request_id"], feedback["row_index"].astype(int))))
        if missing:
            print(f"{len(missing)} answered row(s) not in the prediction log {cfg.prediction_log_url()} after 30 s, e.g. "
                  f"{missing[:3]}; is the server logging to this database (serve.prediction_log_url)?", file=sys.stderr)
            return 1
        from weakflow.monitoring.feedback import FeedbackError

        mlflow.set_tracking_uri(cfg.tracking.resolved_uri)  # the class set of the version behind each row
        try:
            print(f"stored {record_feedback(cfg.prediction_log_url(), feedback)} feedback labels")
        except FeedbackError as exc:
            print(f"simulate-traffic: feedback not stored: {exc}", file=sys.stderr)
            return 1
    return 0 if not result.errors else 1


def _serve(args: argparse.Namespace, cfg) -> int:
    import logging

    import mlflow
    import uvicorn

    from weakflow.deploy.registry import alias_version
    from weakflow.deploy.serve import create_app

    mlflow_version = alias_version(mlflow.MlflowClient(), cfg.tracking.model_name, cfg.serve.alias,
                                   cfg.tracking.resolved_uri)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    s = cfg.serve
    app = create_app(cfg.tracking.model_name, s.alias, s.max_body_bytes, s.max_batch, s.poll_seconds,
                     cfg.prediction_log_url(),
                     body_timeout_s=s.body_timeout_seconds, max_text_chars=s.max_text_chars,
                     header_timeout_s=s.header_timeout_seconds, max_header_bytes=s.max_header_bytes)
    host, port = args.host or s.host, args.port or s.port
    print(f"serving {cfg.tracking.model_name}@{s.alias} (v{mlflow_version}) on http://{host}:{port} (POST /predict, GET /health, GET /model)",
          flush=True)
    # http=: the protocol that bounds each request's head (slow or huge headers), which the app never sees
    uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False, http=app.http_protocol)
    return 0


def _warm_imports() -> None:
    """Import Great Expectations in the background while Prefect starts its temporary API (~5 s of
    waiting on a subprocess); the validate stage then finds it loaded. Python's import lock makes a
    concurrent import safe: the stage's own import waits for this one to finish."""
    import importlib
    import threading

    threading.Thread(target=importlib.import_module, args=("great_expectations",), daemon=True).start()


EXPECTED = ("DataError", "DataValidationError", "GovernanceError", "LabelingFunctionError", "ConfigError",
            "RegistryError", "StageTimeout")  # errors the command reports itself, in one line


def _quiet_expected_errors() -> None:
    """Keep the terminal to the command's own one-line reason: Prefect logs a task's or flow's exception with
    its traceback (twice, 76-129 lines) before the command could say what went wrong. Only the console
    handlers are filtered; the run's logs in the Prefect API keep everything."""
    import logging

    class ExpectedErrors(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            if not record.name.startswith("prefect"):
                return True
            exc = record.exc_info[1] if record.exc_info else None
            names = {type(exc).__name__} if exc is not None else set()
            return not (names & set(EXPECTED) or any(f"{n}(" in record.getMessage() or f"{n}:" in record.getMessage()
                                                     for n in EXPECTED))

    for handler in logging.getLogger().handlers:
        if "APILog" not in type(handler).__name__:
            handler.addFilter(ExpectedErrors())


def _run(cfg) -> int:
    from rich.console import Console
    from rich.table import Table

    from weakflow.flows import runtime

    # Prefect's temporary API (a subprocess, seconds to start) comes up while this process imports the pipeline
    api_ready = runtime.prestart_prefect_api(cfg.limits.prefect_startup_seconds)
    _warm_imports()
    from weakflow.flows import api
    import weakflow.flows.pipeline  # noqa: F401  (torch, MLflow, sklearn: ~3 s, imported while the API starts)

    _quiet_expected_errors()
    api_ready()
    result = api.run(cfg)  # on the task runner parallel.runner names
    runtime.drain_prefect()
    table = Table(title="weakflow run summary", show_lines=False)
    table.add_column("stage", style="bold")
    table.add_column("result")
    for stage, figures in result.summary:
        table.add_row(stage, figures)
    console = Console()
    console.print(table)
    console.print(f"model [bold]{result.model_name}[/] version [bold]{result.version}[/] alias [bold]{result.alias}[/]")
    run_path = f"#/experiments/{result.experiment_id}/runs/{result.run_id}"
    if result.tracking_uri.startswith(("http://", "https://")):
        print(f"open the run:       {result.tracking_uri}/{run_path}")
    else:  # plain print: a wrapped command cannot be copied
        print(f"open the MLflow UI: {Path(sys.executable).parent / 'mlflow'} ui --backend-store-uri {result.tracking_uri} --port 5000")
        print(f"then browse:        http://127.0.0.1:5000/{run_path}")
    return 0


def entry() -> None:
    """The console script. Run as a supervisor (flows/runtime.py): the command itself runs in a child
    process of its own session, and when it ends nothing it started is left running (a Prefect API
    server, a worker) or holding the caller's pipes, and a stage stuck in C code past its time limit, or
    a command that ignores SIGTERM, is killed. Help and usage errors are answered here, with no child.
    Tests call :func:`main` and exit normally."""
    from weakflow.flows import runtime

    if runtime.is_supervised_child() or not runtime.can_supervise():
        runtime.run_child(main)
    args = build_parser().parse_args()  # --help, a usage error: answered (and exited) here
    runtime.exit_like(runtime.supervise(sys.argv[1:], args.command))


if __name__ == "__main__":
    entry()
