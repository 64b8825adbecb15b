"""What the ``weakflow`` commands print: each function turns a command's typed result into text (or a rich
table), and :func:`show` prints them. Nothing here computes, reads or writes anything else.

Only the standard library at module level: rich and pandas load when a command prints, never for ``--help``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pandas as pd
    from rich.console import RenderableType
    from rich.table import Table

    from weakflow.deploy.registry import Promotion
    from weakflow.flows.api import RunResult
    from weakflow.monitoring.traffic import TrafficResult
    from weakflow.tasks.batch_predict import PredictJob
    from weakflow.tasks.lfs import LfsResult


class Markup(str):
    """A line with rich markup (``[bold]...[/]``): :func:`show` prints it through rich, styled on a terminal."""


def show(*parts: str | RenderableType, wide: bool = False) -> None:
    """Print each part: plain text with :func:`print` (never wrapped, so a command can be copied, and
    brackets in data never read as markup), :class:`Markup` and rich renderables through rich. ``wide``: on
    a pipe or a file there is no width to fit, so a table gets 200 columns rather than being squeezed into 80."""
    for part in parts:
        if isinstance(part, str) and not isinstance(part, Markup):
            print(part)
            continue
        from rich.console import Console

        console = Console()
        (console if console.is_terminal or not wide else Console(width=200)).print(part)


def one_line(error: object) -> str:
    """An error's message on one line (messages naming many rows or columns wrap inside)."""
    return " ".join(str(error).split())


# --------------------------------------------------------------------------------------------------------
# weakflow run


def run_summary(result: RunResult) -> Table:
    """One row per stage: its one-line figures."""
    from rich.table import Table

    table = Table(title="weakflow run summary", show_lines=False)
    table.add_column("stage", style="bold")
    table.add_column("result")
    for stage, figures in result.summary:
        table.add_row(stage, figures)
    return table


def run_model(result: RunResult) -> Markup:
    return Markup(f"model [bold]{result.model_name}[/] version [bold]{result.version}[/] alias [bold]{result.alias}[/]")


def run_links(result: RunResult, mlflow: Path) -> str:
    """Where to see the run: its page on a tracking server, or the command that opens a local store's UI
    (``mlflow``: the MLflow executable beside this Python)."""
    run_path = f"#/experiments/{result.experiment_id}/runs/{result.run_id}"
    if result.tracking_uri.startswith(("http://", "https://")):
        return f"open the run:       {result.tracking_uri}/{run_path}"
    return (f"open the MLflow UI: {mlflow} ui --backend-store-uri {result.tracking_uri} --port 5000\n"
            f"then browse:        http://127.0.0.1:5000/{run_path}")


# --------------------------------------------------------------------------------------------------------
# data: validate, lfs, predict


def validated(summary: str, rows: dict[str, int], test_rows: int) -> str:
    return f"validation passed: {summary}; rows {rows}, test {test_rows}"


def lfs_header(result: LfsResult) -> str:
    return (f"{len(result.table)} source(s) applied to {result.rows} rows of {result.path} ({result.gold_rows} gold) "
            f"in {result.seconds:.2f} s ({result.shards} process{'es' if result.shards > 1 else ''}); "
            f"classes {result.classes}, abstain {result.abstain!r}")


def lfs_table(result: LfsResult) -> Table:
    """Per source: the class(es) it votes, coverage, overlap, conflict, votes, accuracy on gold [95% CI]."""
    from rich import box
    from rich.markup import escape
    from rich.table import Table

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
    return table


def lfs_examples(examples: pd.DataFrame) -> list[str]:
    """Example rows per source (plain text: rich would wrap the rows and read brackets in them as markup)."""
    if not len(examples):
        return []
    lines = ["examples (rows count from 0, the header not counted):"]
    for source, group in examples.groupby("source", sort=False):
        lines.append(f"  {source}")
        for ex in group.to_dict("records"):
            said = f"votes {ex['vote']}" + (f", gold {ex['gold']}" if ex["gold"] else "")
            lines.append(f"    {ex['kind']:5}  row {ex['row']}: {said}: {ex['text']}")
    return lines


def scored(job: PredictJob) -> str:
    return (f"scored {job.rows} rows of {job.input} with {job.model_name} version {job.model_version} in "
            f"{job.seconds:.1f} s ({job.rows_per_second:,.0f} rows/s) -> {job.output}; MLflow run {job.run_id}")


# --------------------------------------------------------------------------------------------------------
# the registry and serving


def versions(name: str, uri: str, frame: pd.DataFrame) -> str:
    """``weakflow models``: registered versions, aliases and key metrics."""
    return f"{name} in {uri}\n" + frame.to_string(index=False, na_rep="", float_format=lambda v: f"{v:.4f}")


def promoted(name: str, result: Promotion) -> str:
    said = result.decision.reason if result.decision.passed else f"forced past: {result.decision.reason}"
    return f"{name} v{result.version} is champion (was v{result.previous or 'none'}): {said}"


def rolled_back(name: str, old: str, new: str) -> str:
    return f"{name}: champion rolled back from v{old} to v{new}"


def serving(name: str, alias: str, version: str, host: str, port: int) -> str:
    return f"serving {name}@{alias} (v{version}) on http://{host}:{port} (POST /predict, GET /health, GET /model)"


# --------------------------------------------------------------------------------------------------------
# monitoring: alerts, traffic, feedback, deploy


def alerts(frame: pd.DataFrame, url: str) -> str:
    """``weakflow alerts``: one line per alert, with what it found, and where the latest report is."""
    if frame.empty:
        return f"no alerts in {url}"
    import pandas as pd

    from weakflow.monitoring.alerts import finding

    frame = frame.copy()
    frame["finding"] = [finding(kind, json.loads(cols or "[]"), message)
                        for kind, cols, message in zip(frame["kind"], frame["drifted_columns"], frame["message"])]
    drift = frame["kind"] == "drift"  # share and prediction drift mean nothing for a contamination alert
    frame["drift_share"] = [f"{v:.2f}" if d else "-" for v, d in zip(frame["drift_share"], drift)]
    frame["prediction_drifted"] = [str(bool(v)) if d else "-" for v, d in zip(frame["prediction_drifted"], drift)]
    frame["ts"] = pd.to_datetime(frame["ts"]).dt.strftime("%Y-%m-%d %H:%M:%S")
    table = frame[["id", "ts", "kind", "model_name", "model_version", "drift_share", "prediction_drifted",
                   "webhook", "finding"]].to_string(index=False, justify="left")
    return f"{table}\nreports: {frame['report_uri'].iloc[0]} (latest)"


def traffic(result: TrafficResult, rows: int, shift: str, url: str) -> str:
    """``weakflow simulate-traffic``: what was sent and answered, and the first few failures."""
    lines = [f"sent {result.requests} requests ({rows} rows, shift {shift}) to {url}: {result.answered} answered "
             f"by version(s) {sorted(result.versions)}, {len(result.errors)} failed"]
    return "\n".join(lines + [f"  {err}" for err in result.errors[:3]])


def not_logged(missing: list, url: str) -> str:
    return (f"{len(missing)} answered row(s) not in the prediction log {url} after 30 s, e.g. "
            f"{missing[:3]}; is the server logging to this database (serve.prediction_log_url)?")


DEPLOY_NEEDS_SERVER = (
    "weakflow deploy needs a running Prefect server (PREFECT_API_URL, e.g. http://127.0.0.1:4200/api): "
    "Prefect's temporary API runs no scheduler and forgets the deployments when this process ends. "
    "`bash deploy/servers.sh start` starts one.")
