"""Latency percentiles over a bounded window of recent samples."""

import threading
from collections import deque


class LatencyWindow:
    """The last ``size`` latencies (seconds); ``percentiles()`` in microseconds."""

    def __init__(self, size: int = 4096):
        self._samples: deque[float] = deque(maxlen=size)
        self._lock = threading.Lock()

    def add(self, seconds: float) -> None:
        with self._lock:
            self._samples.append(seconds)

    def percentiles(self) -> dict:
        with self._lock:
            ordered = sorted(self._samples)
        if not ordered:
            return {}

        def micros(q: float) -> float:
            return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1e6, 1)

        return {"p50_us": micros(0.50), "p90_us": micros(0.90), "p99_us": micros(0.99),
                "max_us": micros(1.0)}
