"""Start-up of the simple commands: wall time of the real console script and the heavy libraries each
command's own process imports, against an older checkout of the code (``--baseline``).

    git archive <rev> flows tasks deploy monitoring data_checks | tar -x -C /tmp/base/weakflow
    python -m bench.startup --workspace WS --baseline /tmp/base

``WS`` is a workspace with a registered model (e.g. after ``weakflow run --workspace WS``). Runs of the
baseline and of this checkout alternate, so a change in the machine's load hits both alike; the table
gives the median of ``--repeats`` runs and the 1-minute load average seen while measuring.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from bench.common import publish

BIN = Path(sys.executable).parent
HEAVY = ("torch", "prefect", "great_expectations", "evidently", "mlflow", "sklearn", "cleanlab", "pandas")
PROBE = """
import json, sys
base = {base!r}
if base:
    sys.path.insert(0, base)
from weakflow.flows.cli import main
try:
    main({argv!r})
except SystemExit:
    pass
print("\\nHEAVY " + json.dumps([m for m in {heavy!r} if m in sys.modules]))
"""


def commands(ws: Path) -> list[list[str]]:
    w = ["--workspace", str(ws)]
    found = [["--help"], ["models", *w], ["alerts", *w], ["predict", "--help"], ["validate", "--help"],
             ["validate", *w], ["show-config"]]
    tests = sorted(ws.glob("data/demo-*/test.parquet"))  # the demo's test split, if the workspace made it
    if tests:
        import tempfile

        out = Path(tempfile.mkdtemp(prefix="startup-")) / "scored.parquet"
        found.append(["predict", *w, "--input", str(tests[0]), "--output", str(out)])
    return found


def console(argv: list[str], base: str | None) -> list[str]:
    """The console script of this checkout, or the baseline's entry point (what its console script ran)."""
    if base is None:
        return [str(BIN / "weakflow"), *argv]
    code = f"import sys; sys.path.insert(0, {base!r}); from weakflow.flows.cli import entry; entry()"
    return [sys.executable, "-c", code, *argv]


def wall(cmd: list[str], cwd: Path) -> float:
    started = time.perf_counter()
    subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=cwd, check=False)
    return time.perf_counter() - started


def heavy_modules(argv: list[str], base: str | None, cwd: Path) -> list[str]:
    """The heavy libraries the command's own process imported (run in-process, not through a supervisor)."""
    out = subprocess.run([sys.executable, "-c", PROBE.format(base=base or "", argv=argv, heavy=HEAVY)],
                         capture_output=True, text=True, cwd=cwd).stdout
    return json.loads(out.rsplit("HEAVY ", 1)[1]) if "HEAVY " in out else ["?"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workspace", type=Path, required=True, help="a workspace with a registered model")
    parser.add_argument("--baseline", type=Path, help="a folder holding weakflow/{flows,tasks,...} of older code")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-write", action="store_true", help="print the section instead of writing it")
    args = parser.parse_args()
    cwd = Path.cwd()
    base = str(args.baseline.resolve()) if args.baseline else None
    rows, loads = [], []
    for argv in commands(args.workspace.resolve()):
        times: dict[str | None, list[float]] = {base: [], None: []}
        for _ in range(args.repeats):
            for which in ([base, None] if base else [None]):
                loads.append(os.getloadavg()[0])
                times[which].append(wall(console(argv, which), cwd))
        after = statistics.median(times[None])
        before = statistics.median(times[base]) if base else None
        label = " ".join("WS" if before_it == "--workspace" else Path(a).name if a.startswith("/") else a
                         for before_it, a in zip(["", *argv], argv))
        rows.append((label, before, after, heavy_modules(argv, base, cwd) if base else None,
                     heavy_modules(argv, None, cwd)))
        print(rows[-1], f"load {loads[-1]:.2f}", flush=True)
    lines = [f"| `weakflow {label}` | " + (f"{before:.2f} | " if base else "")
             + f"{after:.2f} | " + (f"{', '.join(hb) or '-'} | " if base else "") + f"{', '.join(ha) or '-'} |"
             for label, before, after, hb, ha in rows]
    head = ("| command | before (s) | after (s) | heavy imports before | heavy imports after |\n|---|---|---|---|---|"
            if base else "| command | wall (s) | heavy imports |\n|---|---|---|")
    body = (f"## Start-up of the simple commands (wall time of the console script, median of {args.repeats})\n\n"
            f"{head}\n" + "\n".join(lines) + "\n\n"
            f"1-minute load average while measuring: {min(loads):.2f} to {max(loads):.2f} (2 cores). "
            "Heavy imports: which of " + ", ".join(HEAVY) + " the command's own process loaded. `--help` and usage "
            "errors are answered by the supervisor process itself; every other command runs in a child process "
            "that the supervisor starts (flows/supervisor.py), which the 'after' times include.")
    publish("startup", body, args.no_write)


if __name__ == "__main__":
    main()
