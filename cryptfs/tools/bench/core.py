"""The core alone (``cryptfs bench core``): the native core's AES-256-XTS against
``openssl speed -evp aes-256-xts`` on the same machine, side by side.

OpenSSL's figure is its cipher on one thread, one ``EVP_CipherUpdate`` per buffer and no new
tweak in between — the ceiling.  The core's is one ``crypt`` call per 1 MiB request of data
units of 512 or 4096 bytes, each unit with its own IV (a re-keyed tweak), on one thread and
split over several; what it loses to OpenSSL is the per-unit cost.  Then every cipher the
core runs (:data:`CIPHERS`), so users can choose.  Runs alternate, medians of ``reps``; writes
``bench-results/core-<date>.md``, ``.json`` and ``.png``.
"""

import datetime
import os
import statistics
import subprocess
import time

from cryptfs.backends import native
from cryptfs.crypto.spec import parse_spec
from cryptfs.tools.bench import results
from cryptfs.util.mdtable import markdown_table

UNIT_SIZES = (512, 4096)
REQUEST = 1 << 20
#: every cipher and chain the core runs, at its default key size, for users choosing one
CIPHERS = ("aes-xts-plain64", "aes-cbc-essiv:sha256", "aes-ecb", "aes-lrw-benbi",
           "serpent-xts-plain64", "twofish-xts-plain64", "camellia-xts-plain64", "twofish-ecb",
           "camellia-lrw-plain64", "cast5-cbc-plain64", "blowfish-cbc-plain64",
           "xchacha12,aes-adiantum-plain64", "xchacha20,aes-adiantum-plain64")


def openssl_speed(unit: int, seconds: float) -> float:
    """Bytes per second of ``openssl speed -evp aes-256-xts`` on ``unit``-byte buffers."""
    done = subprocess.run(["openssl", "speed", "-mr", "-elapsed", "-seconds",
                           str(max(1, round(seconds))), "-bytes", str(unit), "-evp",
                           "aes-256-xts"], capture_output=True, text=True, check=True)
    line = next(row for row in done.stdout.splitlines() if row.startswith("+F:"))
    return float(line.rsplit(":", 1)[1])


def core_speed(core, unit: int, seconds: float, threads: int) -> float:
    """Bytes per second of ``core.crypt`` on 1 MiB requests of ``unit``-byte data units."""
    buf = bytearray(os.urandom(REQUEST))
    iv = bytes(16)
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        for _ in range(16):
            core.crypt(True, buf, buf, iv, unit, unit // 512, threads)
        done += 16 * REQUEST
    return done / (time.perf_counter() - start)


def study(seconds: float = 2, reps: int = 3, threads: int | None = None,
          out_dir: str = "bench-results", progress=None) -> str:
    """Run the comparison; the Markdown report (also saved with its data and plot)."""
    if native.UNAVAILABLE:
        raise RuntimeError(native.UNAVAILABLE)
    threads = threads or os.cpu_count() or 1
    core = native.keyed_core(parse_spec("aes-xts-plain64"), os.urandom(64))
    paths = ["openssl speed", "core, 1 thread", f"core, {threads} threads"]
    samples: dict[tuple[int, str], list[float]] = {}
    for _ in range(reps):
        for unit in UNIT_SIZES:
            for path in paths:
                value = openssl_speed(unit, seconds) if path == "openssl speed" else \
                    core_speed(core, unit, seconds, 1 if path.endswith(" thread") else threads)
                samples.setdefault((unit, path), []).append(value)
                if progress:
                    progress()
    core.close()
    medians = {k: statistics.median(v) for k, v in samples.items()}
    rows = [[str(unit), path, f"{medians[(unit, path)] / 1e9:.2f}",
             f"{min(samples[(unit, path)]) / 1e9:.2f}–{max(samples[(unit, path)]) / 1e9:.2f}",
             f"{medians[(unit, path)] / medians[(unit, 'openssl speed')]:.2f}"]
            for unit in UNIT_SIZES for path in paths]
    report = "\n".join([
        f"`cryptfs bench core` — {datetime.datetime.now().isoformat(timespec='seconds')}, "
        f"{os.cpu_count()} CPUs, {native.openssl_version()}; AES-256-XTS, {seconds:g} s per "
        f"run, {reps} runs alternating, medians (min–max) in GB/s.", "",
        markdown_table(["data unit", "path", "GB/s", "min–max", "× openssl speed"], rows,
                       "rlrrr")])
    cipher_rows, per_cipher = ciphers(seconds / 2, reps, threads, progress)
    report += "\n\nEvery cipher through the core (1 MiB requests, medians in GB/s):\n\n" + \
        markdown_table(["cipher", "key bits", *(f"{u} B, {t} thr" for u in UNIT_SIZES
                                                for t in (1, threads))], cipher_rows,
                       "lr" + "r" * 2 * len(UNIT_SIZES))
    stem = results.fresh_stem(out_dir, f"core-{datetime.date.today().isoformat()}")
    results.save(stem, report, {"medians": {f"{u} | {p}": v for (u, p), v in medians.items()},
                                "samples": {f"{u} | {p}": v for (u, p), v in samples.items()},
                                "ciphers": per_cipher},
                 lambda path: _plot(medians, paths, path))
    return report


def ciphers(seconds: float, reps: int, threads: int, progress=None) -> tuple[list, dict]:
    """Each of CIPHERS through the core at 512- and 4096-byte units on 1 and ``threads``
    threads: table rows, and the medians by cipher."""
    rows, found = [], {}
    for text in CIPHERS:
        spec = parse_spec(text)
        core = native.keyed_core(spec, os.urandom(spec.default_key_bits // 8))
        cells = []
        for unit in UNIT_SIZES:
            for n in (1, threads):
                runs = [core_speed(core, unit, seconds, n) for _ in range(reps)]
                found[f"{text} | {unit} | {n}"] = statistics.median(runs)
                cells.append(f"{statistics.median(runs) / 1e9:.2f}")
                if progress:
                    progress()
        core.close()
        rows.append([text, str(spec.default_key_bits), *cells])
    return rows, found


def _plot(medians: dict, paths: list[str], path: str) -> None:
    plt = results.pyplot()

    fig, ax = plt.subplots(figsize=(6.5, 4))
    width = 0.8 / len(paths)
    for i, label in enumerate(paths):
        ax.bar([j + i * width for j in range(len(UNIT_SIZES))],
               [medians[(unit, label)] / 1e9 for unit in UNIT_SIZES], width, label=label)
    ax.set_xticks([j + width * (len(paths) - 1) / 2 for j in range(len(UNIT_SIZES))],
                  [f"{u}-byte data units" for u in UNIT_SIZES])
    ax.set_ylabel("AES-256-XTS, GB/s (median)")
    ax.set_title("The native core against openssl speed")
    ax.legend(fontsize=8)
    ax.grid(True, axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
