"""Progress: on a terminal, bars — elapsed time for key derivation, finished runs for the long
commands (verify, bench, stress); elsewhere (a log, CI) those commands print a line per run.

Key derivation is one opaque library call, so its bar shows elapsed time against the expected
duration (the ``--iter-time`` it was tuned for) rather than pretending to measure progress.
"""

import contextlib
import sys
import threading
import time

from tqdm import tqdm


@contextlib.contextmanager
def progress(label: str, expected_seconds: float | None = None):
    if not sys.stderr.isatty():
        yield
        return
    done = threading.Event()
    total = expected_seconds or None

    def tick():
        with tqdm(total=total, desc=label, unit="s", leave=False, file=sys.stderr,
                  bar_format="{desc}: {bar} {elapsed}" if total else "{desc}: {elapsed}") as bar:
            start = time.monotonic()
            while not done.wait(0.1):
                elapsed = time.monotonic() - start
                bar.n = min(elapsed, total) if total else elapsed
                bar.refresh()

    thread = threading.Thread(target=tick, daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()


def run_bar(total: int, label: str):
    """Counts ``total`` runs; ``update()`` it as each one ends.  A context manager."""
    if sys.stderr.isatty():
        return tqdm(total=total, desc=label, unit="run", leave=False)
    return _Lines(total, label)


class _Lines:
    """``label: run N of TOTAL (elapsed)``, one line per run, for output that is no terminal."""

    def __init__(self, total: int, label: str):
        self.total, self.label, self.n = total, label, 0
        self._start = time.monotonic()

    def update(self, n: int = 1) -> None:
        self.n += n
        print(f"{self.label}: run {self.n} of {self.total} "
              f"({time.monotonic() - self._start:.0f} s)", file=sys.stderr, flush=True)

    def __enter__(self) -> "_Lines":
        return self

    def __exit__(self, *exc) -> None:
        pass
