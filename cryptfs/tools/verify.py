"""``cryptfs verify``: the same seeded workload through every backend × mode × sector size ×
IV mode; the ciphertext images must be identical bit for bit.

Each run builds an in-process device (the whole data path below FUSE: queue, device, convert,
backend) over a fresh zeroed image in plain mode with the same key, replays the same operations
— writes and reads of mixed sizes at unaligned offsets — checks every read against a model of
the plaintext, and hashes the image.  All runs of one cipher and sector layout must agree.
"""

import hashlib
import os
import random
import tempfile
from dataclasses import dataclass

import trio

from cryptfs.core.config import Config
from cryptfs.core.volume import KeySource
from cryptfs.crypto.spec import parse_spec
from cryptfs.fuse.daemon import Daemon
from cryptfs.stack import assemble
from cryptfs.util.mdtable import markdown_table

CIPHERS = ("aes-xts-plain64", "aes-xts-plain", "aes-xts-plain64be", "aes-cbc-plain64",
           "aes-cbc-plain", "aes-cbc-essiv:sha256", "aes-cbc-benbi", "aes-cbc-null")
LAYOUTS = ((512, False), (4096, False), (4096, True))      # (sector size, iv_large_sectors)
MODES = ("per_sector", "multi_du")


def paths(backend_names: list[str]) -> list[tuple[str, str, str]]:
    """(label, backend, plane) for every path of the named backends: the engine twice, its
    Python model (the trio plane's) and its C model (``engine-c``, the native plane's)."""
    out = []
    for name in backend_names:
        out += [("engine", name, "trio"), ("engine-c", name, "native")] if name == "engine" \
            else [(name, name, "auto")]
    return out
SIZES = (1, 100, 511, 512, 1536, 4095, 4096, 4097, 65536, 131072, 131073, 262144)


@dataclass
class Run:
    cipher: str
    sector_size: int
    large: bool
    backend: str            # the path's label
    mode: str
    name: str = ""          # the backend behind the label
    plane: str = "auto"     # which plane's implementation of it
    path: str = ""          # what the converter chose, and why
    digest: str = ""
    reads_ok: bool = True


def workload(size: int, seed: int) -> list[tuple[str, int, int]]:
    """(op, offset, length) steps: writes covering about the device twice, reads between."""
    rng = random.Random(seed)
    steps, written = [], 0
    while written < 2 * size:
        length = rng.choice(SIZES)
        offset = rng.randrange(0, size - min(length, size) + 1)
        op = "write" if rng.random() < 0.7 else "read"
        steps.append((op, offset, length))
        written += length if op == "write" else 0
    return steps


async def _replay(daemon: Daemon, steps, seed: int) -> bool:
    queue, rng = daemon.queue, random.Random(seed + 1)
    ok = True
    async with trio.open_nursery() as nursery:
        await daemon.start(nursery)            # an asynchronous backend's own task
        model = bytearray(await queue.read(0, daemon.device.size))
        for op, offset, length in steps:
            if op == "write":
                data = rng.randbytes(length)
                n = await queue.write(offset, data)
                model[offset:offset + n] = data[:n]
            else:
                ok &= bytes(await queue.read(offset, length)) == \
                    bytes(model[offset:offset + length])
        await queue.flush()
        nursery.cancel_scope.cancel()
    return ok


def run_one(run: Run, size: int, seed: int, workdir: str) -> Run:
    spec = parse_spec(run.cipher)
    key = random.Random(seed).randbytes(spec.default_key_bits // 8)
    image_path = os.path.join(workdir, "image")
    key_path = os.path.join(workdir, "key")
    with open(image_path, "wb") as f:
        f.truncate(size)
    with open(key_path, "wb") as f:
        f.write(key)
    config = Config()
    for section, name, value in (("device", "type", "plain"), ("crypto", "cipher", run.cipher),
                                 ("crypto", "key_file", key_path),
                                 ("crypto", "sector_size", run.sector_size),
                                 ("crypto", "iv_large_sectors", run.large),
                                 ("pipeline", "mode", run.mode),
                                 ("pipeline", "plane", run.plane)):
        config.set(section, name, value)
    name = run.name or run.backend
    config.set("backend", "name", name)
    # Bytes are what is verified: an engine needs no simulated latency for that.
    if name == "engine":
        config.backend.options = {name: {"setup_us": 0.0, "per_unit_us": 0.0,
                                         "throughput_mbps": 1e9}}
    daemon = Daemon(assemble(image_path, config, KeySource(key_path)))
    run.path = daemon.stack.converter.reason
    try:
        run.reads_ok = trio.run(_replay, daemon, workload(size, seed), seed)
    finally:
        daemon.close()
    with open(image_path, "rb") as f:
        run.digest = hashlib.file_digest(f, "sha256").hexdigest()
    return run


def verify(size: int, seed: int, backends: list[str], ciphers=CIPHERS, layouts=LAYOUTS,
           modes=MODES, progress=None) -> list[Run]:
    runs = [Run(c, s, large, label, m, name, plane) for c in ciphers for s, large in layouts
            for label, name, plane in paths(backends) for m in modes]
    with tempfile.TemporaryDirectory(prefix="cryptfs-verify-") as workdir:
        for run in runs:
            run_one(run, size, seed, workdir)
            if progress:
                progress(run)
    return runs


def mismatches(runs: list[Run]) -> list[Run]:
    """Runs whose image differs from the first run of the same cipher and layout, or whose
    reads did not return what was written."""
    first, bad = {}, []
    for run in runs:
        ref = first.setdefault((run.cipher, run.sector_size, run.large), run)
        if run.digest != ref.digest or not run.reads_ok:
            bad.append(run)
    return bad


def table(runs: list[Run], backends: list[str], modes=MODES) -> str:
    """Markdown: one row per cipher and layout, one column per path/mode, digest prefixes."""
    columns = [(label, m) for label, _, _ in paths(backends) for m in modes]
    bad = {id(r) for r in mismatches(runs)}
    rows: dict = {}
    for run in runs:
        rows.setdefault((run.cipher, run.sector_size, run.large), {})[(run.backend, run.mode)] = run
    return markdown_table(
        ["cipher", "sector", *(f"{b}/{m}" for b, m in columns)],
        ([cipher, f"{sector}{' large' if large else ''}",
          *(f"{'✗ ' if id(cells[c]) in bad else ''}{cells[c].digest[:12]}" if c in cells else "–"
            for c in columns)]
         for (cipher, sector, large), cells in rows.items()))
