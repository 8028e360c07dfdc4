"""Latency percentiles over a bounded window of recent samples."""

from collections import deque


class LatencyWindow:
    """The last ``size`` latencies (seconds); ``percentiles()`` in microseconds.

    Not locked: each window is fed and read by one thread (the trio thread, for the request
    queue and the engine)."""

    def __init__(self, size: int = 4096):
        self._samples: deque[float] = deque(maxlen=size)
        self.add = self._samples.append

    def percentiles(self) -> dict:
        ordered = sorted(self._samples)
        if not ordered:
            return {}

        def micros(q: float) -> float:
            return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1e6, 1)

        return {"p50_us": micros(0.50), "p90_us": micros(0.90), "p99_us": micros(0.99),
                "max_us": micros(1.0)}
