"""``multidu``: native multi data unit crypto — one request per bio, one call per request.

The work is done by the native core (:mod:`cryptfs.backends.native`): every data unit of the
request through one keyed OpenSSL context (libgcrypt handle), each unit's IV derived in C —
the counters (plain's wrapping at 2^32 as dm-crypt's does), ESSIV, benbi and null from the
plain64 counter the request carries — with the GIL released, and a large request's units split
over ``threads`` threads.  Where the core is not built this backend is unavailable
(:class:`Unavailable`): the stack serves on ``software`` and says so.  The backend is
synchronous: every request is DONE.
"""

from dataclasses import dataclass

from cryptfs.backends import native
from cryptfs.backends.aes import UnitCipher
from cryptfs.backends.base import (
    BackendStats,
    Caps,
    CryptoFailure,
    CryptoRequest,
    Op,
    Status,
    Unavailable,
)
from cryptfs.crypto.gcrypt import block_bytes
from cryptfs.crypto.ivgen import IV_MODES
from cryptfs.crypto.spec import CipherSpec
from cryptfs.util.options import at_least, option

#: Waking a worker thread costs 0.05-0.2 ms on the 2-vCPU machine this was measured on (a
#: cross-CPU wake-up in a VM).  fio through the device there (3 runs each, interleaved): 1 MiB
#: sequential reads 927 MiB/s unsplit, 1236-1494 split; 128 KiB bios the same either way
#: (709-752 MiB/s) at 20 % more CPU split.  So bios from 512 KiB are split.
SPLIT_BYTES = 512 << 10


@dataclass
class MultiDuOptions:
    data_unit_sizes: list = option((), "data unit sizes the native path accepts; empty: "
                                   "512..4096", kind=list)
    split_bytes: int = option(SPLIT_BYTES, "bios of at least this many bytes are split over "
                              "[pipeline] crypto_threads threads (0: never)", at_least(0))


class MultiDuBackend:
    name = "multidu"
    Options = MultiDuOptions

    def __init__(self, spec: CipherSpec, key: bytes | bytearray,
                 options: MultiDuOptions | None = None, threads: int = 1):
        options = options or MultiDuOptions()
        if native.UNAVAILABLE:
            raise Unavailable(native.UNAVAILABLE)
        sizes = options.data_unit_sizes
        if not all(isinstance(s, int) for s in sizes):
            raise CryptoFailure("data_unit_sizes must list integers")
        self.caps = Caps(native_multi_du=True, derived_iv_modes=native.DERIVED_IV_MODES,
                         data_unit_sizes=frozenset(sizes) or None)
        UnitCipher(spec.chain, key)             # refuses a key exactly as software does
        self.core = native.keyed_core(spec, key)
        self._crypt = self.core.crypt
        # A 64-bit block cipher's IVs are 8 bytes: the low half of the core's 16-byte counter,
        # which sits at the front of a little-endian one and the back of a big-endian one.
        pad = bytes(16 - block_bytes(spec.cipher))
        big = IV_MODES[spec.ivmode].byteorder == "big"
        self._widen = (lambda iv: pad + iv) if big else (lambda iv: iv + pad)
        self.threads = max(1, threads)
        self.split_bytes = options.split_bytes or 1 << 62
        self._stats = BackendStats()

    def submit(self, req: CryptoRequest) -> Status:
        du = req.data_unit_size
        if self.caps.data_unit_sizes and du not in self.caps.data_unit_sizes and \
                len(req.src) > du:
            raise CryptoFailure(f"multi data unit requests of {du}-byte units are not "
                                "supported by this engine")
        self._stats.count(req)
        iv = req.iv if len(req.iv) == 16 else self._widen(req.iv)
        self._crypt(req.op is Op.ENCRYPT, req.src, req.dst, iv, du, req.iv_step,
                    self.threads if len(req.src) >= self.split_bytes else 1)
        return Status.DONE

    def statistics(self) -> dict:
        return {**self._stats.as_dict(),
                "implementation": f"native core ({native.openssl_version()})"}

    def close(self) -> None:
        self.core.close()       # the key bytes are the caller's to wipe
