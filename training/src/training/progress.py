"""Progress display for training jobs: rich bars on stderr, stdout stays for results."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)


def create_progress(show: bool = True) -> Progress:
    """Build the progress display every job uses (disabled when ``show`` is false)."""
    return Progress(
        SpinnerColumn(),
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        disable=not show,
    )


class JobSteps:
    """The named steps of one job, shown as a bar that advances step by step."""

    def __init__(self, progress: Progress, job: str, steps: Sequence[str]) -> None:
        self.progress = progress
        """The display, for jobs that add a finer bar of their own (epochs, batches)."""
        self._job = job
        self._steps = list(steps)
        self._task: TaskID = progress.add_task(
            f"{job}: {self._steps[0]}", total=len(self._steps)
        )

    def start(self, step: str) -> None:
        """Mark every earlier step as done and show ``step`` as running."""
        index = self._steps.index(step)
        self.progress.update(
            self._task, completed=index, description=f"{self._job}: {step}"
        )

    def finish(self) -> None:
        """Mark the whole job as done."""
        self.progress.update(
            self._task, completed=len(self._steps), description=f"{self._job}: done"
        )


@contextmanager
def job_steps(job: str, steps: Sequence[str], show: bool = True) -> Iterator[JobSteps]:
    """Show ``steps`` of ``job`` while the block runs.

    Args:
        job: Name shown before each step.
        steps: Every step name, in order; ``JobSteps.start`` takes one of them.
        show: False to run silently (tests, scripts).
    """
    with create_progress(show) as progress:
        yield JobSteps(progress, job, steps)
