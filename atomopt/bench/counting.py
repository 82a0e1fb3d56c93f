"""Counting an ASE calculator's evaluations: the force-call columns of the benchmarks."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any


class BudgetExceeded(RuntimeError):
    """The force-call budget of a run is spent."""


class CallCounter:
    """Counts the evaluations of an ASE calculator (each call of its ``calculate``) and the seconds spent in them.

    The counter wraps ``calc.calculate`` in place, so ASE's caching still decides when an evaluation happens. With a
    ``budget``, the evaluation past it raises :class:`BudgetExceeded` instead of running; set ``budget`` to
    ``math.inf`` before a final check that is not the method's own. ``observer(calc)``, if given, is called after
    each evaluation (``calc.results`` and ``calc.atoms`` hold it).
    """

    def __init__(self, calc: Any, budget: float = math.inf, observer: Callable[[Any], None] | None = None):
        self.calls, self.seconds, self.budget = 0, 0.0, budget
        inner = calc.calculate

        def counted(*args, **kwargs):
            if self.calls >= self.budget:
                raise BudgetExceeded(f"more than {self.budget} force calls")
            self.calls += 1
            start = time.perf_counter()
            try:
                inner(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - start
            if observer is not None:  # the evaluation's results, outside the timed part
                observer(calc)

        calc.calculate = counted
