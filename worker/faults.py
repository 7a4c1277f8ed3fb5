"""One record is one fault domain.

Whatever one record's work raises — while it is decoded, split, tokenized, classified or turned
into messages — belongs to that record: it becomes the record's dead letter (reason
``internal_error``, the exception's type and first line) and its partition goes on. This holds by
construction, not by a list of the exceptions someone thought of: the boundary catches
``BaseException`` (a ``RecursionError``, a ``MemoryError``, a Rust panic from ``tokenizers``,
``pyo3_runtime.PanicException``, which is not an ``Exception``) and lets through only what asks
the *process* to end (a signal's ``KeyboardInterrupt``, ``SystemExit``).

Faults that are not about one record (the broker, the configuration, a bundle that cannot load)
are raised outside these boundaries and take the process path (worker/loop.py).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

# What the boundary never keeps: a request that the process itself stops.
PROCESS_EXITS = (KeyboardInterrupt, SystemExit)


def one_line(exc: BaseException | object) -> str:
    """``Type: first line of the message``, at most 300 characters (for dead letters and logs)."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:300]


def kept(exc: BaseException) -> BaseException:
    """``exc`` when it is a record's fault; re-raises a process exit. Use as
    ``except BaseException as exc: fault = kept(exc)``."""
    if isinstance(exc, PROCESS_EXITS):
        raise exc
    return exc


def contained(work: Callable[[], T], on_fault: Callable[[BaseException], T]) -> T:
    """``work()``, or ``on_fault(exc)`` when it raises anything but a process exit."""
    try:
        return work()
    except BaseException as exc:
        return on_fault(kept(exc))
