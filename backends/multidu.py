"""``multidu``: native multi data unit crypto — one request per bio, a constant number of
library calls per request whatever its number of data units (per piece of ``CHUNK_BYTES``:
larger bios are worked through in cache-sized pieces).

* AES-XTS: every unit's tweak in one AES-ECB call (key 2), the tweaks of all 16-byte blocks
  (tweak × α^j in GF(2^128)) expanded with numpy, one AES-ECB call (key 1) over the whole bio
  between two XORs: ``C = E(P ⊕ T) ⊕ T``.
* AES-CBC decrypt: one AES-ECB decryption of the whole bio, XORed with the previous ciphertext
  block (the unit's IV for the first block of each unit).
* AES-CBC encrypt is sequential inside a unit, so units are interleaved: block j of every unit
  in one ECB call — data_unit_size / 16 calls per request instead of one per unit.
* IVs: counters (plain, plain64, plain64be) are extended by numpy; for ESSIV, benbi and null the
  backend derives each unit's IV itself from the plain64 counter the request carries (as the
  kernel's essiv template does) — ESSIV for all units in one ECB call.  ``caps`` says so.

Requests with fewer units than the measured cut-off (numpy's fixed cost loses there) go unit
by unit — through OpenSSL directly with the key expanded once (:mod:`backends.evp`), or where
libcrypto cannot be loaded through the same calls as ``software`` — so this backend is never
the slower one.
Buffers are reused per thread; an allocation failure surfaces as MemoryError, which the convert
loop answers by redoing the bio per sector.
"""

import ctypes
import threading

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from cryptfs.ivgen import IV_MODES
from cryptfs.spec import CipherSpec

from . import evp
from .aes import UnitCipher
from .base import BackendStats, Caps, CryptoFailure, CryptoRequest, Op, Status

_MASK128 = (1 << 128) - 1

U64 = np.uint64
#: IV modes this backend derives per unit from a plain64 counter (beyond the counter modes).
DERIVED_IV_MODES = frozenset({"essiv", "benbi", "null"})
#: Smallest request (in data units) worth the vectorised path, by (chain mode, direction, data
#: unit size), measured on the development machine with `python -m backends.multidu` (medians
#: of 100 timings each way against OpenSSL unit by unit; see README).  NEVER: the unit-by-unit
#: path won up to 256 units (a 1 MiB bio of 4 KiB units).
NEVER = 1 << 30
CUTOFF = {
    ("xts", "encrypt", 512): 24, ("xts", "encrypt", 1024): 32, ("xts", "encrypt", 2048): 96,
    ("xts", "encrypt", 4096): NEVER,
    ("xts", "decrypt", 512): 24, ("xts", "decrypt", 1024): 32, ("xts", "decrypt", 2048): 96,
    ("xts", "decrypt", 4096): NEVER,
    ("cbc", "encrypt", 512): 64, ("cbc", "encrypt", 1024): 128, ("cbc", "encrypt", 2048): NEVER,
    ("cbc", "encrypt", 4096): NEVER,
    ("cbc", "decrypt", 512): 6, ("cbc", "decrypt", 1024): 7, ("cbc", "decrypt", 2048): 7,
    ("cbc", "decrypt", 4096): 11,
}
#: The vectorised path works through a bio in pieces of this many bytes: its working set (the
#: data, the tweaks, two scratch buffers) then stays in cache.  Measured with
#: XTS at 512-byte units, one piece: ~1000 MiB/s up to 256 KiB, ~500 MiB/s from 512 KiB; in
#: pieces of 64/128/256 KiB a 1 MiB bio ran 790/1000/1070 MiB/s (medians of 40 timings).
CHUNK_BYTES = 256 << 10
_B = 32      # tweaks are expanded as T·x^(32a+b): a by repeated ·x^32, b (< 32) by broadcast
_SHIFTS = np.arange(_B, dtype=U64)
_BACK = U64(64) - _SHIFTS          # numpy gives 0 for a shift by 64, as the formula needs


def _mul_x(lo: np.ndarray, hi: np.ndarray, shift: int) -> tuple[np.ndarray, np.ndarray]:
    """(lo, hi) · x^shift in XTS's GF(2^128) (little-endian, x^128 = x^7 + x^2 + x + 1), for
    shift < 57 (the bits shifted out, reduced, stay in the low word) or a multiple of 64."""
    if shift % 64 == 0:
        for _ in range(shift // 64):         # the whole high word is shifted out
            spill = hi
            hi = lo ^ (spill >> U64(63)) ^ (spill >> U64(62)) ^ (spill >> U64(57))
            lo = spill ^ (spill << U64(1)) ^ (spill << U64(2)) ^ (spill << U64(7))
        return lo, hi
    s, back = U64(shift), U64(64 - shift)
    spill = hi >> back
    return (lo << s) ^ spill ^ (spill << U64(1)) ^ (spill << U64(2)) ^ (spill << U64(7)), \
        (hi << s) | (lo >> back)


def expand_tweaks(t0: np.ndarray, blocks: int) -> np.ndarray:
    """Tweaks of every block: (n, 2) unit tweaks → (n·blocks, 2), row i·blocks + j = t0[i]·α^j.

    j = 32a + b: the bases t0·x^(32a) by doubling (·x^32, ·x^64, ·x^128 ...), then every
    ·x^b (b < 32) in one broadcast — a fixed number of numpy calls per request."""
    n = len(t0)
    a_count, b_count = max(1, blocks // _B), min(blocks, _B)
    lo, hi = t0[:, 0:1].copy(), t0[:, 1:2].copy()          # (n, a) bases, growing
    shift = _B
    while lo.shape[1] < a_count:
        more_lo, more_hi = _mul_x(lo, hi, shift)
        lo, hi = np.concatenate((lo, more_lo), axis=1), np.concatenate((hi, more_hi), axis=1)
        shift *= 2
    lo, hi = lo[:, :, None], hi[:, :, None]
    shifts, back = _SHIFTS[:b_count], _BACK[:b_count]
    out = np.empty((n, a_count, b_count, 2), dtype=U64)
    spill = hi >> back
    out[..., 0] = (lo << shifts) ^ spill ^ (spill << U64(1)) ^ (spill << U64(2)) \
        ^ (spill << U64(7))
    out[..., 1] = (hi << shifts) | (lo >> back)
    return out.reshape(n * blocks, 2)


def _address(view: memoryview) -> int:
    """Where a buffer's bytes are, for OpenSSL (ctypes only maps writable buffers directly)."""
    if not view.readonly:
        return ctypes.addressof(ctypes.c_char.from_buffer(view))
    return np.frombuffer(view, dtype=np.uint8).ctypes.data


class _PerThread(threading.local):
    """What each thread needs of its own: OpenSSL cipher contexts are not reentrant, and the
    scratch buffers are reused (ECB output needs 15 bytes of room beyond the data)."""

    def __init__(self, make_contexts):
        self.contexts = make_contexts()
        self.buffers: dict[str, np.ndarray] = {}

    def buffer(self, name: str, size: int) -> np.ndarray:
        buf = self.buffers.get(name)
        if buf is None or len(buf) < size + 16:
            buf = self.buffers[name] = np.empty(max(size + 16, 1 << 16), dtype=np.uint8)
        return buf


class MultiDuBackend:
    name = "multidu"
    OPTIONS = {
        "data_unit_sizes": (list, [], None,
                            "data unit sizes the native path accepts; empty: 512..4096"),
        "min_units": (int, 0, None, "vectorise from this many units; 0: the measured cut-off"),
    }

    def __init__(self, spec: CipherSpec, key: bytes | bytearray, options: dict | None = None):
        options = options or {}
        sizes = options.get("data_unit_sizes") or []
        if not all(isinstance(s, int) for s in sizes):
            raise CryptoFailure("data_unit_sizes must list integers")
        self.caps = Caps(native_multi_du=True,
                         derived_iv_modes=DERIVED_IV_MODES,
                         data_unit_sizes=frozenset(sizes) or None)
        self._mode = spec.mode
        self._ivmode = spec.ivmode
        self._counter = IV_MODES[spec.ivmode].counter
        self._min_units = options.get("min_units", 0)
        self._unit = UnitCipher(spec.mode, key)          # validates the key as software does
        self._evp = evp.EvpUnitCipher(spec.mode, key) if evp.available() else None
        self._final_iv = IV_MODES[spec.ivmode].generator(key, spec.ivopts)
        self._key, self._ivopts = key, spec.ivopts
        self._local = _PerThread(self._contexts)
        self._stats = BackendStats()

    def _contexts(self) -> dict:
        """ECB contexts for the data, the XTS tweaks and ESSIV, for one thread."""
        key = self._key
        half = len(key) // 2
        data_key = key[:half] if self._mode == "xts" else key
        ecb = Cipher(algorithms.AES(data_key), modes.ECB())
        contexts = {Op.ENCRYPT: ecb.encryptor(), Op.DECRYPT: ecb.decryptor()}
        if self._mode == "xts":
            contexts["tweak"] = Cipher(algorithms.AES(key[half:]), modes.ECB()).encryptor()
        if self._ivmode == "essiv":
            contexts["essiv"] = IV_MODES["essiv"].generator(key, self._ivopts)
        return contexts

    # --- IVs ---------------------------------------------------------------------------

    def _ivs(self, req: CryptoRequest) -> np.ndarray:
        """Every unit's IV as (n, 2) little-endian 64-bit words."""
        n, step = req.n_units, U64(req.iv_step)
        idx = np.arange(n, dtype=U64) * step
        words = np.frombuffer(req.iv, dtype=U64)
        ivs = np.empty((n, 2), dtype=U64)
        if self._counter == "big":
            lo = words[1].byteswap() + idx
            ivs[:, 0] = (words[0].byteswap() + (lo < idx).astype(U64)).byteswap()
            ivs[:, 1] = lo.byteswap()
            return ivs
        lo = words[0] + idx
        ivs[:, 0] = lo
        ivs[:, 1] = words[1] + (lo < idx).astype(U64)
        if self._counter == "little":
            return ivs
        if self._ivmode == "essiv":          # the request carries plain64 counters
            ivs[:, 1] = 0
            out = self._local.contexts["essiv"].encrypt_counters(ivs.tobytes())
            return np.frombuffer(out, dtype=U64).reshape(n, 2)
        if self._ivmode == "benbi":
            ivs[:, 1] = ((lo << U64(5)) + U64(1)).byteswap()
            ivs[:, 0] = 0
            return ivs
        ivs[:] = 0                           # null
        return ivs

    def _iv_list(self, req: CryptoRequest) -> list[bytes]:
        """Every unit's IV, one by one (for the unit-by-unit path)."""
        if self._counter is not None:
            if req.n_units == 1:
                return [req.iv]
            base, order = int.from_bytes(req.iv, self._counter), self._counter
            return [((base + i * req.iv_step) & _MASK128).to_bytes(16, order)
                    for i in range(req.n_units)]
        base = int.from_bytes(req.iv[:8], "little")        # a plain64 counter
        return [self._final_iv(base + i * req.iv_step) for i in range(req.n_units)]

    # --- the request -------------------------------------------------------------------

    def submit(self, req: CryptoRequest) -> Status:
        du = req.data_unit_size
        if self.caps.data_unit_sizes and du not in self.caps.data_unit_sizes:
            raise CryptoFailure(f"data unit size {du} not supported by this engine")
        self._stats.count(req)
        n = req.n_units
        if n < (self._min_units or CUTOFF.get((self._mode, req.op.value, du), 1)):
            ivs = self._iv_list(req)
            if self._evp:
                self._evp.crypt_units(req.op, ivs, _address(req.src), _address(req.dst), du)
            else:
                for i, iv in enumerate(ivs):
                    self._unit.crypt(req.op, iv, req.src[i * du:(i + 1) * du],
                                     req.dst[i * du:(i + 1) * du])
            return Status.DONE
        ivs = self._ivs(req)
        chunk = max(1, CHUNK_BYTES // du)
        for first in range(0, n, chunk):      # cache-sized pieces: see CHUNK_BYTES
            last = min(n, first + chunk)
            src, dst = req.src[first * du:last * du], req.dst[first * du:last * du]
            if self._mode == "xts":
                self._xts(req.op, src, dst, ivs[first:last], du)
            elif req.op is Op.DECRYPT:
                self._cbc_decrypt(src, dst, ivs[first:last], du)
            else:
                self._cbc_encrypt(src, dst, ivs[first:last], du)
        self._stats.extra["vectorised"] = self._stats.extra.get("vectorised", 0) + 1
        return Status.DONE

    def _xts(self, op: Op, src: memoryview, dst: memoryview, ivs: np.ndarray, du: int) -> None:
        size, local = len(src), self._local
        t0 = np.frombuffer(local.contexts["tweak"].update(ivs.tobytes()), dtype=U64)
        tweaks = expand_tweaks(t0.reshape(-1, 2), du // 16)
        mixed, crypted = local.buffer("mixed", size), local.buffer("crypted", size)
        np.bitwise_xor(np.frombuffer(src, dtype=U64).reshape(-1, 2), tweaks,
                       out=mixed[:size].view(U64).reshape(-1, 2))
        local.contexts[op].update_into(memoryview(mixed)[:size], memoryview(crypted)[:size + 15])
        np.bitwise_xor(crypted[:size].view(U64).reshape(-1, 2), tweaks,
                       out=np.frombuffer(dst, dtype=U64).reshape(-1, 2))

    def _cbc_decrypt(self, src: memoryview, dst: memoryview, ivs: np.ndarray, du: int) -> None:
        size, blocks = len(src), du // 16
        plain = self._local.buffer("crypted", size)
        self._local.contexts[Op.DECRYPT].update_into(src, memoryview(plain)[:size + 15])
        d = plain[:size].view(U64).reshape(-1, blocks, 2)
        c = np.frombuffer(src, dtype=U64).reshape(-1, blocks, 2)
        out = np.frombuffer(dst, dtype=U64).reshape(-1, blocks, 2)
        np.bitwise_xor(d[:, 0], ivs, out=out[:, 0])
        np.bitwise_xor(d[:, 1:], c[:, :-1], out=out[:, 1:])

    def _cbc_encrypt(self, src: memoryview, dst: memoryview, ivs: np.ndarray, du: int) -> None:
        n, blocks = len(ivs), du // 16
        p = np.frombuffer(src, dtype=U64).reshape(n, blocks, 2)
        out = np.frombuffer(dst, dtype=U64).reshape(n, blocks, 2)
        column = self._local.buffer("mixed", n * 16)[:n * 16]
        crypted = self._local.buffer("crypted", n * 16)
        columns, view = column.view(U64).reshape(n, 2), memoryview(crypted)[:n * 16 + 15]
        result, encrypt = crypted[:n * 16].view(U64).reshape(n, 2), self._local.contexts[Op.ENCRYPT]
        prev = ivs
        for j in range(blocks):
            np.bitwise_xor(p[:, j], prev, out=columns)
            encrypt.update_into(memoryview(column), view)
            out[:, j] = result
            prev = out[:, j]

    def statistics(self) -> dict:
        return self._stats.as_dict()

    def close(self) -> None:
        if self._evp:
            self._evp.close()
        self._local = self._unit = self._evp = None   # the key bytes are the caller's to wipe


def measure_cutoffs(repeats: int = 100) -> dict:
    """The smallest unit count at which the vectorised path beats unit-by-unit calls, per
    (chain mode, direction, data unit size): how CUTOFF was chosen.  Medians of ``repeats``
    timings each way; a size with no winner up to 256 units stays unit by unit."""
    import os
    import statistics
    import time

    from cryptfs.spec import parse_spec

    def best(backend, req) -> float:
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            backend.submit(req)
            times.append(time.perf_counter() - start)
        return statistics.median(times)

    found = {}
    counts = list(range(1, 17)) + [24, 32, 48, 64, 96, 128, 192, 256]
    for cipher, key_len in (("aes-xts-plain64", 64), ("aes-cbc-plain64", 32)):
        spec, key = parse_spec(cipher), bytearray(os.urandom(key_len))
        unit_by_unit = MultiDuBackend(spec, key, {"min_units": NEVER})    # OpenSSL per unit
        vectorised = MultiDuBackend(spec, key, {"min_units": 1})
        for op in Op:
            for du in (512, 1024, 2048, 4096):
                for n in counts:
                    src, dst = os.urandom(n * du), bytearray(n * du)
                    req = CryptoRequest(op, memoryview(src), memoryview(dst), bytes(16), du,
                                        du // 512)
                    if best(vectorised, req) < best(unit_by_unit, req):
                        found[(spec.mode, op.value, du)] = n
                        break
                print(f"{spec.mode} {op.value:<7} {du:>4}: vectorised from "
                      f"{found.get((spec.mode, op.value, du), 'never (≤256)')} units")
    return found


if __name__ == "__main__":
    print(measure_cutoffs())
