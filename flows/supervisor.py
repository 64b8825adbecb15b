"""The ``weakflow`` console script's supervisor: the command runs in a child process that leaves nothing
behind, under the hard stage limit.

**The supervisor.** The console script (``flows/cli.py`` :func:`entry`) is this module's :func:`supervise`:
a small standard-library process that runs the real command as a child in a session (process group) of
its own, with the terminal's stdin/stdout/stderr, forwards SIGINT/SIGTERM/SIGHUP to it, and when the child
exits stops whatever is left of its group (SIGTERM, a short grace, SIGKILL) and of anything else that
descended from it (the supervisor is the "child subreaper" on Linux, so orphans are re-parented to it,
not to init) before it exits with the child's status. So no Prefect API server, Dask worker or other
child of a command can outlive it or hold the caller's pipes open, whatever the cause. The child's side
(the command itself, its guard and its fast exit) is ``flows/runtime.py`` :func:`run_child`.

**The hard stage limit.** A limited stage (``tasks/lib/stage.py``) runs in a worker thread under a
deadline; when it is stuck inside C code that holds the GIL (a catastrophic regular expression), no thread
of the process runs again and neither that watchdog nor a SIGTERM handler ever fires. So each limited
stage also leaves a small record (``tasks/lib/stage.py`` ``StageRecord``: stage, limit, deadline, pid,
its MLflow run) in the folder named by ``WEAKFLOW_STAGE_DEADLINES``; the supervisor, which shares no GIL
with the child, kills the child's process group when a deadline has passed by :data:`STOP_GRACE_SECONDS`
and the stage is still running, prints one line naming the stage, the limit and the setting, marks the
stage's and the pipeline's MLflow runs FAILED and exits 1. The Python API (``weakflow.flows.api``) has no
supervisor and keeps the thread-based limit.

Nothing here imports anything outside the standard library at module level (``tasks/lib/stage.py``,
imported for its record format, imports Prefect only when a stage runs): the supervisor must start in
milliseconds.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from weakflow.tasks.lib.stage import STAGES_ENV  # the folder where limited stages leave deadline records

SUPERVISOR_ENV = "WEAKFLOW_SUPERVISOR_PID"  # set in the child: the pid of the supervisor that runs it
GUARD_ENV = "WEAKFLOW_SUPERVISOR_GUARD_FD"  # set in the child: a pipe's read end that closes when the supervisor dies
STOP_GRACE_SECONDS = 10.0  # after a forwarded SIGTERM/SIGINT, or a stage deadline, before SIGKILL
LEFTOVER_GRACE_SECONDS = 5.0  # leftovers of an exited command: SIGTERM, then SIGKILL after this
FAIL_RUNS_SECONDS = 30.0  # bound on marking a killed stage's MLflow runs FAILED (a further signal: at once)
POLL_SECONDS = 0.2
_CHILD_CODE = "from weakflow.flows.cli import entry; entry()"


# --------------------------------------------------------------------------------------------------------
# the supervisor (stdlib only)


def is_supervised_child() -> bool:
    """True in the process a supervisor started for the command (the supervisor is its parent)."""
    return os.environ.get(SUPERVISOR_ENV) == str(os.getppid())


def can_supervise() -> bool:
    return os.name == "posix"


def supervise(argv: list[str], command: str = "weakflow") -> int:
    """Run ``weakflow <argv>`` as a supervised child (:func:`supervise_process`); ``command`` (the
    sub-command) names it in messages."""
    # -P: the working directory is not put on sys.path (as for the console script itself), so a file there
    # named like a library (json.py, mlflow.py) cannot shadow it
    return supervise_process([sys.executable, "-P", "-c", _CHILD_CODE, *argv], command)


def supervise_process(cmd: list[str], command: str) -> int:
    """Run ``cmd`` as a child in its own session, with this process's stdio, and return its exit status
    (``-N`` for a child ended by signal N, as :mod:`subprocess` says it) once nothing of it is left running;
    :func:`exit_like` exits with it."""
    import tempfile

    stage_dir = tempfile.mkdtemp(prefix="weakflow-stages-")
    # Only this process holds the write end: if it dies (SIGKILL, the OOM killer), the child's guard reads EOF
    # and kills the command's whole process group (:func:`start_guard`), so a killed supervisor leaves
    # nothing running either.
    guard_read, guard_write = os.pipe()
    env = {**os.environ, SUPERVISOR_ENV: str(os.getpid()), STAGES_ENV: stage_dir, GUARD_ENV: str(guard_read)}
    _become_subreaper()
    try:
        child = subprocess.Popen(cmd, env=env, start_new_session=True, pass_fds=(guard_read,))
    finally:
        os.close(guard_read)
    supervisor = _Supervisor(child, Path(stage_dir), command)
    try:
        return supervisor.run()
    finally:
        supervisor.clean_up()
        os.close(guard_write)
        import shutil

        shutil.rmtree(stage_dir, ignore_errors=True)


class _Supervisor:
    def __init__(self, child: subprocess.Popen, stage_dir: Path, command: str) -> None:
        self.child, self.stage_dir, self.command = child, stage_dir, command
        self.signals: list[int] = []
        self.stop_deadline: float | None = None  # set when a signal was forwarded

    def run(self) -> int:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT):
            if signal.getsignal(sig) is not signal.SIG_IGN:  # ignored (nohup, a background job): left so
                signal.signal(sig, self._on_signal)
        if signal.getsignal(signal.SIGTSTP) is not signal.SIG_IGN:  # Ctrl-Z: the command stops with us
            signal.signal(signal.SIGTSTP, self._on_stop)
            signal.signal(signal.SIGCONT, self._on_continue)
        next_reap = 0.0
        while True:
            try:
                return self.child.wait(timeout=POLL_SECONDS)
            except subprocess.TimeoutExpired:
                pass
            now = time.monotonic()
            if self.stop_deadline is not None and (now > self.stop_deadline or len(self.signals) > 1):
                return self._killed_after_signal()
            stuck = self._stuck_stages()
            main = [r for r in stuck if r.get("pid") == self.child.pid]
            if main:
                return self._killed_for_stage(main[0], stuck)
            for record in stuck:  # a stage in another process (a Prefect flow-run process of `deploy`)
                self._kill_stage_process(record)
            if now > next_reap:  # orphans re-parented to us while the command runs: no zombies pile up
                _reap_adopted(exclude=self.child.pid)
                next_reap = now + 2.0

    def _on_stop(self, signum: int, frame: Any) -> None:
        """Ctrl-Z: the command is in a session of its own, out of the terminal's reach (and the kernel drops
        SIGTSTP for such an orphaned group), so stop it with SIGSTOP, then stop ourselves as the shell expects."""
        _signal_group(self.child.pid, signal.SIGSTOP)
        os.kill(os.getpid(), signal.SIGSTOP)

    def _on_continue(self, signum: int, frame: Any) -> None:
        """``fg`` / ``bg``: the command goes on with us."""
        _signal_group(self.child.pid, signal.SIGCONT)

    def _on_signal(self, signum: int, frame: Any) -> None:
        self.signals.append(signum)
        if len(self.signals) == 1:
            self.stop_deadline = time.monotonic() + STOP_GRACE_SECONDS
            try:
                os.kill(self.child.pid, signum)
            except ProcessLookupError:
                pass

    def _killed_after_signal(self) -> int:
        sig = self.signals[0]
        why = "a second signal came" if len(self.signals) > 1 else f"it did not end within {STOP_GRACE_SECONDS:g} s"
        open_stages = self._records()
        _stop_group(self.child.pid, 0.0)
        self.child.wait()
        _say(f"weakflow {self.command}: stopped by {signal.Signals(sig).name}; {why}, so it was killed"
             + (f" (in stage {open_stages[0]['stage']})" if open_stages else ""))
        self._fail_runs(open_stages, f"stopped by {signal.Signals(sig).name} and killed")
        return -sig

    def _killed_for_stage(self, record: dict, stuck: list[dict]) -> int:
        _stop_group(self.child.pid, 2.0)
        self.child.wait()
        message = _stage_message(record)
        _say(f"weakflow {self.command}: {message}")
        self._fail_runs(stuck, message)
        return 1

    def _kill_stage_process(self, record: dict) -> None:
        pid = int(record["pid"])
        _say(f"weakflow {self.command}: {_stage_message(record, process=pid)}")
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self._forget(record)
        self._fail_runs([record], _stage_message(record, process=pid))

    def _records(self) -> list[dict]:
        records = []
        for path in self.stage_dir.glob("*.json"):
            try:
                record = json.loads(path.read_text())
            except (OSError, ValueError):  # being replaced right now: read it on the next tick
                continue
            record["path"] = str(path)
            if not _alive(int(record.get("pid", 0))):  # its process is gone (killed): nothing to enforce
                path.unlink(missing_ok=True)
                continue
            records.append(record)
        return records

    def _stuck_stages(self) -> list[dict]:
        now = time.monotonic()  # CLOCK_MONOTONIC: one clock for every process of the machine
        return [r for r in self._records() if now > float(r["deadline"]) + STOP_GRACE_SECONDS]

    def _forget(self, record: dict) -> None:
        Path(record["path"]).unlink(missing_ok=True)

    def _fail_runs(self, records: list[dict], message: str) -> None:
        """Mark the killed stages' MLflow runs (and their pipeline runs) FAILED, from a short-lived
        process of our own (this one imports nothing heavy), bounded in time."""
        runs = [{"run_id": r["run_id"], "tracking_uri": r["tracking_uri"]} for r in records if r.get("run_id")]
        if not runs:
            return
        helper = subprocess.Popen(
            [sys.executable, "-P", "-c", "from weakflow.flows.supervisor import fail_runs_main; fail_runs_main()",
             json.dumps({"runs": runs, "message": message})],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            env={**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"})
        signals, deadline = len(self.signals), time.monotonic() + FAIL_RUNS_SECONDS
        while helper.poll() is None:
            if time.monotonic() > deadline or len(self.signals) > signals:  # bounded; a signal ends it now
                helper.kill()
                helper.wait()
                return
            time.sleep(0.05)

    def clean_up(self) -> None:
        """Whatever is left of the command: its process group, and processes re-parented to us."""
        if self.child.poll() is None:  # we are leaving early (an exception here): never leave it running
            _stop_group(self.child.pid, 0.0)
            self.child.wait()
        _stop_group(self.child.pid, LEFTOVER_GRACE_SECONDS)
        deadline = time.monotonic() + LEFTOVER_GRACE_SECONDS
        give_up = deadline + LEFTOVER_GRACE_SECONDS  # one that SIGKILL cannot end (uninterruptible I/O) is left
        while time.monotonic() < give_up:  # descendants that left the group (their own session), adopted once their parent ended
            adopted = _adopted_children()
            if not adopted:
                break
            hard = time.monotonic() > deadline
            for pid in adopted:
                _signal_tree(pid, signal.SIGKILL if hard else signal.SIGTERM)
            time.sleep(0.1)
            _reap_adopted()


def exit_like(code: int) -> None:
    """Exit as the command did: with its status, or killed by the same signal (a shell then shows 128+N and
    :mod:`subprocess` -N, as if there were no supervisor)."""
    if code < 0:
        flush_stdio()
        if -code not in (signal.SIGKILL, signal.SIGSTOP):  # those two have no handler to reset
            signal.signal(-code, signal.SIG_DFL)
        os.kill(os.getpid(), -code)
        time.sleep(1.0)  # the signal arrives; if it is blocked, fall back to the shell's convention
        os._exit(128 - code)
    sys.exit(code)


def _stage_message(record: dict, process: int | None = None) -> str:
    where = "" if process is None else f" (process {process} was killed)"
    return (f"stage {record['stage']} ran past its time limit of {float(record['seconds']):g} s (setting "
            f"limits.stage_seconds) and did not stop within {STOP_GRACE_SECONDS:g} s more (stuck inside C code), "
            f"so the command was killed{where}; {record.get('note') or 'the run failed'}")


def _say(line: str) -> None:
    try:
        sys.stdout.flush()
        print(line, file=sys.stderr, flush=True)
    except (OSError, ValueError):  # no stderr left to say it on: the exit status still says it
        pass


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie is dead for our purposes
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def _stop_group(pgid: int, grace: float) -> None:
    """SIGTERM the process group, wait up to ``grace`` s for it to empty, then SIGKILL what is left."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 2.0)):
        if grace <= 0 and sig == signal.SIGTERM:
            continue
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            _reap_adopted()
            if not _group_alive(pgid):
                return
            time.sleep(0.05)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    # zombies answer kill(0) too: the group is alive while one member is not a zombie
    if any(group == pgid and state != "Z" for _, state, _, group in _processes()):
        return True
    return not Path("/proc/self").exists()  # no /proc to look in: trust kill(0)


def _processes() -> Iterator[tuple[int, str, int, int]]:
    """(pid, state, parent pid, process group) of every process in /proc; those that vanish are skipped."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            yield int(stat.parent.name), fields[0], int(fields[1]), int(fields[2])
        except (OSError, IndexError, ValueError):
            continue


def _become_subreaper() -> None:
    """Linux: orphaned descendants are re-parented to this process instead of init, so the clean-up
    finds those that left the command's process group too."""
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
    except (OSError, AttributeError):
        pass


def _adopted_children() -> list[int]:
    me = os.getpid()
    return [pid for pid, state, parent, _ in _processes() if parent == me and state != "Z"]


def _reap_adopted(exclude: int | None = None) -> None:
    """Collect exited children (orphans re-parented to us), never the command's own process (Popen
    waits for that one)."""
    if exclude is None:
        while True:
            try:
                pid, _ = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
    me = os.getpid()
    for pid, state, parent, _ in list(_processes()):
        if parent == me and state == "Z" and pid != exclude:
            try:
                os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                pass


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _signal_tree(pid: int, sig: int) -> None:
    """``sig`` to a process and, when it leads one, its process group."""
    try:
        if os.getpgid(pid) == pid:
            os.killpg(pid, sig)
        else:
            os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


# --------------------------------------------------------------------------------------------------------
# the supervised command's side (flows/runtime.py run_child)


def start_guard() -> None:
    """In the supervised command: a tiny shell in the command's process group that waits on the supervisor's
    pipe and, when it reads EOF (the supervisor died without cleaning up: SIGKILL, the OOM killer), kills
    the whole group, this process and a Prefect API server included. A normal end never triggers it: the
    supervisor stops the group (the guard with it) before it closes the pipe."""
    fd = os.environ.pop(GUARD_ENV, None)
    if fd is None:
        return
    try:
        subprocess.Popen(["/bin/sh", "-c", "read _; kill -9 0"], stdin=int(fd), stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL)
    except OSError:  # no /bin/sh: the supervisor still cleans up whenever it lives to
        pass
    finally:
        os.close(int(fd))


def flush_stdio() -> None:
    """Flush stdout and stderr before an exit that skips the interpreter's own flush; a closed pipe is no error."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass


# --------------------------------------------------------------------------------------------------------
# the supervisor's helper: a killed stage's MLflow runs


def fail_runs_main() -> None:
    """The supervisor's helper: ``argv[1]`` is ``{"runs": [{run_id, tracking_uri}], "message": ...}``."""
    import mlflow

    payload = json.loads(sys.argv[1])
    for run in payload["runs"]:
        client = mlflow.MlflowClient(run["tracking_uri"])
        try:
            parent = client.get_run(run["run_id"]).data.tags.get("mlflow.parentRunId")
        except Exception:  # a store that cannot be read: nothing to mark
            continue
        for run_id in filter(None, (run["run_id"], parent)):
            try:
                client.set_tag(run_id, "weakflow.failure", payload["message"][:5000])
                client.set_terminated(run_id, status="FAILED")
            except Exception:
                pass
