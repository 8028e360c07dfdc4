"""Device counters, read as one dict.

The request queue's own counters — reads, writes and their bytes, and the bio latency window —
are bumped only on the trio thread, once per request: plain attributes, no lock.  Everything
else (read-modify-writes, retries, timeouts...) may be bumped from crypto worker threads too,
through :meth:`Stats.add` and :meth:`Stats.peak`, under a lock.
"""

import threading
from collections import Counter

from cryptfs.util.latency import LatencyWindow

#: the trio thread's own counters, in the order ``snapshot`` lists them
QUEUE_COUNTERS = ("reads", "bytes_read", "writes", "bytes_written")


class Stats:
    def __init__(self):
        self._lock = threading.Lock()
        self._counts: Counter = Counter()
        self._peaks: dict[str, int] = {}
        self.reads = self.bytes_read = self.writes = self.bytes_written = 0
        self.bio_latency = LatencyWindow()     # a request's admission to its completion

    def count_read(self, nbytes: int, seconds: float) -> None:
        """A read request served (on the trio thread)."""
        self.reads += 1
        self.bytes_read += nbytes
        self.bio_latency.add(seconds)

    def count_write(self, nbytes: int, seconds: float) -> None:
        """A write request served (on the trio thread)."""
        self.writes += 1
        self.bytes_written += nbytes
        self.bio_latency.add(seconds)

    def add(self, name: str, n: int = 1) -> None:
        with self._lock:
            self._counts[name] += n

    def peak(self, name: str, value: int) -> None:
        """Keep the largest ``value`` seen under ``name`` (a high-water mark)."""
        with self._lock:
            if value > self._peaks.get(name, 0):
                self._peaks[name] = value

    def snapshot(self) -> dict:
        """Every counter that moved, and the latency percentiles (on the trio thread)."""
        own = {name: getattr(self, name) for name in QUEUE_COUNTERS if getattr(self, name)}
        with self._lock:
            counters = {**own, **self._counts, **self._peaks}
        latency = self.bio_latency.percentiles()
        return {**counters, **({"bio_latency": latency} if latency else {})}
