"""Progress of a suite run: a protocol, a silent reporter and a rich progress bar."""

from __future__ import annotations

import time
from typing import Protocol


class Reporter(Protocol):
    def begin(self, total: int) -> None: ...

    def status(self, text: str) -> None: ...

    def advance(self) -> None: ...


class NullReporter:
    def begin(self, total: int) -> None:
        pass

    def status(self, text: str) -> None:
        pass

    def advance(self) -> None:
        pass


class RichReporter:
    """A rich progress bar on stderr (steps done / total, current step and stage); plain lines when not a terminal."""

    def __init__(self) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

        columns = (
            SpinnerColumn(),
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
        )
        self.console = Console(stderr=True)
        self.progress = Progress(*columns, console=self.console, disable=not self.console.is_terminal)
        self.task = self.progress.add_task("starting", total=None)
        self.started, self.done, self.total, self.last = time.perf_counter(), 0, 0, ""

    def __enter__(self) -> RichReporter:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def begin(self, total: int) -> None:
        self.total = total
        self.progress.update(self.task, total=total)

    def status(self, text: str) -> None:
        self.progress.update(self.task, description=text[:70])
        shape = "".join(c for c in text if not c.isdigit())  # a new stage, not just a new step count
        if not self.console.is_terminal and shape != self.last:
            elapsed = time.perf_counter() - self.started
            self.console.print(f"[{elapsed:7.1f} s] {self.done}/{self.total} {text}", highlight=False)
        self.last = shape

    def advance(self) -> None:
        self.done += 1
        self.progress.advance(self.task)
