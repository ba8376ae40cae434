"""Fit the learning-rate schedule to a `--max-minutes` budget once the step time is known.

A stage's schedule is planned for `--max-steps` (or its epochs). With a wall-time budget
that is too short, the stage used to stop part-way with the rate still high (run 4 of
the shipped default ended at 40 % of its peak): the weights never got the low-rate end
of the schedule. After the first steps, the loop measures seconds per step, and when the
planned steps do not fit, squeezes *the rest* of the schedule into the steps that do:

    rate(s) = planned(r + (s - r) * (N - r) / (F - r))    for s >= r

(r: the step of the refit, N: planned steps, F: steps that fit). The rate is continuous
at r, keeps the schedule's shape (linear stays linear, cosine ends at its minimum) and
reaches the planned final rate at F, where the stage stops. Nothing needs writing by
hand beyond this: transformers' schedulers are `LambdaLR`s over plain step counts, and
`SqueezedSchedule` wraps their lambdas.

`LambdaLR.state_dict()` saves each lambda's `__dict__`: `SqueezedSchedule` keeps only r,
N and F there (the wrapped lambda in a slot), so the refit travels in `scheduler.json`
and a resumed run follows the same rates as an uninterrupted one.

Example:
    >>> linear = lambda step: max(0.0, (10 - step) / 10)
    >>> fitted = SqueezedSchedule(linear, planned=10)
    >>> fitted(4), fitted.refit(at=2, fit=6), fitted(2), fitted(4), fitted(6)
    (0.6, None, 0.8, 0.4, 0.0)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["SqueezedSchedule", "refit_scheduler", "steps_that_fit"]


class SqueezedSchedule:
    """A schedule lambda whose remaining steps can be squeezed into fewer (see module)."""

    __slots__ = ("__dict__", "inner")

    def __init__(self, inner: Callable[[int], float], planned: int) -> None:
        self.inner = inner
        self.planned = planned
        self.refit_at: int | None = None
        self.fit: int | None = None

    def refit(self, at: int, fit: int) -> None:
        """From step `at` on, run the rest of the planned schedule in `fit - at` steps."""
        if not at < fit < self.planned:
            raise ValueError(f"a refit needs at < fit < planned, got {at}, {fit}, {self.planned}")
        self.refit_at, self.fit = at, fit

    def __call__(self, step: int) -> float:
        if self.refit_at is None or self.fit is None or step <= self.refit_at:
            return self.inner(step)
        r, n, f = self.refit_at, self.planned, self.fit
        return self.inner(r + (min(step, f) - r) * (n - r) / (f - r))


def steps_that_fit(step: int, planned: int, seconds_per_step: float, seconds_left: float) -> int:
    """Optimiser steps the stage can reach in `seconds_left` at this pace (at least one more
    than `step`, at most `planned`)."""
    more = int(seconds_left / max(seconds_per_step, 1e-9))
    return max(step + 1, min(planned, step + more))


def refit_scheduler(scheduler: Any, optimizer: Any, at: int, fit: int) -> None:
    """Squeeze the rest of `scheduler`'s schedule (lambdas wrapped by `SqueezedSchedule`)
    into steps `at`..`fit`, and give the optimiser the rate of the step about to run."""
    for fn in scheduler.lr_lambdas:
        fn.refit(at, fit)
    rates = [
        base * fn(scheduler.last_epoch)
        for base, fn in zip(scheduler.base_lrs, scheduler.lr_lambdas)
    ]
    for group, rate in zip(optimizer.param_groups, rates):
        group["lr"] = rate
    scheduler._last_lr = rates  # what get_last_lr() reports (torch keeps it there)
