"""What ``/healthz`` and ``/readyz`` answer, from the run loop's own observations.

Live: the loop has turned within ``stall_after_s`` (a loop stuck in a call never turns).
Ready: the loop runs and no problem holds. Problems are short codes with a detail line
(``starting``, ``broker_unreachable``, ``publish_blocked``, ``dlq_breaker``, ``stopping``); the body of a 503
lists them, and the metric ``sentistream_worker_problem{problem}`` shows them too.
"""

from __future__ import annotations

import time
from collections.abc import Callable

STARTING = "starting"
BROKER_UNREACHABLE = "broker_unreachable"
PUBLISH_BLOCKED = "publish_blocked"
STOPPING = "stopping"
DLQ_BREAKER = "dlq_breaker"
PROBLEMS = (STARTING, BROKER_UNREACHABLE, PUBLISH_BLOCKED, DLQ_BREAKER, STOPPING)


class Health:
    def __init__(self, stall_after_s: float, clock: Callable[[], float] = time.monotonic,
                 on_change: Callable[[str, bool, bool], None] | None = None) -> None:
        """``on_change(problem, holds, no_problem_left)`` is called when a problem starts or ends."""
        self.stall_after_s = stall_after_s
        self.clock = clock
        self.on_change = on_change or (lambda _problem, _holds, _none_left: None)
        self.last_turn = clock()
        self.problems: dict[str, str] = {}
        self.set(STARTING, "not yet a member of the consumer group")

    def turned(self) -> None:
        self.last_turn = self.clock()

    def set(self, problem: str, detail: str) -> None:
        new = problem not in self.problems
        self.problems[problem] = detail
        if new:
            self.on_change(problem, True, False)

    def clear(self, problem: str) -> None:
        if self.problems.pop(problem, None) is not None:
            self.on_change(problem, False, not self.problems)

    def live(self) -> tuple[bool, str]:
        idle = self.clock() - self.last_turn
        if idle > self.stall_after_s:
            return False, f"loop has not turned for {idle:.0f} s (limit {self.stall_after_s:.0f} s)"
        return True, "ok"

    def ready(self) -> tuple[bool, str]:
        ok, why = self.live()
        if not ok:
            return False, why
        if self.problems:
            return False, "; ".join(f"{k}: {v}" for k, v in sorted(self.problems.items()))
        return True, "ready"
