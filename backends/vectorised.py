"""The pure-Python multi data unit path: what ``multidu`` runs where the native core
(:mod:`backends.native`) is not built.  A constant number of library calls per request whatever
its number of data units (per piece of ``CHUNK_BYTES``: larger bios are worked through in
cache-sized pieces).

* AES-XTS: every unit's tweak in one AES-ECB call (key 2), the tweaks of all 16-byte blocks
  (tweak × α^j in GF(2^128)) expanded with numpy, one AES-ECB call (key 1) over the whole bio
  between two XORs: ``C = E(P ⊕ T) ⊕ T``.
* AES-CBC decrypt: one AES-ECB decryption of the whole bio, XORed with the previous ciphertext
  block (the unit's IV for the first block of each unit).
* AES-CBC encrypt is sequential inside a unit, so units are interleaved: block j of every unit
  in one ECB call — data_unit_size / 16 calls per request instead of one per unit.
* IVs: counters (plain, plain64, plain64be) are extended by numpy (plain's wraps at 2^32); ESSIV,
  benbi and null are derived per unit from the plain64 counter the request carries, by the IV
  generators' ``many`` (:mod:`cryptfs.ivgen`).

Requests with fewer units than the measured cut-off (numpy's fixed cost loses there) go unit
by unit — through OpenSSL directly with the key expanded once (:mod:`backends.evp`), or where
libcrypto cannot be loaded through the same calls as ``software``.  Buffers are reused per
thread; an allocation failure surfaces as MemoryError.
"""

import ctypes
import threading

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from cryptfs.ivgen import IV_MODES
from cryptfs.spec import CipherSpec

from . import evp
from .aes import UnitCipher
from .base import Op

_MASK32 = (1 << 32) - 1

U64 = np.uint64
#: Smallest request (in data units) worth the vectorised path, by (chain mode, direction, data
#: unit size), measured on the development machine with `python -m backends.vectorised` (medians
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


class VectorisedCipher:
    """``crypt(op, src, dst, iv, du, step)``: one multi data unit request, as the contract of
    :mod:`backends.base` defines its IVs; ``min_units`` overrides the measured cut-off."""

    def __init__(self, spec: CipherSpec, key: bytes | bytearray, min_units: int = 0):
        self._mode = spec.mode
        self._ivmode = IV_MODES[spec.ivmode]
        self._min_units = min_units
        self._unit = UnitCipher(spec.mode, key)          # validates the key as software does
        self._evp = evp.EvpUnitCipher(spec.mode, key) if evp.available() else None
        self._key, self._spec = key, spec
        self._local = _PerThread(self._contexts)

    def _contexts(self) -> dict:
        """ECB contexts for the data and the XTS tweaks, and the IV generator, for one thread."""
        key = memoryview(self._key)         # slices are views: no copies of the key to wipe
        half = len(key) // 2
        data_key = key[:half] if self._mode == "xts" else key
        ecb = Cipher(algorithms.AES(data_key), modes.ECB())
        contexts = {Op.ENCRYPT: ecb.encryptor(), Op.DECRYPT: ecb.decryptor(),
                    "ivs": self._ivmode.generator(key, self._spec.ivopts)}
        if self._mode == "xts":
            contexts["tweak"] = Cipher(algorithms.AES(key[half:]), modes.ECB()).encryptor()
        return contexts

    # --- IVs ---------------------------------------------------------------------------

    def _ivs(self, iv: bytes, n: int, step: int) -> np.ndarray:
        """Every unit's IV as (n, 2) little-endian 64-bit words."""
        idx = np.arange(n, dtype=U64) * U64(step)
        words = np.frombuffer(iv, dtype=U64)
        ivs = np.empty((n, 2), dtype=U64)
        counter, bits = self._ivmode.counter, self._ivmode.counter_bits
        if counter == "big":
            lo = words[1].byteswap() + idx
            ivs[:, 0] = (words[0].byteswap() + (lo < idx).astype(U64)).byteswap()
            ivs[:, 1] = lo.byteswap()
            return ivs
        lo = words[0] + idx
        if counter is None:                  # derived from the plain64 counter it carries
            return self._local.contexts["ivs"].many(lo)
        if bits == 32:
            ivs[:, 0], ivs[:, 1] = lo & U64(_MASK32), 0
            return ivs
        ivs[:, 0] = lo
        ivs[:, 1] = words[1] + (lo < idx).astype(U64)
        return ivs

    def _iv_list(self, iv: bytes, n: int, step: int) -> list[bytes]:
        """Every unit's IV, one by one (for the unit-by-unit path)."""
        if n == 1 and self._ivmode.counter is not None:
            return [iv]
        return [bytes(row) for row in self._ivs(iv, n, step)]

    # --- the request -------------------------------------------------------------------

    def crypt(self, op: Op, src: memoryview, dst: memoryview, iv: bytes, du: int,
              step: int) -> bool:
        """Convert every unit of ``src`` into ``dst``; whether the vectorised path ran."""
        n = len(src) // du
        if n < (self._min_units or CUTOFF.get((self._mode, op.value, du), 1)):
            ivs = self._iv_list(iv, n, step)
            if self._evp:
                self._evp.crypt_units(op, ivs, _address(src), _address(dst), du)
            else:
                for i, unit_iv in enumerate(ivs):
                    self._unit.crypt(op, unit_iv, src[i * du:(i + 1) * du],
                                     dst[i * du:(i + 1) * du])
            return False
        ivs = self._ivs(iv, n, step)
        chunk = max(1, CHUNK_BYTES // du)
        for first in range(0, n, chunk):      # cache-sized pieces: see CHUNK_BYTES
            last = min(n, first + chunk)
            piece_src, piece_dst = src[first * du:last * du], dst[first * du:last * du]
            if self._mode == "xts":
                self._xts(op, piece_src, piece_dst, ivs[first:last], du)
            elif op is Op.DECRYPT:
                self._cbc_decrypt(piece_src, piece_dst, ivs[first:last], du)
            else:
                self._cbc_encrypt(piece_src, piece_dst, ivs[first:last], du)
        return True

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

    def best(cipher, *args) -> float:
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            cipher.crypt(*args)
            times.append(time.perf_counter() - start)
        return statistics.median(times)

    found = {}
    counts = list(range(1, 17)) + [24, 32, 48, 64, 96, 128, 192, 256]
    for cipher, key_len in (("aes-xts-plain64", 64), ("aes-cbc-plain64", 32)):
        spec, key = parse_spec(cipher), bytearray(os.urandom(key_len))
        unit_by_unit = VectorisedCipher(spec, key, min_units=NEVER)    # OpenSSL per unit
        vectorised = VectorisedCipher(spec, key, min_units=1)
        for op in Op:
            for du in (512, 1024, 2048, 4096):
                for n in counts:
                    src, dst = memoryview(os.urandom(n * du)), memoryview(bytearray(n * du))
                    args = (op, src, dst, bytes(16), du, du // 512)
                    if best(vectorised, *args) < best(unit_by_unit, *args):
                        found[(spec.mode, op.value, du)] = n
                        break
                print(f"{spec.mode} {op.value:<7} {du:>4}: vectorised from "
                      f"{found.get((spec.mode, op.value, du), 'never (≤256)')} units")
    return found


if __name__ == "__main__":
    print(measure_cutoffs())
