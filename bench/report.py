"""Time the review report (challenger vs champion with bootstrap intervals, corruption suite, label-noise
view; tasks/report/build.py) adds to a `weakflow run` on the demo.

Each repeat runs, as fresh processes, alternating: `weakflow run` twice in one workspace with the report
on (the first run has no champion; the second re-scores the first's champion and runs the corruption
suite for both) and the same two runs in another workspace with `--set report.enabled=false`. Reported:
the median process walls and their difference; the evaluate + register stage runs' durations from MLflow
(they hold all of the report's work and none of the training, whose run-to-run variation blurs the walls
on a busy machine), whose difference is the added time; and the evaluate run's own `report_seconds`
metric. Target: added time <= 10% of a run's wall.

    python -m bench.report [--repeats 3] [--no-write] [--set KEY=VALUE ...] [--keep DIR]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

from bench.common import publish
from bench.pipeline import BIN, timed


def _runs(workspace: Path, stage: str) -> list:
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{(workspace / 'mlflow.db').resolve()}")
    exp = client.get_experiment_by_name("weakflow")
    return client.search_runs([exp.experiment_id], f"tags.`weakflow.stage` = '{stage}'",
                              order_by=["attributes.start_time ASC"])


def report_seconds(workspace: Path) -> list[float]:
    """``report_seconds`` of every evaluate run in the workspace's store, oldest first."""
    return [r.data.metrics["report_seconds"] for r in _runs(workspace, "evaluate") if "report_seconds" in r.data.metrics]


def stage_seconds(workspace: Path) -> list[float]:
    """Per pipeline run, oldest first: the evaluate and register stage runs' durations together (MLflow run
    start to end), which hold all the report's work (writing the gate verdict into the report runs inside
    the register run).
    Far less noisy than process walls on a shared machine, since training does not enter it."""
    durations = [[(r.info.end_time - r.info.start_time) / 1000 for r in _runs(workspace, s)] for s in ("evaluate", "register")]
    return [e + r for e, r in zip(*durations, strict=True)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-write", action="store_true", help="print the section instead of writing docs/benchmarks.md")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="extra config overrides (both arms)")
    parser.add_argument("--keep", type=Path, default=None, help="keep the last repeat's workspaces under this folder")
    args = parser.parse_args()
    extra = [a for kv in args.set for a in ("--set", kv)]
    walls: dict[str, list[float]] = {"on_first": [], "on_again": [], "off_first": [], "off_again": []}
    inside: dict[str, list[float]] = {"first": [], "again": []}
    stages: dict[str, list[float]] = {f"{arm}_{when}": [] for arm in ("on", "off") for when in ("first", "again")}
    for i in range(args.repeats):
        with tempfile.TemporaryDirectory() as a, tempfile.TemporaryDirectory() as b:
            arms = [("on", a, []), ("off", b, ["--set", "report.enabled=false"])]
            if i % 2:  # alternate which arm goes first
                arms.reverse()
            for arm, ws, flags in arms:
                for when in ("first", "again"):
                    wall, _ = timed([str(BIN / "weakflow"), "run", "--workspace", ws, *flags, *extra])
                    walls[f"{arm}_{when}"].append(wall)
            first, again = report_seconds(Path(a))
            for arm, ws in (("on", a), ("off", b)):
                for when, seconds in zip(("first", "again"), stage_seconds(Path(ws)), strict=True):
                    stages[f"{arm}_{when}"].append(seconds)
            if args.keep is not None and i == args.repeats - 1:
                import shutil

                for arm, ws in (("on", a), ("off", b)):
                    shutil.copytree(ws, args.keep / f"report-{arm}", dirs_exist_ok=True)
            inside["first"].append(first)
            inside["again"].append(again)
        print(f"repeat {i}: report on {walls['on_first'][-1]:.1f} / {walls['on_again'][-1]:.1f} s, off "
              f"{walls['off_first'][-1]:.1f} / {walls['off_again'][-1]:.1f} s (first run / again with a champion); "
              f"report_seconds {inside['first'][-1]:.2f} / {inside['again'][-1]:.2f}; evaluate + register on "
              f"{stages['on_first'][-1]:.2f} / {stages['on_again'][-1]:.2f} s, off {stages['off_first'][-1]:.2f} / "
              f"{stages['off_again'][-1]:.2f} s")
    med = {k: statistics.median(v) for k, v in walls.items()}
    rows = []
    for when, label in (("first", "first run (no champion)"), ("again", "second run (champion re-scored)")):
        on, off, rep = med[f"on_{when}"], med[f"off_{when}"], statistics.median(inside[when])
        st_on, st_off = statistics.median(stages[f"on_{when}"]), statistics.median(stages[f"off_{when}"])
        rows.append(f"| {label} | {off:.1f} | {on:.1f} | {on - off:+.1f} ({(on - off) / off:+.1%}) | {st_off:.2f} | "
                    f"{st_on:.2f} | **{st_on - st_off:+.2f} ({(st_on - st_off) / off:+.1%})** | {rep:.2f} ({rep / off:.1%}) | "
                    f"{', '.join(f'{w:.1f}' for w in walls[f'off_{when}'])} / {', '.join(f'{w:.1f}' for w in walls[f'on_{when}'])} |")
    body = (
        "## Review report and corruption suite: cost per pipeline run\n\n"
        f"`weakflow run` on the demo{' with ' + ' '.join(args.set) if args.set else ''}, fresh processes, "
        f"median of {args.repeats} repeats per arm; the report arm builds `evaluation/report.html` (bootstrap "
        "1,000 paired resamples, 5 corruptions x 3 severities, cleanlab label issues, figures). "
        "`report_seconds` is the evaluate run's own timing of the report (champion load, scores and bootstrap, "
        "corruption suite, label noise, figures, logging). The process walls include training, whose time "
        "varies by several seconds from run to run on a shared 2-core machine, so their difference is blurred; the "
        "evaluate + register stage runs (MLflow start to end) hold all of the report's work and none of the "
        "training, so their difference (shown as a share of the report-off wall) is the added time. "
        "Target: at most 10% of the run's wall.\n\n"
        "| run | report off: wall s | report on: wall s | wall difference | evaluate + register off s | "
        "evaluate + register on s | added time (share of off wall) | report_seconds (share) | all walls off / on |\n"
        "|---|---|---|---|---|---|---|---|---|\n" + "\n".join(rows) + "\n"
    )
    publish("report", body, dry_run=args.no_write)


if __name__ == "__main__":
    main()
