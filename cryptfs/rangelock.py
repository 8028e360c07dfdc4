"""Exclusive locks on byte ranges, for trio tasks.

Writes hold their sector-aligned range while they read-modify-write the edge sectors and write
the ciphertext, so two overlapping writes can never interleave a stale edge sector.
"""

import trio


class RangeLock:
    def __init__(self):
        self._held: list[tuple[int, int, trio.Event]] = []

    def hold(self, start: int, end: int) -> "_Held":
        """``async with lock.hold(start, end):`` — waits while an overlapping range is held."""
        return _Held(self, start, end)

    def __len__(self) -> int:
        return len(self._held)


class _Held:
    __slots__ = ("_lock", "_start", "_end", "_entry")

    def __init__(self, lock: RangeLock, start: int, end: int):
        self._lock, self._start, self._end = lock, start, end

    async def __aenter__(self) -> None:
        held = self._lock._held
        while True:
            blocker = next((ev for s, e, ev in held if s < self._end and self._start < e), None)
            if blocker is None:
                break
            await blocker.wait()
        self._entry = (self._start, self._end, trio.Event())
        held.append(self._entry)

    async def __aexit__(self, *exc) -> None:
        self._lock._held.remove(self._entry)
        self._entry[2].set()
