# mypy: disable-error-code="no-untyped-call,untyped-decorator"
"""Load shapes: how many users run over time (cf. Locust's `custom_shape/step_load.py`).

`constant` needs no shape class: Locust itself ramps to `--users` at `--spawn-rate`
and holds for `--run-time`. The shapes here read the same three options
(`use_common_options`), so every shape is driven by the same command line:

- `step`: `STEPS` equal stairs up to `--users`, each held for an equal share of the run;
- `spike`: a baseline of a fifth of the users, all users at once for the middle
  fifth of the run, then the baseline again.
"""

from __future__ import annotations

from locust import LoadTestShape

import math

DEFAULT_RUN_SECONDS = 60


class CommonOptionsShape(LoadTestShape):
    """A shape scaled by `--users`, `--spawn-rate` and `--run-time`."""

    abstract = True
    use_common_options = True

    def options(self) -> tuple[int, float, int]:
        """Users, spawn rate and run time in seconds from Locust's options."""
        assert self.runner is not None
        parsed = self.runner.environment.parsed_options
        users = int(getattr(parsed, "num_users", None) or 1)
        spawn_rate = float(getattr(parsed, "spawn_rate", None) or users)
        run_time = int(getattr(parsed, "run_time", None) or DEFAULT_RUN_SECONDS)
        return users, spawn_rate, run_time


class StepShape(CommonOptionsShape):
    """Equal steps up to the full user count."""

    STEPS = 4

    def tick(self) -> tuple[int, float] | None:
        users, spawn_rate, run_time = self.options()
        elapsed = self.get_run_time()
        if elapsed >= run_time:
            return None
        step = min(self.STEPS, int(elapsed // (run_time / self.STEPS)) + 1)
        return math.ceil(users * step / self.STEPS), spawn_rate


class SpikeShape(CommonOptionsShape):
    """A baseline, a sudden burst to the full user count, and back."""

    BASELINE_FRACTION = 0.2
    SPIKE_START = 0.4
    SPIKE_END = 0.6

    def tick(self) -> tuple[int, float] | None:
        users, spawn_rate, run_time = self.options()
        elapsed = self.get_run_time()
        if elapsed >= run_time:
            return None
        baseline = max(1, math.floor(users * self.BASELINE_FRACTION))
        in_spike = self.SPIKE_START * run_time <= elapsed < self.SPIKE_END * run_time
        if in_spike:
            # The spike arrives at once: all missing users start within a second.
            return users, max(spawn_rate, float(users))
        return baseline, max(spawn_rate, float(users))


SHAPE_CLASSES: dict[str, type[LoadTestShape] | None] = {
    "constant": None,
    "step": StepShape,
    "spike": SpikeShape,
}
