"""Passphrase → key: PBKDF2 (over any hash :mod:`cryptfs.crypto.hashes` has), Argon2i and
Argon2id (libargon2 through argon2-cffi's low-level binding), with limits and iteration-time
benchmarks.

The limits are cryptsetup's: a header asking for more memory or time than these is refused
before any work is done, so a hostile image cannot make ``open`` hang or exhaust memory.

The passphrase is read in place from its :class:`Secret`; Argon2 and libgcrypt's PBKDF2 write
the key straight into the returned one, hashlib's PBKDF2 through one immutable copy.
"""

import time
from dataclasses import dataclass

from cryptfs.crypto import hashes
from cryptfs.crypto.keys import Secret
from cryptfs.errors import CryptfsError, FormatError, SpecError

PBKDF2_MIN_ITERATIONS = 1000
PBKDF2_MAX_ITERATIONS = (1 << 32) - 1
ARGON2_MIN_TIME, ARGON2_MAX_TIME = 4, (1 << 32) - 1
ARGON2_MIN_MEMORY, ARGON2_MAX_MEMORY = 32, 4 * 1024 * 1024       # KiB (4 GiB)
ARGON2_MAX_PARALLEL = 16
KINDS = ("pbkdf2", "argon2i", "argon2id")


@dataclass(frozen=True)
class Kdf:
    kind: str                 # pbkdf2, argon2i, argon2id
    salt: bytes
    iterations: int           # PBKDF2 iterations, or Argon2 time cost
    hash: str | None = None   # PBKDF2 only
    memory: int = 0           # Argon2: KiB
    parallel: int = 0         # Argon2: lanes

    def check(self) -> None:
        """FormatError unless the parameters are ones cryptfs will run."""
        if self.kind == "pbkdf2":
            try:
                hashes.new(self.hash or "")
            except SpecError as e:
                raise FormatError(f"PBKDF2: {e}") from None
            if not 1 <= self.iterations <= PBKDF2_MAX_ITERATIONS:
                raise FormatError(f"PBKDF2 iterations {self.iterations} out of range")
        elif self.kind in ("argon2i", "argon2id"):
            if not 1 <= self.iterations <= ARGON2_MAX_TIME:
                raise FormatError(f"{self.kind} time cost {self.iterations} out of range")
            if not ARGON2_MIN_MEMORY <= self.memory <= ARGON2_MAX_MEMORY:
                raise FormatError(f"{self.kind} memory {self.memory} KiB out of range "
                                  f"({ARGON2_MIN_MEMORY}..{ARGON2_MAX_MEMORY})")
            if not 1 <= self.parallel <= ARGON2_MAX_PARALLEL:
                raise FormatError(f"{self.kind} parallelism {self.parallel} out of range")
        else:
            raise FormatError(f"key derivation {self.kind!r} is not supported "
                              f"(supported: {', '.join(KINDS)})")

    def describe(self) -> str:
        if self.kind == "pbkdf2":
            return f"pbkdf2-{self.hash}, {self.iterations} iterations"
        return (f"{self.kind}, time {self.iterations}, memory {self.memory} KiB, "
                f"{self.parallel} threads")

    def derive(self, passphrase: Secret, length: int) -> Secret:
        """The ``length``-byte key; FormatError unless :meth:`check` passes, CryptfsError if
        libargon2 fails (it cannot allocate the memory, say)."""
        self.check()
        key = Secret(bytes(length))
        try:
            if self.kind == "pbkdf2":
                hashes.pbkdf2(self.hash, passphrase.buffer, self.salt, self.iterations,
                              key.buffer)
            else:
                self._argon2(passphrase.buffer, key.buffer)
        except BaseException:
            key.wipe()
            raise
        return key

    def _argon2(self, passphrase: bytearray, out: bytearray) -> None:
        """libargon2's argon2_hash on the buffers themselves (no copies)."""
        from argon2.low_level import ARGON2_VERSION, Type, error_to_str, ffi, lib
        kind = Type.I if self.kind == "argon2i" else Type.ID

        def buf(data):
            return ffi.from_buffer("uint8_t[]", data)
        rv = lib.argon2_hash(self.iterations, self.memory, self.parallel, buf(passphrase),
                             len(passphrase), buf(self.salt), len(self.salt), buf(out), len(out),
                             ffi.NULL, 0, kind.value, ARGON2_VERSION)
        if rv != lib.ARGON2_OK:
            raise CryptfsError(f"{self.kind} failed: {error_to_str(rv)}")


def pbkdf2_digest(hash_name: str, key: Secret, salt: bytes, iterations: int,
                  length: int) -> bytes:
    """The volume key digest both LUKS versions store to recognise the right key; SpecError
    if cryptfs has no hash ``hash_name``."""
    digest = bytearray(length)
    hashes.pbkdf2(hash_name, key.buffer, salt, iterations, digest)
    return bytes(digest)


def pbkdf2_iterations_for(hash_name: str, milliseconds: int, length: int = 32) -> int:
    """Iterations that take about ``milliseconds`` here (cryptsetup's --iter-time); SpecError
    if cryptfs has no hash ``hash_name``."""
    probe = 20000
    start = time.perf_counter()
    hashes.pbkdf2(hash_name, b"benchmark", b"salt" * 8, probe, bytearray(length))
    elapsed = max(time.perf_counter() - start, 1e-6)
    return max(PBKDF2_MIN_ITERATIONS, int(probe * milliseconds / 1000 / elapsed))


def argon2_time_for(kind: str, milliseconds: int, memory: int, parallel: int,
                    length: int = 32) -> int:
    """Argon2 time cost that takes about ``milliseconds`` here at the given memory."""
    probe = Kdf(kind, b"\0" * 16, ARGON2_MIN_TIME, memory=memory, parallel=parallel)
    start = time.perf_counter()
    probe.derive(Secret(b"benchmark"), length).wipe()
    elapsed = max(time.perf_counter() - start, 1e-6)
    return max(ARGON2_MIN_TIME, int(ARGON2_MIN_TIME * milliseconds / 1000 / elapsed))
