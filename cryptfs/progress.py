"""Progress bars, shown only on a terminal: elapsed time for key derivation, finished runs for
the long commands (verify, bench, stress).

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


def run_bar(total: int, label: str) -> tqdm:
    """A bar counting ``total`` runs; ``update()`` it as each one ends."""
    return tqdm(total=total, desc=label, unit="run", disable=not sys.stderr.isatty(), leave=False)
