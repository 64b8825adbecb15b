"""End-to-end wall of `weakflow run` on the demo versus the same stages as plain functions.

Both are timed as fresh processes from a cold workspace (imports, demo data generation, everything),
alternating, and the median of --repeats is reported.

    python -m bench.pipeline [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import ROOT, publish

BIN = Path(sys.executable).parent


def timed(cmd: list[str]) -> tuple[float, str]:
    env = {**os.environ, "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1",
           "MLFLOW_DISABLE_TELEMETRY": "true", "GX_ANALYTICS_ENABLED": "false"}
    t = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return wall, proc.stdout + proc.stderr


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    flow_walls, warm_walls, plain_walls, stage_lines = [], [], [], []
    for i in range(args.repeats):
        with tempfile.TemporaryDirectory() as a, tempfile.TemporaryDirectory() as b:
            wall, _ = timed([str(BIN / "weakflow"), "run", "--workspace", a])
            flow_walls.append(wall)
            wall, _ = timed([str(BIN / "weakflow"), "run", "--workspace", a])  # retraining: store exists, champion re-scored
            warm_walls.append(wall)
            wall, out = timed([sys.executable, "-m", "bench.plain", "--workspace", b])
            plain_walls.append(wall)
            stage_lines.append(next(line for line in out.splitlines() if line.startswith("stage seconds")))
        print(f"repeat {i}: weakflow run {flow_walls[-1]:.1f} s (again in the same workspace {warm_walls[-1]:.1f} s), "
              f"plain functions {plain_walls[-1]:.1f} s")
    flow, plain = statistics.median(flow_walls), statistics.median(plain_walls)
    body = (
        "## Demo pipeline end to end: `weakflow run` vs. plain functions\n\n"
        f"Median of {args.repeats} cold runs each (fresh process and workspace; imports, demo data, validation "
        "with Data Docs, three trainings, evaluation, registration).\n\n"
        "| what | wall s (median) | all runs |\n|---|---|---|\n"
        f"| `weakflow run` (Prefect temporary API + MLflow SQLite) | {flow:.1f} | {', '.join(f'{w:.1f}' for w in flow_walls)} |\n"
        f"| `weakflow run` again in the same workspace (store exists; champion re-scored by the gate) | "
        f"{statistics.median(warm_walls):.1f} | {', '.join(f'{w:.1f}' for w in warm_walls)} |\n"
        f"| same stages as plain functions (`python -m bench.plain`) | {plain:.1f} | {', '.join(f'{w:.1f}' for w in plain_walls)} |\n"
        f"| **ratio** | **{flow / plain:.2f}** | target ≤ 1.3; wall target ≤ 90 s |\n\n"
        f"Plain-function stage split (last repeat): {stage_lines[-1].split(':', 1)[1].strip()}.\n"
    )
    publish("pipeline", body, dry_run=args.no_write)


if __name__ == "__main__":
    main()
