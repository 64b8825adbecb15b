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
  weakflow show-config --set pseudo_label.threshold=0.95
"""


def _quiet_telemetry() -> None:
    """Offline defaults, set at command time (never at import)."""
    for key, value in {"PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1",
                       "MLFLOW_DISABLE_TELEMETRY": "true", "GX_ANALYTICS_ENABLED": "false",
                       "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}.items():
        os.environ.setdefault(key, value)


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", "-c", type=Path, help="YAML config file (default: built-in demo settings)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override one config key, e.g. --set weak_train.epochs=20 (repeatable)")
    p.add_argument("--tracking-uri", help="MLflow tracking URI, e.g. http://127.0.0.1:5000 (default: SQLite in the workspace)")
    p.add_argument("--workspace", type=Path, help="folder for mlflow.db, artifacts and generated data")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="weakflow", description="Train production models from weak labels, tracked in MLflow, orchestrated by Prefect.",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run = sub.add_parser("run", help="run the whole training pipeline", formatter_class=argparse.RawDescriptionHelpFormatter,
                         description="validate -> weak_train -> pseudo_label -> full_train -> evaluate -> register",
                         epilog="examples:\n  weakflow run\n  weakflow run --config my.yaml --set full_train.epochs=80\n")
    _add_config_args(run)
    val = sub.add_parser("validate", help="run only the data validation suite", formatter_class=argparse.RawDescriptionHelpFormatter,
                         epilog="examples:\n  weakflow validate --config my.yaml\n")
    _add_config_args(val)
    show = sub.add_parser("show-config", help="print the effective config as YAML", formatter_class=argparse.RawDescriptionHelpFormatter,
                          epilog="examples:\n  weakflow show-config > my.yaml\n  weakflow show-config --set data.noise.rate=0.2\n")
    _add_config_args(show)
    return parser


def _load(args: argparse.Namespace):  # -> Config
    from tasks.config import load_config

    overrides = list(args.overrides)
    if args.tracking_uri:
        overrides.append(f"tracking.tracking_uri={args.tracking_uri}")
    if args.workspace:
        overrides.append(f"tracking.workspace={args.workspace}")
    return load_config(args.config, overrides)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _quiet_telemetry()
    from tasks.config import ConfigError
    from tasks.data import DataError

    try:
        cfg = _load(args)
        if args.command == "show-config":
            from tasks.config import dump_config

            print(dump_config(cfg), end="")
            return 0
        if args.command == "validate":
            return _validate(cfg)
        return _run(cfg)
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return 2
    except DataError as exc:
        if args.command == "validate":
            print(f"\n{exc}", file=sys.stderr)
        else:
            print(f"\nrun stopped before training: {exc}\nnothing was registered; the current champion is unchanged.",
                  file=sys.stderr)
        return 1


def _validate(cfg) -> int:
    from tasks.validate import load_and_validate

    data, report = load_and_validate(cfg)
    print(f"validation passed: {report.summary()}; rows {data.provenance_counts()}, test {len(data.test)}")
    return 0


def _prestart_prefect_api():  # -> Callable[[], None]
    """Start Prefect's temporary local API (a subprocess, ~3 s) while this process imports the
    pipeline; the returned function waits for it. Prefect keeps one such server per process, so the
    flow finds it running. Nothing happens when PREFECT_API_URL points at a real server."""
    import threading

    from prefect.settings import get_current_settings

    settings = get_current_settings()
    if settings.api.url or not settings.server.ephemeral.enabled:
        return lambda: None
    from prefect.server.api.server import SubprocessASGIServer

    starter = threading.Thread(target=SubprocessASGIServer().start, daemon=True)
    starter.start()
    return starter.join


def _warm_imports() -> None:
    """Import Great Expectations in the background while Prefect starts its temporary API (~5 s of
    waiting on a subprocess); the validate stage then finds it loaded. Python's import lock makes a
    concurrent import safe: the stage's own import waits for this one to finish."""
    import importlib
    import threading

    threading.Thread(target=importlib.import_module, args=("great_expectations",), daemon=True).start()


def _run(cfg) -> int:
    from rich.console import Console
    from rich.table import Table

    api_ready = _prestart_prefect_api()
    _warm_imports()
    from flows.pipeline import training_pipeline  # torch, MLflow, sklearn: ~3 s, while the API starts

    api_ready()
    result = training_pipeline(cfg)
    table = Table(title="weakflow run summary", show_lines=False)
    table.add_column("stage", style="bold")
    table.add_column("result")
    for stage, figures in result.stages:
        table.add_row(stage, figures)
    console = Console()
    console.print(table)
    reg = result.registration
    console.print(f"model [bold]{reg.model_name}[/] version [bold]{reg.version}[/] alias [bold]{reg.alias}[/]")
    run_path = f"#/experiments/{result.experiment_id}/runs/{result.run_id}"
    if result.tracking_uri.startswith(("http://", "https://")):
        print(f"open the run:       {result.tracking_uri}/{run_path}")
    else:  # plain print: a wrapped command cannot be copied
        print(f"open the MLflow UI: {Path(sys.executable).parent / 'mlflow'} ui --backend-store-uri {result.tracking_uri} --port 5000")
        print(f"then browse:        http://127.0.0.1:5000/{run_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
