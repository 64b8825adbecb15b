"""Progress of a run, on stderr (so piped stdout stays clean).

In a terminal a training stage shows a rich progress bar. Outside one (output redirected to a file, a
scheduler, CI) a bar draws nothing, so there the stage prints plain lines instead, at a rate a log can
hold: one when a training starts (with its rows), one at most every :data:`EPOCH_LINE_SECONDS` while it
trains (stage, epoch, rows, loss, gold accuracy, elapsed), one when it ends; and every stage, training or
not, says it is still running after :data:`HEARTBEAT_SECONDS` without a line. No line per epoch of every
fold model: k fold models move together, so an epoch here is one epoch of all of them.
"""

from __future__ import annotations

import contextlib
import contextvars
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TextIO

if TYPE_CHECKING:
    from weakflow.tasks.core.training import EpochStats

EPOCH_LINE_SECONDS = 30.0  # at most one epoch line per stage this often (plus the start and end lines)
HEARTBEAT_SECONDS = 60.0  # a stage silent this long says it is still running

Clock = Callable[[], float]


def is_terminal(stream: TextIO) -> bool:
    """Whether ``stream`` is an interactive terminal (there a live bar replaces the plain lines)."""
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # closed or a stand-in without isatty
        return False


def elapsed_text(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


@dataclass
class _Stage:
    """What one stage printed last and when (shared by its heartbeat and its training lines)."""

    name: str
    stream: TextIO
    clock: Clock
    started: float
    last_line: float
    rows: int | None = None  # rows the current training trains on (note_training)
    where: str = "running"  # what the heartbeat says it is doing
    lock: threading.Lock = field(default_factory=threading.Lock)

    def say(self, text: str, who: str | None = None) -> None:
        """One plain line: wall time, stage (or ``who``), text, time since the stage started."""
        with self.lock:
            now = self.clock()
            self.last_line = now
            stamp = time.strftime("%H:%M:%S")
            try:
                self.stream.write(f"{stamp} | weakflow | {who or self.name}: {text}, "
                                  f"{elapsed_text(now - self.started)} elapsed\n")
                self.stream.flush()
            except (OSError, ValueError):  # a closed or broken pipe (`weakflow run 2>&1 | head`): progress is optional
                pass


_current: contextvars.ContextVar[_Stage | None] = contextvars.ContextVar("weakflow_progress_stage", default=None)


@contextlib.contextmanager
def stage_progress(name: str, stream: TextIO | None = None, clock: Clock = time.monotonic,
                   heartbeat: float = HEARTBEAT_SECONDS) -> Iterator[None]:
    """Around one stage: outside a terminal, a background thread prints "still running" whenever the
    stage printed nothing for ``heartbeat`` seconds (a stage busy in one long call, e.g. a report or a
    refit, still shows it is alive). In a terminal, or nested in another stage, it does nothing."""
    out = stream if stream is not None else sys.stderr
    if is_terminal(out) or _current.get() is not None:
        yield
        return
    now = clock()
    stage = _Stage(name, out, clock, now, now)
    token = _current.set(stage)
    done = threading.Event()

    def beat() -> None:
        while not done.wait(min(heartbeat, 5.0)):
            if clock() - stage.last_line >= heartbeat and not done.is_set():
                stage.say(f"still {stage.where}")

    thread = threading.Thread(target=beat, name=f"weakflow-progress-{name}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join(1.0)  # it wakes at once; a line being written finishes first
        _current.reset(token)


def note_training(text: str, rows: int | None = None) -> None:
    """A training starts inside the current stage (e.g. "3 fold models + refit"): one line outside a
    terminal, and the rows are shown on its epoch lines. Nothing in a terminal or outside a stage."""
    stage = _current.get()
    if stage is None:
        return
    if rows is not None:
        stage.rows = rows
    stage.where = text  # what "still ..." repeats until the next epoch
    stage.say(text + (f" on {rows:,} rows" if rows is not None else ""))


@contextlib.contextmanager
def epoch_bar(description: str, total: int, stream: TextIO | None = None, clock: Clock = time.monotonic,
              every: float = EPOCH_LINE_SECONDS) -> Iterator[Callable[[EpochStats], None]]:
    """A callback to call once per epoch (all fold models moved one epoch): a rich bar in a terminal,
    else plain lines (start, at most one per ``every`` seconds, end) on ``stream`` (default stderr)."""
    out = stream if stream is not None else sys.stderr
    if is_terminal(out):
        with _rich_bar(description, total, out) as update:
            yield update
        return
    owner = _current.get()
    own_stage = owner is None  # called outside a stage (a test, the Python API): its own line context
    with contextlib.ExitStack() as stack:
        if own_stage:
            stack.enter_context(stage_progress(description, out, clock))
        stage = _current.get()
        assert stage is not None
        began = clock()
        count = 0
        last: EpochStats | None = None
        previous_where = stage.where
        stage.where = "training"
        stage.say(f"training started, {total} epochs", description)

        def update(stats: EpochStats) -> None:
            nonlocal count, last
            count, last = count + 1, stats
            stage.where = f"training, epoch {count}/{total} done"
            if clock() - stage.last_line >= every:
                stage.say(f"epoch {count}/{total}{_rows(stage)}{_figures(stats)}", description)

        try:
            yield update
        finally:
            stage.where = previous_where
            figures = _figures(last) if last is not None else ""
            stage.say(f"training ended after {count}/{total} epochs in {elapsed_text(clock() - began)}{figures}",
                      description)


def _rows(stage: _Stage) -> str:
    return f", {stage.rows:,} rows" if stage.rows is not None else ""


def _figures(stats: EpochStats) -> str:
    text = f", loss {stats.train_loss:.3f}"
    if stats.dev_accuracy is not None:
        text += f", out-of-fold gold accuracy {stats.dev_accuracy:.3f}"
    return text


@contextlib.contextmanager
def _rich_bar(description: str, total: int, stream: TextIO) -> Iterator[Callable[[EpochStats], None]]:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    console = Console(file=stream)
    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("{task.fields[status]}"), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=False) as bar:
        task_id = bar.add_task(description, total=total, status="")

        def update(stats: EpochStats) -> None:
            status = f"loss {stats.train_loss:.3f}"
            if stats.dev_accuracy is not None:
                status += f"  dev acc {stats.dev_accuracy:.3f}"
            bar.update(task_id, advance=1, status=status)

        yield update
