"""Waiting in tests: poll a condition until it holds, or fail saying what did not happen."""

from __future__ import annotations

import time
from collections.abc import Callable


def wait_for(done: Callable[[], object], timeout: float = 10.0, what: str = "the condition",
             every: float = 0.1) -> None:
    """Return once ``done()`` is true; AssertionError naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout:g} s")
        time.sleep(every)
