"""A progress bar for work that takes seconds (key derivation), shown only on a terminal.

Key derivation is one opaque library call, so the bar shows elapsed time against the expected
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
