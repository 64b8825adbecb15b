"""A rich progress bar per training stage (stderr, so piped stdout stays clean)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from weakflow.tasks.core.training import EpochStats


@contextlib.contextmanager
def epoch_bar(description: str, total: int) -> Iterator[Callable[[EpochStats], None]]:
    console = Console(stderr=True)
    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("{task.fields[status]}"), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=False, disable=not console.is_terminal) as bar:
        task_id = bar.add_task(description, total=total, status="")

        def update(stats: EpochStats) -> None:
            status = f"loss {stats.train_loss:.3f}"
            if stats.dev_accuracy is not None:
                status += f"  dev acc {stats.dev_accuracy:.3f}"
            bar.update(task_id, advance=1, status=status)

        yield update
