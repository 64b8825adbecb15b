"""Nothing a command starts outlives it, nothing hangs (issue 26, items 0-2).

The real console script runs in subprocesses with captured pipes, as a scheduler or CI would run it: when
it exits its pipes close and no process it started (found by a marker in the environment every descendant
inherits) is left, Prefect's temporary API server included. A stage stuck inside C code that holds the GIL
(Python's ``re`` on a catastrophic pattern) is killed by the command's supervisor past
``limits.stage_seconds`` with one line, and SIGTERM ends such a command within seconds. Prefect's start-up
limit is one setting, ``limits.prefect_startup_seconds``, with a one-line message.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pandas as pd
import pytest

from tests.conftest import FAST
from tests.tiny_model import FEATURES, frozen_split, register_tiny, use_registry

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
MARK = "WEAKFLOW_TEST_MARK"
# the labelling function below is imported by the command from this checkout (the command does not put
# its working directory on sys.path)
WITH_TESTS = os.pathsep.join(filter(None, [os.environ.get("PYTHONPATH"), str(ROOT)]))
CATASTROPHIC = (r"(a+)+$", "a" * 40 + "b")  # exponential backtracking in Python's re, all of it holding the GIL


def catastrophic_regex_lf(batch: pd.DataFrame) -> list[int]:
    """A labelling function that never returns: Python's ``re`` backtracking inside C, holding the GIL."""
    re.match(*CATASTROPHIC)
    return [0] * len(batch)


# ----------------------------------------------------------------------------------------------------------
# helpers


def marked(mark: str) -> list[tuple[int, str]]:
    """Live processes (not zombies) whose environment carries ``mark``: what a command left behind."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if f"{MARK}={mark}".encode() not in (entry / "environ").read_bytes().split(b"\0"):
                continue
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if state != "Z":
            found.append((int(entry.name), cmdline[:160]))
    return found


def listening_pids(port: int) -> set[int]:
    """Processes with a listening TCP socket on ``port`` (from /proc/net/tcp and each process's fds)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] == "0A":  # 0A: LISTEN
                inodes.add(fields[9])
    pids = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            for fd in (entry / "fd").iterdir():
                target = os.readlink(fd)
                if target.startswith("socket:[") and target[8:-1] in inodes:
                    pids.add(int(entry.name))
        except OSError:
            continue
    return pids


def kill_marked(mark: str) -> None:
    for pid, _ in marked(mark):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def ticks_since_boot() -> int:
    return int(float(Path("/proc/uptime").read_text().split()[0]) * os.sysconf("SC_CLK_TCK"))


def started_at(pid: int) -> int:
    """A process's start, in clock ticks since boot (/proc/PID/stat field 22); -1 if it is gone."""
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return -1


class Finished:
    def __init__(self, code: int | None, out: str, err: str, seconds: float, hung: bool, left: list,
                 listeners: dict[int, set[int]]) -> None:
        self.code, self.out, self.err, self.seconds, self.hung, self.left, self.listeners = (
            code, out, err, seconds, hung, left, listeners)


def run_command(args: list[str], timeout: float, env: dict[str, str] | None = None, cwd: Path = ROOT) -> Finished:
    """``weakflow <args>`` with captured pipes (``communicate`` returns only when every holder of the
    pipes has closed them); what survived it, and the Prefect API ports it printed."""
    mark = uuid.uuid4().hex
    started, since = time.monotonic(), ticks_since_boot() - 1
    proc = subprocess.Popen([str(BIN / "weakflow"), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, cwd=cwd, env={**os.environ, **(env or {}), MARK: mark})
    try:
        out, err = proc.communicate(timeout=timeout)
        hung = False
    except subprocess.TimeoutExpired:  # the command, or something holding its pipes, is still there
        hung = True
        kill_marked(mark)
        proc.kill()
        out, err = proc.communicate()
    seconds = time.monotonic() - started
    left = marked(mark)
    ports = [int(p) for p in re.findall(r"Starting temporary server on http://127\.0\.0\.1:(\d+)", err + out)]
    # whoever listens on the API server's port now and started after the command did (found by port, not
    # by the marker: a server started with a cleaned environment would be caught here too)
    listeners = {port: {pid for pid in listening_pids(port) if started_at(pid) >= since} for port in ports}
    kill_marked(mark)  # never leave them to the next test
    for pids in listeners.values():
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    return Finished(proc.returncode, out, err, seconds, hung, left, listeners)


def assert_clean(done: Finished, what: str) -> None:
    assert not done.hung, f"{what}: the pipes stayed open past the timeout; survivors {done.left}\n{done.err[-3000:]}"
    assert done.left == [], f"{what}: left running: {done.left}\n{done.err[-3000:]}"
    assert all(not pids for pids in done.listeners.values()), f"{what}: its API server lives on: {done.listeners}"


def supervised(script: str, *args: str) -> list[str]:
    """``script`` (Python code) run as a command under the same supervisor as the console script."""
    return [sys.executable, "-c",
            "import sys\nfrom weakflow.flows.supervisor import exit_like, supervise_process\n"
            f"exit_like(supervise_process([sys.executable, '-c', {script!r}, *sys.argv[1:]], 'run'))", *args]


STUCK_STAGE = """
import re, signal, sys
from weakflow.tasks.lib.stage import run_limited
signal.signal(signal.SIGTERM, lambda *a: sys.exit(3))  # as Prefect's flow engine does: a handler in Python
print("stage starts", flush=True)
run_limited("weak_labels", re.match, (r"(a+)+$", "a" * 40 + "b"), {}, float(sys.argv[1]))
print("stage ended", flush=True)
"""


@contextmanager
def cpu_load() -> Iterator[None]:
    """A busy loop on every core, for the duration."""
    busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(os.cpu_count() or 2)]
    try:
        yield
    finally:
        for proc in busy:
            proc.kill()
            proc.wait()


# ----------------------------------------------------------------------------------------------------------
# the supervisor itself (fast)


def test_a_child_left_holding_the_pipes_is_stopped_when_the_command_ends():
    """A command whose process ends while its own child (here a 5-minute sleep) still holds stdout and
    stderr: the supervisor stops that child, so the caller's captured pipes close and nothing survives."""
    mark = uuid.uuid4().hex
    leaves_a_child = "import subprocess; subprocess.Popen(['sleep', '300']); print('parent done', flush=True)"
    started = time.monotonic()
    proc = subprocess.Popen(supervised(leaves_a_child), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, MARK: mark})
    try:
        out, _ = proc.communicate(timeout=60)
    finally:
        left = marked(mark)
        kill_marked(mark)
    assert (proc.returncode, out) == (0, "parent done\n")
    assert left == []
    assert time.monotonic() - started < 60


def test_a_killed_supervisor_takes_the_command_and_its_children_with_it():
    """SIGKILL to the console script's process (a caller's timeout, the OOM killer) cannot be handled, so the
    supervisor cannot clean up: the command's guard sees the supervisor's pipe close and kills the command's
    whole process group, so the command, its children and the caller's pipes all end."""
    mark = uuid.uuid4().hex
    command = ("from weakflow.flows.supervisor import start_guard\nstart_guard()\nimport subprocess, time\n"
               "subprocess.Popen(['sleep', '300'])\nprint('ready', flush=True)\ntime.sleep(300)")
    proc = subprocess.Popen(supervised(command), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, MARK: mark})
    try:
        assert proc.stdout.readline() == "ready\n"
        proc.kill()
        proc.communicate(timeout=60)  # the command and its sleep hold the pipes until they are gone
        deadline = time.monotonic() + 10
        while marked(mark) and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        left = marked(mark)
        kill_marked(mark)
    assert proc.returncode == -signal.SIGKILL
    assert left == []


def state_of(pid: int) -> str:
    """A process's state letter from /proc (T: stopped)."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


def test_ctrl_z_stops_the_command_and_fg_continues_it():
    """SIGTSTP (Ctrl-Z) reaches only the supervisor (the command is in a session of its own): the command must
    stop with it, not go on writing to the terminal behind a shell that says "Stopped", and continue with it."""
    command = ("import os, time\nprint(os.getpid(), flush=True)\n"
               "for _ in range(600):\n    time.sleep(0.1)\nprint('done', flush=True)")
    proc = subprocess.Popen(supervised(command), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        child = int(proc.stdout.readline())
        proc.send_signal(signal.SIGTSTP)
        deadline = time.monotonic() + 10
        while not (state_of(child) == "T" and state_of(proc.pid) == "T") and time.monotonic() < deadline:
            time.sleep(0.05)
        stopped = state_of(child), state_of(proc.pid)
        proc.send_signal(signal.SIGCONT)
        deadline = time.monotonic() + 10
        while state_of(child) == "T" and time.monotonic() < deadline:
            time.sleep(0.05)
        resumed = state_of(child)
    finally:
        proc.send_signal(signal.SIGCONT)
        proc.terminate()  # the supervisor ends the command and cleans up
        proc.communicate(timeout=60)
    assert stopped == ("T", "T")
    assert resumed != "T"


def test_a_stage_stuck_in_c_code_past_its_limit_ends_the_command_with_one_line():
    mark = uuid.uuid4().hex
    started = time.monotonic()
    proc = subprocess.Popen(supervised(STUCK_STAGE, "2"), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, MARK: mark})
    try:
        out, err = proc.communicate(timeout=120)  # without the supervisor's limit: it never returns
    finally:
        left = marked(mark)
        kill_marked(mark)
    assert time.monotonic() - started < 120
    assert out == "stage starts\n"
    assert proc.returncode == 1
    assert err.splitlines() == [
        "weakflow run: stage weak_labels ran past its time limit of 2 s (setting limits.stage_seconds) and did not "
        "stop within 10 s more (stuck inside C code), so the command was killed; nothing was registered and the "
        "current champion is unchanged"], err
    assert left == []


def test_sigterm_ends_a_command_stuck_in_c_code_within_seconds():
    mark = uuid.uuid4().hex
    proc = subprocess.Popen(supervised(STUCK_STAGE, "600"), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, MARK: mark})
    try:
        assert proc.stdout.readline() == "stage starts\n"
        time.sleep(1.0)  # inside re.match now: the child's SIGTERM handler cannot run
        sent = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
        ended = time.monotonic() - sent
    finally:
        left = marked(mark)
        kill_marked(mark)
    assert proc.returncode == -signal.SIGTERM  # killed by it, as without a supervisor
    assert ended < 60
    assert err.strip() == ("weakflow run: stopped by SIGTERM; it did not end within 10 s, so it was killed "
                           "(in stage weak_labels)")
    assert left == []


# ----------------------------------------------------------------------------------------------------------
# simple commands start no flow and load only what they use (item 8)

IMPORTS_OF = """
import json, sys
from weakflow.flows.cli import main
try:
    code = main(sys.argv[1:])
except SystemExit as exc:
    code = exc.code
heavy = ("prefect", "torch", "great_expectations", "evidently", "mlflow")
print(json.dumps({"code": code, "loaded": [m for m in heavy if m in sys.modules]}))
"""


def loaded_by(argv: list[str], cwd: Path) -> tuple[dict, str]:
    """The command run in-process (no supervisor) in a fresh interpreter: its exit code, the heavy
    libraries it loaded, and its stdout."""
    import json

    proc = subprocess.run([sys.executable, "-c", IMPORTS_OF, *argv], capture_output=True, text=True, cwd=cwd,
                          timeout=600)
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["code"] in (0, 1), (argv, proc.stderr[-2000:])
    return result, proc.stdout


def test_simple_commands_import_only_what_they_use(tmp_path):
    ws = str(tmp_path / "ws")
    expected = {  # models reads the registry (MLflow); alerts reads the prediction log's database
        ("models", "--workspace", ws): {"mlflow"},
        ("alerts", "--workspace", ws): set(),
        ("predict", "--help"): set(),
        ("validate", "--help"): set(),
    }
    said = {}
    for argv, allowed in expected.items():
        result, said[argv[0] + argv[1]] = loaded_by(list(argv), tmp_path)
        assert set(result["loaded"]) <= allowed, f"weakflow {' '.join(argv)} loaded {result['loaded']}"
    assert "no alerts in" in said["alerts--workspace"]  # it really read the (empty) prediction log


@pytest.mark.slow
def test_validate_starts_no_flow_and_loads_neither_prefect_nor_torch(tmp_path):
    result, out = loaded_by(["validate", "--workspace", str(tmp_path / "ws")], tmp_path)
    assert "validation passed" in out  # it really validated (with GX)
    assert set(result["loaded"]) <= {"great_expectations", "mlflow"}, result["loaded"]


# ----------------------------------------------------------------------------------------------------------
# Prefect's start-up limit (item 1)


@pytest.fixture
def champion_workspace(tmp_path: Path) -> Path:
    """A registry with a tiny champion model named ``tiny`` and its drift reference."""
    ws = tmp_path / "ws"
    use_registry(ws)
    register_tiny("tiny", alias="champion", reference=True)
    return ws


def test_prefect_start_up_past_its_limit_is_one_line_naming_the_setting(champion_workspace):
    done = run_command(["monitor", "--workspace", str(champion_workspace), "--set", "tracking.model_name=tiny",
                        "--set", "limits.prefect_startup_seconds=0.2"], timeout=300)
    assert_clean(done, "monitor")
    assert done.code == 1, done.err[-3000:]
    assert "Traceback" not in done.err
    last = done.err.strip().splitlines()[-1]
    assert last.startswith("monitor: Prefect's temporary API server did not answer within 0.2 s (setting "
                           "limits.prefect_startup_seconds)"), done.err[-3000:]


@pytest.mark.slow
def test_prefect_start_up_limit_applies_to_run_and_the_python_api(tmp_path):
    done = run_command(["run", "--workspace", str(tmp_path / "ws"), "--set", "limits.prefect_startup_seconds=0.2"],
                       timeout=600)
    assert_clean(done, "run")
    assert done.code == 1 and "Traceback" not in done.err, done.err[-3000:]
    assert "did not answer within 0.2 s (setting limits.prefect_startup_seconds)" in done.err.strip().splitlines()[-1]
    script = ("from weakflow.flows import api\n"
              "from weakflow.flows.runtime import PrefectStartupError\n"
              f"cfg = api.config(None, {{'limits.prefect_startup_seconds': 0.2, 'tracking.workspace': {str(tmp_path / 'api')!r}}})\n"
              "try:\n    api.run(cfg)\nexcept PrefectStartupError as exc:\n    print('raised:', exc)\n")
    mark = uuid.uuid4().hex
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600, cwd=tmp_path,
                          env={**os.environ, MARK: mark})
    left = marked(mark)
    kill_marked(mark)
    assert proc.stdout.startswith("raised: Prefect's temporary API server did not answer within 0.2 s (setting "
                                  "limits.prefect_startup_seconds)"), proc.stdout + proc.stderr[-3000:]
    assert left == []


# ----------------------------------------------------------------------------------------------------------
# the real commands, under CPU load (slow)


@pytest.mark.slow
def test_commands_under_cpu_load_close_their_pipes_and_leave_nothing_running(tmp_path):
    ws = tmp_path / "ws"
    use_registry(ws)
    register_tiny("tiny", alias="champion", reference=True)
    frozen_split()[FEATURES].to_csv(tmp_path / "rows.csv", index=False)
    fast = sum((["--set", o] for o in [*FAST, "weak_train.epochs=3", "full_train.epochs=3"]), [])
    tiny = ["--workspace", str(ws), "--set", "tracking.model_name=tiny"]
    # Prefect's own start-up wait exceeded, as on a loaded machine: it used to leave the first server running
    slow_prefect = {"PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "1"}
    commands = [
        (["run", "--workspace", str(tmp_path / "run"), *fast], {}),
        (["run", "--workspace", str(tmp_path / "run"), *fast], slow_prefect),
        (["monitor", *tiny], {}), (["monitor", *tiny], slow_prefect),
        (["predict", *tiny, "--input", str(tmp_path / "rows.csv"), "--output", str(tmp_path / "a.csv")], {}),
        (["predict", *tiny, "--input", str(tmp_path / "rows.csv"), "--output", str(tmp_path / "b.csv")], {}),
        (["models", *tiny], {}), (["models", *tiny], {}),
    ]
    with cpu_load():
        for args, env in commands:
            done = run_command(args, timeout=900, env=env)
            what = f"weakflow {args[0]} ({'Prefect start-up wait 1 s' if env else 'defaults'})"
            assert_clean(done, what)
            assert done.code == 0, f"{what}: exit {done.code}\n{done.err[-3000:]}"
    assert (tmp_path / "b.csv").exists()


@pytest.mark.slow
def test_a_run_stuck_in_a_labelling_function_is_killed_past_the_stage_limit(tmp_path):
    """The issue's case: a run whose labelling function never returns from ``re`` (GIL held) ignored
    ``limits.stage_seconds`` and SIGTERM. Now the supervisor ends it with one line, marks the stage's
    and the pipeline's MLflow runs FAILED, and nothing is registered."""
    from mlflow import MlflowClient

    ws = tmp_path / "ws"
    lf = "weak_labels.labeling_functions=[tests.model.test_process_cleanup:catastrophic_regex_lf]"
    fast = sum((["--set", o] for o in FAST), [])
    done = run_command(["run", "--workspace", str(ws), *fast, "--set", lf, "--set", "limits.stage_seconds=60"],
                       timeout=900, env={"PYTHONPATH": WITH_TESTS})
    assert_clean(done, "run")
    assert done.code == 1, done.err[-3000:]
    assert done.err.strip().splitlines()[-1] == (
        "weakflow run: stage weak_labels ran past its time limit of 60 s (setting limits.stage_seconds) and did not "
        "stop within 10 s more (stuck inside C code), so the command was killed; nothing was registered and the "
        "current champion is unchanged")
    client = MlflowClient(f"sqlite:///{ws / 'mlflow.db'}")
    assert client.search_registered_models() == []
    runs = client.search_runs([client.get_experiment_by_name("weakflow").experiment_id])
    status = {r.data.tags.get("weakflow.stage"): r.info.status for r in runs}
    assert status["weak_labels"] == "FAILED" and status["pipeline"] == "FAILED", status


@pytest.mark.slow
def test_sigterm_ends_a_run_stuck_in_a_labelling_function(tmp_path):
    from mlflow import MlflowClient

    ws = tmp_path / "ws"
    lf = "weak_labels.labeling_functions=[tests.model.test_process_cleanup:catastrophic_regex_lf]"
    fast = sum((["--set", o] for o in FAST), [])
    mark = uuid.uuid4().hex
    proc = subprocess.Popen([str(BIN / "weakflow"), "run", "--workspace", str(ws), *fast, "--set", lf],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                            env={**os.environ, MARK: mark, "PYTHONPATH": WITH_TESTS})
    seen: list[str] = []
    try:
        for line in proc.stderr:  # the stage after governance is weak_labels, which calls the function
            seen.append(line)
            if "Task run 'governance-" in line and "Completed" in line:
                break
        assert proc.poll() is None, "".join(seen[-30:])
        time.sleep(5)  # inside re.match now
        sent = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=300)  # longer than the bound below, so that bound is what is tested
        ended = time.monotonic() - sent
    finally:
        left = marked(mark)
        kill_marked(mark)
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGTERM, err[-3000:]  # killed by it, as without a supervisor
    assert ended < 60  # the supervisor's 10 s grace, then the kill
    assert err.strip().splitlines()[-1] == ("weakflow run: stopped by SIGTERM; it did not end within 10 s, so it was "
                                            "killed (in stage weak_labels)")
    assert left == []
    client = MlflowClient(f"sqlite:///{ws / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("weakflow").experiment_id])
    assert {r.data.tags.get("weakflow.stage"): r.info.status for r in runs}["weak_labels"] == "FAILED"
