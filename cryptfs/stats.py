"""Device counters: bumped on the data path (also from crypto worker threads), read as a dict."""

import threading
from collections import Counter

from backends.latency import LatencyWindow


class Stats:
    def __init__(self):
        self._lock = threading.Lock()
        self._counts: Counter = Counter()
        self._peaks: dict[str, int] = {}
        self.bio_latency = LatencyWindow()     # queue admission to the end of a bio's crypto+I/O

    def add(self, name: str, n: int = 1) -> None:
        with self._lock:
            self._counts[name] += n

    def peak(self, name: str, value: int) -> None:
        """Keep the largest ``value`` seen under ``name`` (a high-water mark)."""
        with self._lock:
            if value > self._peaks.get(name, 0):
                self._peaks[name] = value

    def snapshot(self) -> dict:
        with self._lock:
            counters = {**self._counts, **self._peaks}
        latency = self.bio_latency.percentiles()
        return {**counters, **({"bio_latency": latency} if latency else {})}
