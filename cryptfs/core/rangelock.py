"""Exclusive locks on byte ranges, for threads and for trio tasks.

Writes hold their sector-aligned range while they read-modify-write the edge sectors and write
the ciphertext, so two overlapping writes can never interleave a stale edge sector.  Threads
take a range with ``with lock.hold(a, b)``; trio tasks (writes on an asynchronous backend, which
hold the range across awaits) with ``async with lock.hold_async(a, b)``.  Taking a free range
costs one short critical section; only a conflicting holder makes anyone wait.
"""

import threading

import trio


class RangeLock:
    def __init__(self):
        self._cond = threading.Condition(threading.Lock())
        #: (start, end, event): event is set when a trio task's hold ends (None for a thread's)
        self._held: list[tuple[int, int, trio.Event | None]] = []
        self._waiting = 0       # threads in cond.wait(): only then is a release announced

    def hold(self, start: int, end: int) -> "_Held":
        """``with lock.hold(start, end):`` — a thread waits while an overlapping range is
        held."""
        return _Held(self, start, end)

    def hold_async(self, start: int, end: int) -> "_HeldAsync":
        """``async with lock.hold_async(start, end):`` — a trio task waits likewise."""
        return _HeldAsync(self, start, end)

    def _blocker(self, start: int, end: int):
        return next(((s, e, ev) for s, e, ev in self._held if s < end and start < e), None)

    def _release(self, entry) -> None:
        with self._cond:
            self._held.remove(entry)
            if self._waiting:
                self._cond.notify_all()
        if entry[2] is not None:
            entry[2].set()


class _Held:
    __slots__ = ("_lock", "_entry")

    def __init__(self, lock: RangeLock, start: int, end: int):
        self._lock, self._entry = lock, (start, end, None)

    def __enter__(self) -> None:
        start, end, _ = self._entry
        lock = self._lock
        with lock._cond:
            while lock._blocker(start, end):
                lock._waiting += 1
                lock._cond.wait()
                lock._waiting -= 1
            lock._held.append(self._entry)

    def __exit__(self, *exc) -> None:
        self._lock._release(self._entry)


class _HeldAsync:
    __slots__ = ("_lock", "_entry")

    def __init__(self, lock: RangeLock, start: int, end: int):
        self._lock, self._entry = lock, (start, end, trio.Event())

    async def __aenter__(self) -> None:
        start, end, _ = self._entry
        lock = self._lock
        while True:
            with lock._cond:
                blocker = lock._blocker(start, end)
                if blocker is None:
                    lock._held.append(self._entry)
                    return
            if blocker[2] is not None:
                await blocker[2].wait()
            else:                       # a thread holds it: look again shortly
                await trio.sleep(0.001)

    async def __aexit__(self, *exc) -> None:
        self._lock._release(self._entry)
