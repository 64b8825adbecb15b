"""The ``weakflow`` command line: the parser, and :func:`main`, which looks the command's handler up in
``flows/commands.py``'s table and turns the errors a user can fix into one line. What the commands print is
``flows/console.py``; how the command's process runs (Prefect's temporary API, the fast exit) is
``flows/runtime.py``, and the supervisor around it ``flows/supervisor.py``. Heavy imports happen inside the
handlers, so ``--help`` is instant."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from weakflow.flows.commands import HANDLERS

if TYPE_CHECKING:
    from weakflow.tasks.lib.config import Config

EXAMPLES = """\
examples:
  weakflow run                                   # the demo: digits, 40% symmetric weak-label noise
  weakflow run --config my.yaml                  # your own Parquet/CSV files (docs/pages/guides/tables.md)
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

def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", "-c", type=Path, help="YAML config file (default: built-in demo settings)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override one config key, e.g. --set weak_train.epochs=20 (repeatable)")
    p.add_argument("--tracking-uri", help="MLflow tracking URI, e.g. http://127.0.0.1:5000 (default: SQLite in the workspace)")
    p.add_argument("--workspace", type=Path, help="folder for mlflow.db, artifacts and generated data")


def _command(sub: argparse._SubParsersAction, name: str, help: str, examples: list[str],
             description: str | None = None) -> argparse.ArgumentParser:
    """One sub-command with its examples in ``--help`` and the shared config flags."""
    p = sub.add_parser(name, help=help, description=description, formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog="examples:\n" + "".join(f"  {e}\n" for e in examples))
    _add_config_args(p)
    return p


def _at_least(low: int) -> Callable[[str], int]:
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
    predict.add_argument("--image-root", type=Path, default=None, metavar="DIR",
                         help="folder relative picture paths start from (default: the input file's folder)")
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
        "brightness (dimmer, lower contrast), prior (60% of rows from classes 0 and 1).")
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


def _load(args: argparse.Namespace) -> Config:
    from weakflow.tasks.lib.config import load_config

    overrides = list(args.overrides)
    if args.tracking_uri:
        overrides.append(f"tracking.tracking_uri={args.tracking_uri}")
    if args.workspace:
        overrides.append(f"tracking.workspace={args.workspace}")
    return load_config(args.config, overrides)


def main(argv: list[str] | None = None) -> int:
    """One command in this process (tests call it): its handler, with the errors a user can fix turned into
    one line on stderr and an exit status (2: a config error; 1: bad data, the registry, a time limit)."""
    args = build_parser().parse_args(argv)
    from weakflow.flows import runtime

    runtime.quiet_telemetry()
    from weakflow.tasks.lib.errors import ConfigError, DataError, RegistryError

    try:
        return HANDLERS[args.command](args, _load(args))  # flows/commands.py
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return 2
    except RuntimeError as exc:  # RegistryError, StageTimeout, PrefectStartupError: a clear one-line reason
        from weakflow.flows.runtime import PrefectStartupError
        from weakflow.tasks.lib.stage import StageTimeout

        if not isinstance(exc, (RegistryError, StageTimeout, PrefectStartupError)):
            raise
        print(f"{args.command}: {exc}", file=sys.stderr)
        return 1
    except DataError as exc:
        print(f"\nrun stopped before training: {exc}\nnothing was registered; the current champion is unchanged.",
              file=sys.stderr)
        return 1


def entry() -> None:
    """The console script. Run as a supervisor (flows/supervisor.py): the command itself runs in a child
    process of its own session (flows/runtime.py :func:`run_child`), and when it ends nothing it started is
    left running (a Prefect API server, a worker) or holding the caller's pipes, and a stage stuck in C code
    past its time limit, or a command that ignores SIGTERM, is killed. Help and usage errors are answered
    here, with no child. Tests call :func:`main` and exit normally."""
    from weakflow.flows import supervisor

    if supervisor.is_supervised_child() or not supervisor.can_supervise():
        from weakflow.flows.runtime import run_child

        run_child(main)
    args = build_parser().parse_args()  # --help, a usage error: answered (and exited) here
    supervisor.exit_like(supervisor.supervise(sys.argv[1:], args.command))


if __name__ == "__main__":
    entry()
