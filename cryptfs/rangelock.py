"""Exclusive locks on byte ranges, for threads.

Writes hold their sector-aligned range while they read-modify-write the edge sectors and write
the ciphertext, so two overlapping writes can never interleave a stale edge sector.  Taking a
free range costs one short critical section; only a conflicting holder makes a thread wait.
"""

import threading


class RangeLock:
    def __init__(self):
        self._cond = threading.Condition(threading.Lock())
        self._held: list[tuple[int, int]] = []

    def hold(self, start: int, end: int) -> "_Held":
        """``with lock.hold(start, end):`` — waits while an overlapping range is held."""
        return _Held(self, start, end)

    def __len__(self) -> int:
        return len(self._held)


class _Held:
    __slots__ = ("_lock", "_range")

    def __init__(self, lock: RangeLock, start: int, end: int):
        self._lock, self._range = lock, (start, end)

    def __enter__(self) -> None:
        start, end = self._range
        held, cond = self._lock._held, self._lock._cond
        with cond:
            while any(s < end and start < e for s, e in held):
                cond.wait()
            held.append(self._range)

    def __exit__(self, *exc) -> None:
        cond = self._lock._cond
        with cond:
            self._lock._held.remove(self._range)
            cond.notify_all()
