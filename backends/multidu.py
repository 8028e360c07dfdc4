"""``multidu``: native multi data unit crypto — one request per bio, one call per request.

The work is done by the native core (:mod:`backends.native`): every data unit of the request
through one keyed OpenSSL context, each unit's IV derived in C — the counters (plain's wrapping
at 2^32 as dm-crypt's does), ESSIV, benbi and null from the plain64 counter the request carries —
with the GIL released, and a large request's units split over ``threads`` threads.  Where
the core is not built, the pure-Python path (:mod:`backends.vectorised`) does the same work with
numpy and is logged once.  Either way the backend is synchronous: every request is DONE.
"""

import logging

from cryptfs.spec import CipherSpec

from . import native
from .aes import UnitCipher
from .base import BackendStats, Caps, CryptoFailure, CryptoRequest, Op, Status, at_least
from .vectorised import VectorisedCipher

log = logging.getLogger(__name__)
#: IV modes this backend derives per unit itself (beyond the counter modes every backend takes):
#: from the plain64 counter the request carries, or — plain — with dm-crypt's 32-bit wrap.
DERIVED_IV_MODES = frozenset({"essiv", "benbi", "null", "plain"})
#: Waking a worker thread costs 0.05-0.2 ms on the 2-vCPU machine this was measured on (a
#: cross-CPU wake-up in a VM).  fio through the device there (3 runs each, interleaved): 1 MiB
#: sequential reads 927 MiB/s unsplit, 1236-1494 split; 128 KiB bios the same either way
#: (709-752 MiB/s) at 20 % more CPU split.  So bios from 512 KiB are split.
SPLIT_BYTES = 512 << 10
_warned = False


class MultiDuBackend:
    name = "multidu"
    OPTIONS = {
        "data_unit_sizes": (list, [], None,
                            "data unit sizes the native path accepts; empty: 512..4096"),
        "native": (bool, True, None, "use the native core where it is built (false: the "
                                     "pure-Python path, for comparison)"),
        "min_units": (int, 0, None, "pure-Python path: vectorise from this many units; 0: the "
                                    "measured cut-off"),
        "split_bytes": (int, SPLIT_BYTES, at_least(0),
                        "native core: bios of at least this many bytes are split over "
                        "[pipeline] crypto_threads threads (0: never)"),
    }

    def __init__(self, spec: CipherSpec, key: bytes | bytearray, options: dict | None = None,
                 threads: int = 1):
        global _warned
        options = options or {}
        sizes = options.get("data_unit_sizes") or []
        if not all(isinstance(s, int) for s in sizes):
            raise CryptoFailure("data_unit_sizes must list integers")
        self.caps = Caps(native_multi_du=True, derived_iv_modes=DERIVED_IV_MODES,
                         data_unit_sizes=frozenset(sizes) or None)
        UnitCipher(spec.mode, key)             # refuses a key exactly as software does
        self.native = options.get("native", True) and native.AVAILABLE
        self._crypt = None
        if self.native:
            self._cipher = native.keyed_core(spec, key)
            self._crypt = self._cipher.crypt
        else:
            if options.get("native", True) and not _warned:
                log.warning("%s: multidu runs on its pure-Python path", native.UNAVAILABLE)
                _warned = True
            self._cipher = VectorisedCipher(spec, key, options.get("min_units", 0))
        self.threads = max(1, threads)
        self._split = options.get("split_bytes", SPLIT_BYTES) or 1 << 62
        self._stats = BackendStats()

    @property
    def implementation(self) -> str:
        """What does the work: for status and the log."""
        if self.native:
            return f"native core ({native.openssl_version()})"
        return "pure-Python path (numpy; the native core is not built)" \
            if native.UNAVAILABLE else "pure-Python path (numpy)"

    def submit(self, req: CryptoRequest) -> Status:
        du = req.data_unit_size
        if self.caps.data_unit_sizes and du not in self.caps.data_unit_sizes:
            raise CryptoFailure(f"data unit size {du} not supported by this engine")
        self._stats.count(req)
        if self._crypt:
            self._crypt(req.op is Op.ENCRYPT, req.src, req.dst, req.iv, du, req.iv_step,
                        self.threads if len(req.src) >= self._split else 1)
        elif self._cipher.crypt(req.op, req.src, req.dst, req.iv, du, req.iv_step):
            self._stats.add("vectorised")
        return Status.DONE

    def statistics(self) -> dict:
        return {**self._stats.as_dict(), "implementation": self.implementation}

    def close(self) -> None:
        self._cipher.close()       # the key bytes are the caller's to wipe
