"""Hash NAME, named as cryptsetup names it: the one place cryptfs turns a hash name into a hash
— for PBKDF2 (LUKS key slots and volume key digests), the anti-forensic splitter, ESSIV and
plain mode's passphrase hashing.

Python's hashlib first (OpenSSL: fast, and most hashes).  The rest from libgcrypt
(:mod:`cryptfs.crypto.gcrypt`): whirlpool (OpenSSL 3 keeps it in the legacy provider, which
hashlib does not load), stribog256/512 (GOST R 34.11-2012, also spelt streebog),
blake2b-160/256/384 and blake2s-128/160/224, and ripemd160 or sm3 where this OpenSSL lacks them.
A name neither has is refused with SpecError: "hash 'NAME' is not supported".
"""

import contextlib
import hashlib
import re

from cryptfs.crypto.gcrypt import GcryptError, GcryptHash, digest_algorithm, gcrypt_pbkdf2
from cryptfs.errors import SpecError

#: cryptsetup's names → hashlib's (cryptsetup's OpenSSL backend maps the same two).
_HASHLIB_NAMES = {"blake2b-512": "blake2b512", "blake2s-256": "blake2s256"}
#: cryptsetup's names → libgcrypt's: blake2's size after "_" (as cryptsetup's gcrypt backend
#: maps them), streebog as the kernel and OpenSSL's GOST engine spell stribog.
_GCRYPT_NAMES = ((re.compile(r"^(blake2[bs])-(\d+)$"), r"\1_\2"),
                 (re.compile(r"^streebog(256|512)$"), r"stribog\1"))


def new(name: str):
    """A fresh hash object for ``name``, with hashlib's interface (``update``, ``digest``,
    ``copy``, ``digest_size``); SpecError if cryptfs cannot compute that hash."""
    known = _hashlib_name(name)
    if known:
        return hashlib.new(known)
    with _refused(name):
        return GcryptHash(name, _gcrypt_algorithm(name))


def supported(name: str) -> bool:
    """Whether cryptfs can compute hash ``name`` (:func:`new` would not refuse it)."""
    try:
        new(name)
    except SpecError:
        return False
    return True


def pbkdf2(name: str, password: bytes | bytearray, salt: bytes, iterations: int,
           out: bytearray) -> None:
    """PBKDF2-HMAC-``name`` of ``password`` into ``out`` (as many bytes as it holds);
    SpecError as :func:`new`."""
    known = _hashlib_name(name)
    if known:
        # hashlib has no derive-into: the key passes through one immutable copy
        out[:] = hashlib.pbkdf2_hmac(known, password, salt, iterations, len(out))
    else:
        with _refused(name):
            gcrypt_pbkdf2(_gcrypt_algorithm(name), password, salt, iterations, out)


def _hashlib_name(name: str) -> str | None:
    """hashlib's name of fixed-size hash ``name``, None if hashlib has no such hash."""
    known = _HASHLIB_NAMES.get(name.lower(), name)
    try:
        return known if hashlib.new(known).digest_size else None
    except (ValueError, TypeError):
        return None


def _gcrypt_algorithm(name: str) -> int:
    """libgcrypt's number for hash ``name``; SpecError if it has none."""
    known = name.lower()
    for pattern, replacement in _GCRYPT_NAMES:
        known = pattern.sub(replacement, known)
    algo = digest_algorithm(known) if known.isascii() and known.isprintable() else 0
    if not algo:
        raise SpecError(f"hash {name!r} is not supported")
    return algo


@contextlib.contextmanager
def _refused(name: str):
    """libgcrypt missing or failing (GcryptError) → SpecError naming hash ``name``."""
    try:
        yield
    except GcryptError as e:
        raise SpecError(f"hash {name!r} is not supported here: {e}") from None
